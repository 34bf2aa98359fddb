"""SIGTERM as the official socket.io-client sees it (PROTOCOL §3 `closing` 1001
`going_away`): every socket hears `closing` and sees its transport close within
1 s, so it reconnects by itself (behind a balancer: to another node), and a node
with 1000 sockets exits 0 within 3 s. python-socketio's client and the raw
WebSocket are pinned in tests/test_faults.py."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from gateway.auth.tokens import TokenService
from gateway.config import load_config
from tests.support import GatewayProcess, NodeScript, NodeScripts

pytestmark = pytest.mark.timeout(90)

GOING_AWAY = {"code": 1001, "reason": "going_away"}


async def drain(
    gateway_process: Callable[..., GatewayProcess],
    node_scripts: NodeScripts,
    cluster_keys: dict[str, str],
    *,
    count: int,
    transports: list[str] | None,
) -> tuple[list[dict[str, Any]], float, float]:
    """Connect ``count`` official clients to a real gateway process, SIGTERM it;
    (each socket's lines, SIGTERM time, exit time), times from time.time()."""
    # One address (127.0.0.1) opens `count` connects in a couple of seconds: above the defaults.
    node = gateway_process({**cluster_keys, "max_pending_per_ip": count + 10, "connect_rate_per_ip": count + 10})
    node.start()
    token, _ = TokenService(config=load_config(file=node.config_file, environ={})).mint("alice", ttl=600)
    options: dict[str, Any] = {
        "count": count,
        "auth": {"token": token},
        "report": ["closing"],
        "buffer": True,  # the client's own printing must not delay its sockets
        "timeoutMs": 60_000,
    }
    if transports is not None:
        options["transports"] = transports
    crowd = await node_scripts(NodeScript.launch("crowd.mjs", node.url, json.dumps(options)))
    await crowd.wait(lambda line: line["event"] in ("connected", "timeout"), timeout=60)
    assert crowd.matching(lambda line: line["event"] == "connected"), crowd.lines[-5:]

    assert node.proc is not None
    sigterm = time.time()
    node.proc.terminate()
    status = await asyncio.to_thread(node.proc.wait, 10)
    exited = time.time()
    assert status == 0, node.log()[-2000:]
    await crowd.wait(lambda line: line["event"] == "gone", timeout=10)
    return crowd.lines, sigterm, exited


def check_every_socket(lines: list[dict[str, Any]], count: int, sigterm: float) -> float:
    """Each socket: `closing` 1001 once, then `transport close` (which reconnects
    by itself), within 1 s of SIGTERM. The last disconnect's time."""
    closing = {line["i"]: line for line in lines if line["event"] == "emit" and line["name"] == "closing"}
    disconnect = {line["i"]: line for line in lines if line["event"] == "disconnect"}
    assert len(closing) == len(disconnect) == count
    assert all(line["args"] == [GOING_AWAY] for line in closing.values())
    assert {line["reason"] for line in disconnect.values()} == {"transport close"}
    assert all(closing[i]["t"] <= disconnect[i]["t"] for i in range(count))
    last = max(line["t"] for line in disconnect.values()) / 1000
    assert last - sigterm < 1.0, f"the last socket let go {last - sigterm:.2f} s after SIGTERM"
    return last


async def test_a_thousand_websocket_clients_leave_at_once_and_the_node_exits_within_3s(
    gateway_process: Callable[..., GatewayProcess], node_scripts: NodeScripts, cluster_keys: dict[str, str]
) -> None:
    lines, sigterm, exited = await drain(
        gateway_process, node_scripts, cluster_keys, count=1000, transports=["websocket"]
    )
    last = check_every_socket(lines, 1000, sigterm)
    print(f"1000 sockets: last client let go {last - sigterm:.3f} s, exit {exited - sigterm:.3f} s after SIGTERM")
    assert exited - sigterm < 3.0, f"exit {exited - sigterm:.2f} s after SIGTERM (last client {last - sigterm:.2f} s)"


@pytest.mark.parametrize("transports", [["polling"], None], ids=["polling", "polling-then-websocket"])
async def test_long_polling_and_upgraded_clients_leave_at_once(
    gateway_process: Callable[..., GatewayProcess],
    node_scripts: NodeScripts,
    cluster_keys: dict[str, str],
    transports: list[str] | None,
) -> None:
    lines, sigterm, exited = await drain(gateway_process, node_scripts, cluster_keys, count=20, transports=transports)
    check_every_socket(lines, 20, sigterm)
    assert exited - sigterm < 3.0
