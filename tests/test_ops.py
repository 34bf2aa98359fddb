"""Ops endpoints: /healthz, /readyz, /metrics, /openapi.json, /.well-known/jwks.json."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from aiohttp import web

from tests.conftest import Gateway
from tests.support import Probe, http_json, metric_value


@pytest.mark.parametrize(("path", "expected"), [("/healthz", {"status": "ok"}), ("/readyz", {"status": "ready"})])
async def test_health_and_ready(gateway: Gateway, path: str, expected: dict[str, str]) -> None:
    status, body, headers = await http_json("GET", f"{gateway.url}{path}")
    assert (status, body) == (200, expected)
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert headers["X-Ticketgate-Node"] == gateway.config.node_name


async def _headers(gateway: Gateway, path: str) -> dict[str, str]:
    _, _, headers = await http_json("GET", f"{gateway.url}{path}")
    return headers


async def test_node_header(gateway: Gateway) -> None:
    headers = await _headers(gateway, "/healthz")
    assert headers["X-Ticketgate-Node"] == gateway.config.node_name


async def test_openapi_documents_every_route(gateway: Gateway) -> None:
    status, spec, _ = await http_json("GET", f"{gateway.url}/openapi.json")
    assert status == 200 and spec["openapi"].startswith("3.")
    routes = set()
    for resource in gateway.app.router.resources():
        info = resource.get_info()
        path = info.get("path") or info.get("formatter")
        if path and not path.startswith(("/socket.io", "/ws/session", "/demo")):
            routes.add(path)
    assert routes <= set(spec["paths"]), routes - set(spec["paths"])
    assert spec["components"]["schemas"]["PublishRequest"]["required"] == ["event", "room"]
    verify = spec["paths"]["/auth/verify"]["post"]["responses"]
    assert {"200", "401", "404", "409", "429"} <= set(verify)


async def test_metrics_count_connects_and_tickets(gateway: Gateway, probes: Callable[[], Probe]) -> None:
    probe = probes()
    assert await probe.connect(gateway.url, auth={"ticket": await gateway.ticket()})
    refused = probes()
    assert not await refused.connect(gateway.url, auth={"ticket": "z" * 43})
    status, text, headers = await http_json("GET", f"{gateway.url}/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert "ticketgate_connected_sockets 1.0" in text
    assert "ticketgate_tickets_issued_total 1.0" in text
    assert "ticketgate_tickets_consumed_total 1.0" in text
    assert 'ticketgate_connect_attempts_total{reason="ticket",result="accepted"} 1.0' in text
    assert 'ticketgate_connect_attempts_total{reason="invalid_ticket",result="refused"} 1.0' in text
    assert metric_value(text, "ticketgate_events_published_total") == 0.0
    await gateway.publish("user:alice", "note", {"n": 1})
    _, text, _ = await http_json("GET", f"{gateway.url}/metrics")
    assert metric_value(text, "ticketgate_events_published_total") == 1.0


async def test_two_apps_have_independent_metrics(gateway: Gateway) -> None:
    from gateway.app import create_app

    other: web.Application = create_app(gateway.config)
    from gateway import keys

    assert other[keys.metrics].registry is not gateway.app[keys.metrics].registry
