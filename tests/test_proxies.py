"""trusted_proxies: X-Forwarded-* believed from a trusted proxy only."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.conftest import MakeGateway
from tests.support import Probe, http_json


async def pending(url: str, probes: Callable[[], Probe], forwarded_for: str) -> Probe:
    probe = probes()
    await probe.connect(url, headers={"X-Forwarded-For": forwarded_for})
    return probe


@pytest.mark.parametrize("engine", ["memory"])
async def test_pending_cap_counts_the_forwarded_client(make_gateway: MakeGateway, probes: Callable[[], Probe]) -> None:
    gateway = await make_gateway(trusted_proxies=["127.0.0.0/8"], max_pending_per_ip=1)
    first = await pending(gateway.url, probes, "203.0.113.1")
    second = await pending(gateway.url, probes, "203.0.113.2")
    third = await pending(gateway.url, probes, "203.0.113.1")
    assert first.client.connected and second.client.connected
    assert third.connect_error["data"] == {"code": 4029, "reason": "rate_limited"}


@pytest.mark.parametrize("engine", ["memory"])
async def test_forwarded_headers_of_an_untrusted_peer_are_ignored(
    make_gateway: MakeGateway, probes: Callable[[], Probe]
) -> None:
    gateway = await make_gateway(trusted_proxies=["10.0.0.0/8"], max_pending_per_ip=1)
    first = await pending(gateway.url, probes, "203.0.113.1")
    second = await pending(gateway.url, probes, "203.0.113.2")  # same real peer: 127.0.0.1
    assert first.client.connected
    assert second.connect_error["data"] == {"code": 4029, "reason": "rate_limited"}


@pytest.mark.parametrize("engine", ["memory"])
async def test_same_origin_behind_a_tls_proxy_is_the_public_url(make_gateway: MakeGateway) -> None:
    """Behind a TLS proxy the gateway's own origin is its configured public_url;
    the forwarded Host and scheme no longer make an Origin same-origin (issue #11)."""
    public = await make_gateway(trusted_proxies=["127.0.0.1"], public_url="https://chat.example")
    trusting = await make_gateway(trusted_proxies=["127.0.0.1"])
    headers = {
        "Origin": "https://chat.example",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "chat.example",
        "X-Forwarded-For": "198.51.100.7",
    }
    path = "/socket.io/?EIO=4&transport=polling"
    status, _, _ = await http_json("GET", public.url + path, headers=headers)
    assert status == 200
    status, body, _ = await http_json("GET", trusting.url + path, headers=headers)
    assert status == 403 and body["error"]["code"] == "origin_not_allowed"


@pytest.mark.parametrize("engine", ["memory"])
async def test_a_rebound_name_is_not_same_origin(make_gateway: MakeGateway) -> None:
    """DNS rebinding: a page on evil.example, whose name now points at the gateway,
    sends Host and Origin of evil.example; only the listen address (or public_url) counts."""
    gateway = await make_gateway()
    path = "/socket.io/?EIO=4&transport=polling"
    rebound = {"Host": "evil.example", "Origin": "http://evil.example"}
    status, body, _ = await http_json("GET", gateway.url + path, headers=rebound)
    assert status == 403 and body["error"]["code"] == "origin_not_allowed"
    port = gateway.server.port
    for own in (f"http://127.0.0.1:{port}", f"http://localhost:{port}"):
        status, _, _ = await http_json("GET", gateway.url + path, headers={"Host": "evil.example", "Origin": own})
        assert status == 200, own
    status, _, _ = await http_json("GET", gateway.url + path, headers={"Origin": "http://127.0.0.1:1"})
    assert status == 403  # another port is another origin


def test_bad_proxy_setting() -> None:
    from gateway.config import load_config
    from gateway.errors import ConfigError

    with pytest.raises(ConfigError, match="trusted_proxies"):
        load_config(environ={}, flags={"trusted_proxies": ["not-an-ip"]})
