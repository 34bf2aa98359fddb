"""Prometheus metrics, in a registry of the app's own (tests build many apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.connected_sockets = Gauge(
            "ticketgate_connected_sockets", "Authenticated sockets connected to this node", registry=self.registry
        )
        self.pending_sockets = Gauge(
            "ticketgate_pending_sockets",
            "Engine.IO sessions not yet authenticated: no Socket.IO CONNECT yet, or awaiting authenticate",
            registry=self.registry,
        )
        self.connect_attempts = Counter(
            "ticketgate_connect_attempts",
            "Socket.IO connect attempts by result and reason",
            ["result", "reason"],
            registry=self.registry,
        )
        self.tickets_issued = Counter("ticketgate_tickets_issued", "Tickets issued", registry=self.registry)
        self.tickets_consumed = Counter(
            "ticketgate_tickets_consumed", "Tickets consumed by a connect", registry=self.registry
        )
        self.events_published = Counter(
            "ticketgate_events_published", "Events published through the API", registry=self.registry
        )

        self.held_events_dropped = Counter(
            "ticketgate_held_events_dropped",
            "Held events dropped at the cap (the client is told in its next authenticate ack)",
            registry=self.registry,
        )
        self.slow_consumers = Counter(
            "ticketgate_slow_consumers",
            "Sockets closed because they did not read what they were sent (max_buffered_bytes)",
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "ticketgate_rate_limited",
            "Actions refused by a rate limit: client_event (per socket), http and connect (per address), "
            "connections_per_user (max_connections_per_user, over the cluster)",
            ["limit"],
            registry=self.registry,
        )
        for limit in ("client_event", "http", "connect", "connections_per_user"):
            self.rate_limited.labels(limit)  # listed at 0 from the start
        self.disconnects = Counter(
            "ticketgate_admin_disconnects", "Sockets closed by the disconnect API", ["reason"], registry=self.registry
        )

        self.fanout_received = Counter(
            "ticketgate_fanout_messages_received",
            "Messages this node received from the cluster's fan-out (only rooms with local members are routed here)",
            registry=self.registry,
        )
        self.fanout_rooms = Gauge(
            "ticketgate_fanout_rooms",
            "Rooms whose fan-out channel this node subscribes (it has local members of them)",
            registry=self.registry,
        )

        self.webhook_deliveries = Counter(
            "ticketgate_webhook_deliveries",
            "Webhook deliveries (one event to one hook) by how they ended: delivered (a 2xx), "
            "failed (webhook_max_attempts tried), dropped (the hook's queue was full)",
            ["result"],
            registry=self.registry,
        )
        for result in ("delivered", "failed", "dropped"):
            self.webhook_deliveries.labels(result)
        self.webhook_attempts = Counter(
            "ticketgate_webhook_attempts",
            "Webhook POSTs by outcome: ok (2xx), status (another status), timeout, error (connection and the like)",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in ("ok", "status", "timeout", "error"):
            self.webhook_attempts.labels(outcome)
        self.webhook_queued = Gauge(
            "ticketgate_webhook_queued_deliveries",
            "Webhook deliveries this node holds: waiting for a worker, in flight, or waiting to be retried",
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
