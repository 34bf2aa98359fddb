"""Webhooks: events POSTed, signed, to the receivers of ``[[webhooks]]``, at least once.

Nothing here makes its caller wait: ``Webhooks.submit`` puts an event on the
queue of every hook that subscribes to its type and returns. Each hook has its
own bounded queue and its own few workers, so a slow or dead receiver costs
its own queue and nothing else: not sockets, not publishes, not other hooks.
A delivery whose attempt failed goes back on its hook's queue when a timer
fires (a handle in the event loop's heap, as in gateway/scheduler.py), so a
retry waiting out its backoff holds no worker.

Deliveries live in this process only: those still pending when it stops are
abandoned, and counted in a log line (docs/webhooks.md).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from yarl import URL

from gateway import __version__
from gateway.config import WEBHOOK_EVENTS, WebhookConfig
from gateway.formats import iso_z
from gateway.metrics import Metrics

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Ticketgate-Signature"
USER_AGENT = f"ticketgate/{__version__} (webhooks)"
# Deliveries one hook may hold at once (waiting for a worker, in flight, or
# waiting to be retried); an event that finds its hook's queue full is dropped
# for that hook and counted. Bounds what a dead receiver can cost: about the
# size of the events' bodies times this.
MAX_QUEUED = 10_000
# POSTs in flight to one hook at most: a receiver that hangs holds this many
# workers for ATTEMPT_TIMEOUT each, and only its own.
CONCURRENCY = 4
# One attempt, from connecting to the response's status line.
ATTEMPT_TIMEOUT = 5.0
FIRST_RETRY_MAX = 2.0  # the first retry comes within this many seconds
MAX_DELAY = 300.0  # no wait between two attempts is longer
# A hook whose queue is full drops every event: one log line per this many seconds, with the count.
DROP_LOG_INTERVAL = 60.0


# Not `backoff` or `tenacity`: both retry by sleeping inside the retried call,
# in its task. Here a delivery waiting for its retry must not hold one of its
# hook's few workers (a dead receiver would otherwise hold them all for
# minutes while fresh events queue behind), so the wait is a timer of the
# loop's and what remains of those libraries' work is this formula (tenacity's
# `wait_random_exponential`), which tenacity computes only from its own
# RetryCallState, an object of its retry loop.
def retry_delay(failed: int, *, rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait before the next attempt of a delivery that has failed ``failed`` times (1, 2, ...).

    Exponential backoff with full jitter: uniform between 0 and a bound that is
    FIRST_RETRY_MAX (2 s) after the first failure and doubles after each one,
    capped at MAX_DELAY (5 min). The mean doubles with the bound; the jitter
    spreads the retries of many deliveries that failed together (a receiver that
    went down) instead of sending them back at once. ``rand`` draws from [0, 1).
    """
    if failed < 1:
        raise ValueError(f"failed must be at least 1, not {failed}")
    bound = min(MAX_DELAY, FIRST_RETRY_MAX * 2.0 ** min(failed - 1, 32))
    return bound * rand()


def signature(secret: str, body: bytes, t: int) -> str:
    """The X-Ticketgate-Signature of ``body`` sent at unix time ``t``:
    ``t=<t>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``."""
    mac = hmac.new(secret.encode(), b"%d." % t + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


@dataclass(slots=True)
class _Event:
    id: str
    type: str
    body: bytes  # built once, sent as is to every hook, on every attempt


@dataclass(slots=True)
class _Delivery:
    """One event to one hook."""

    event: _Event
    failed: int = 0
    timer: asyncio.TimerHandle | None = None  # while it waits for its retry


class _Hook:
    def __init__(self, config: WebhookConfig) -> None:
        self.url = URL(config.url)
        # What a log line may say of the receiver: never the path or query
        # (a receiver may take a token there) nor user info.
        self.host = self.url.host_port_subcomponent or "?"
        self.secret = config.secret
        self.events = frozenset(config.events)
        self.ready: asyncio.Queue[_Delivery] = asyncio.Queue()  # bounded by `held`, not by the queue
        self.held = 0
        self.waiting: set[asyncio.TimerHandle] = set()
        self.workers: list[asyncio.Task[None]] = []
        self.dropped = 0  # since the last log line about it
        self.drop_logged_at = -DROP_LOG_INTERVAL


class Webhooks:
    """Delivers events to the configured hooks; see docs/webhooks.md.

    ``hooks`` and ``max_attempts`` come from the config (``webhooks``,
    ``webhook_max_attempts``). The rest are for tests: ``clock`` is the unix
    time of events and signatures, ``delay(failed)`` the wait before a retry
    (``retry_delay``), ``timeout`` one attempt's limit, ``concurrency`` the
    workers per hook, ``max_queued`` the deliveries one hook may hold.

    Without hooks it starts nothing: no task, no HTTP session.
    """

    def __init__(
        self,
        *,
        hooks: Sequence[WebhookConfig],
        max_attempts: int,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
        delay: Callable[[int], float] = retry_delay,
        timeout: float = ATTEMPT_TIMEOUT,
        concurrency: int = CONCURRENCY,
        max_queued: int = MAX_QUEUED,
    ) -> None:
        for name, value in (("max_attempts", max_attempts), ("concurrency", concurrency), ("max_queued", max_queued)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, not {value}")
        self._hooks = [_Hook(hook) for hook in hooks]
        self._max_attempts = max_attempts
        self._metrics = metrics
        self._clock = clock
        self._delay = delay
        self._timeout = timeout
        self._concurrency = concurrency
        self._max_queued = max_queued
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    @property
    def pending(self) -> int:
        """Deliveries not finished yet, over every hook."""
        return sum(hook.held for hook in self._hooks)

    def wants(self, type: str) -> bool:
        """Whether some hook subscribes to ``type`` (a caller may skip building the event's data)."""
        return any(type in hook.events for hook in self._hooks)

    def submit(
        self, type: str, data: dict[str, Any], *, event_id: str | None = None, at: float | None = None
    ) -> str | None:
        """Queue the event ``type`` with ``data`` for every hook subscribed to it, and return at once.

        Never waits, never fails for a receiver's sake: a hook whose queue is
        full drops it (counted as ``dropped``). Call it from the event loop's
        thread. ``event_id`` is the event's ``id`` (default: a new UUID);
        ``at`` its unix time (default: now). Returns the id, or None when no
        hook subscribes to ``type`` (or the service has stopped). ValueError for
        a type not in WEBHOOK_EVENTS, TypeError for ``data`` JSON cannot carry.
        """
        if type not in WEBHOOK_EVENTS:
            raise ValueError(f"unknown webhook event type {type!r}")
        hooks = [hook for hook in self._hooks if type in hook.events]
        if not hooks:
            return None
        if self._closed:
            logger.debug("webhooks stopped: %s not queued", type)
            return None
        event_id = event_id or str(uuid.uuid4())
        when = self._clock() if at is None else at
        body = orjson.dumps({"id": event_id, "type": type, "time": iso_z(when), "data": data})
        event = _Event(event_id, type, body)
        for hook in hooks:
            if hook.held >= self._max_queued:
                self._dropped(hook, event)
                continue
            hook.held += 1
            self._metrics.webhook_queued.inc()
            hook.ready.put_nowait(_Delivery(event))
        return event_id

    async def start(self) -> None:
        if not self._hooks or self._session is not None:
            return
        self._session = aiohttp.ClientSession(
            headers={"User-Agent": USER_AGENT},
            timeout=aiohttp.ClientTimeout(total=self._timeout),
            # No pool limit: hooks x concurrency bounds the connections, and a
            # shared limit would let a hanging receiver starve the others.
            connector=aiohttp.TCPConnector(limit=0),
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        for index, hook in enumerate(self._hooks):
            hook.workers = [
                asyncio.create_task(self._work(hook), name=f"webhook-{index}-{n}") for n in range(self._concurrency)
            ]

    async def stop(self) -> None:
        """Stop delivering: what is pending is abandoned, and counted in one log line."""
        self._closed = True
        workers = [task for hook in self._hooks for task in hook.workers]
        for task in workers:
            task.cancel()
        if workers:
            await asyncio.wait(workers)
        abandoned = self.pending
        for hook in self._hooks:
            for handle in hook.waiting:
                handle.cancel()
            hook.waiting.clear()
            hook.workers = []
            hook.held = 0
            hook.ready = asyncio.Queue()
        self._metrics.webhook_queued.dec(abandoned)
        if abandoned:
            logger.warning("webhooks stopped: %d pending deliveries abandoned", abandoned)
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _dropped(self, hook: _Hook, event: _Event) -> None:
        self._metrics.webhook_deliveries.labels("dropped").inc()
        hook.dropped += 1
        now = time.monotonic()
        if now - hook.drop_logged_at >= DROP_LOG_INTERVAL:
            logger.warning(
                "webhook queue of %s is full (%d deliveries): %d dropped since the last such line, the latest %s %s",
                hook.host,
                self._max_queued,
                hook.dropped,
                event.type,
                event.id,
            )
            hook.dropped = 0
            hook.drop_logged_at = now

    async def _work(self, hook: _Hook) -> None:
        while True:
            delivery = await hook.ready.get()
            try:
                outcome, reason = await self._attempt(hook, delivery.event.body)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("webhook attempt to %s failed unexpectedly", hook.host)
                outcome, reason = "error", "unexpected error"
            self._metrics.webhook_attempts.labels(outcome).inc()
            self._settle(hook, delivery, outcome, reason)

    async def _attempt(self, hook: _Hook, body: bytes) -> tuple[str, str]:
        """One POST: (outcome for the metrics, reason for a log line)."""
        if self._session is None:
            raise RuntimeError("webhooks not started")
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: signature(hook.secret, body, int(self._clock())),
        }
        try:
            # A redirect is not followed: it would be a GET, or a POST to where the hook was not configured.
            async with self._session.post(hook.url, data=body, headers=headers, allow_redirects=False) as response:
                status = response.status
        except TimeoutError:
            return "timeout", f"no answer within {self._timeout:g} s"
        except aiohttp.ClientError as exc:
            # The class only: a message may quote the URL, whose path or query may hold a token.
            return "error", type(exc).__name__
        if 200 <= status < 300:
            return "ok", f"HTTP {status}"
        return "status", f"HTTP {status}"

    def _settle(self, hook: _Hook, delivery: _Delivery, outcome: str, reason: str) -> None:
        event = delivery.event
        if outcome == "ok":
            self._finish(hook, "delivered")
            return
        delivery.failed += 1
        if delivery.failed >= self._max_attempts:
            self._finish(hook, "failed")
            logger.warning(
                "webhook delivery to %s failed after %d attempts (last: %s): %s %s",
                hook.host,
                delivery.failed,
                reason,
                event.type,
                event.id,
            )
            return
        wait = max(0.0, self._delay(delivery.failed))
        logger.debug(
            "webhook attempt %d to %s failed (%s): %s %s, next in %.1f s",
            delivery.failed,
            hook.host,
            reason,
            event.type,
            event.id,
            wait,
        )
        delivery.timer = asyncio.get_running_loop().call_later(wait, self._retry, hook, delivery)
        hook.waiting.add(delivery.timer)

    def _retry(self, hook: _Hook, delivery: _Delivery) -> None:
        if delivery.timer is not None:
            hook.waiting.discard(delivery.timer)
            delivery.timer = None
        hook.ready.put_nowait(delivery)

    def _finish(self, hook: _Hook, result: str) -> None:
        hook.held -= 1
        self._metrics.webhook_queued.dec()
        self._metrics.webhook_deliveries.labels(result).inc()
