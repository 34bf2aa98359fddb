"""``ticketgate serve --workers N`` (gateway/workers.py): real worker processes on
one port, each a node of the cluster on the session's redis-server; the kernel
spreads new connections across them (SO_REUSEPORT)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.auth.tokens import TokenService
from gateway.config import load_config
from tests.support import ROOT, GatewayProcess, Probe, RedisServer, free_port, http_json, publish, write_toml
from tests.test_config import run_cli

pytestmark = pytest.mark.timeout(60)

ADMIN_TOKEN = "admin-token-for-workers-tests-0123456789"
GOING_AWAY = {"code": 1001, "reason": "going_away"}
READY = re.compile(r"worker (\d+) ready: pid (\d+), node (\S+)")
SUPERVISING = "ticketgate supervising 2 workers on "


@pytest.fixture
def worker_settings(redis_server: RedisServer, cluster_keys: dict[str, str]) -> dict[str, Any]:
    redis_server.flush()
    return {**cluster_keys, "redis_url": redis_server.url, "admin_token": ADMIN_TOKEN}


async def until_logged(proc: GatewayProcess, text: str, *, count: int = 1, timeout: float = 20) -> str:
    """The log once ``text`` is in it ``count`` times."""
    deadline = time.monotonic() + timeout
    while (log := proc.log()).count(text) < count:
        assert proc.proc is not None and proc.proc.poll() is None, log[-3000:]
        assert time.monotonic() < deadline, f"no {text!r} x{count} in:\n{log[-3000:]}"
        await asyncio.sleep(0.05)
    return log


async def supervisor(
    gateway_process: Callable[..., GatewayProcess], settings: dict[str, Any]
) -> tuple[GatewayProcess, dict[str, int]]:
    """``serve --workers 2`` once both workers listen, and {node name: pid} of each."""
    proc = gateway_process(settings, name="supervisor", extra_args=("--workers", "2"))
    proc.start()
    log = await until_logged(proc, SUPERVISING)
    return proc, {node: int(pid) for _, pid, node in READY.findall(log)}


async def answering_nodes(url: str, attempts: int, *, stop_at: set[str] | None = None) -> list[str]:
    """The X-Ticketgate-Node of up to ``attempts`` GET /healthz, each over a new
    connection (a session of its own), stopping once all of ``stop_at`` answered.
    Every request must succeed."""
    nodes: list[str] = []
    for _ in range(attempts):
        status, _, headers = await http_json("GET", f"{url}/healthz")
        assert status == 200
        nodes.append(headers["X-Ticketgate-Node"])
        if stop_at is not None and stop_at <= set(nodes):
            break
    return nodes


class Placements:
    """Socket.IO probes, each knowing which node it landed on: the X-Ticketgate-Node
    of its WebSocket handshake, seen through its own aiohttp session."""

    def __init__(self) -> None:
        self.sessions: list[aiohttp.ClientSession] = []
        self.probes: list[Probe] = []

    async def connect(self, url: str, token: str) -> tuple[Probe, str]:
        answered: list[str] = []

        async def on_request_end(_: Any, __: Any, params: aiohttp.TraceRequestEndParams) -> None:
            answered.append(params.response.headers.get("X-Ticketgate-Node", ""))

        trace = aiohttp.TraceConfig()
        trace.on_request_end.append(on_request_end)
        session = aiohttp.ClientSession(trace_configs=[trace])
        self.sessions.append(session)
        probe = Probe(http_session=session)
        self.probes.append(probe)
        assert await probe.connect(url, auth={"token": token}), probe.connect_error
        await probe.wait_for("authenticated")
        [node] = answered  # the handshake, the only HTTP request of a WebSocket-only client
        return probe, node

    async def one_per_node(self, url: str, token: str, nodes: set[str]) -> dict[str, Probe]:
        """A probe on each of ``nodes``: connect until the kernel has placed one on every one."""
        placed: dict[str, Probe] = {}
        for _ in range(40):
            probe, node = await self.connect(url, token)
            placed.setdefault(node, probe)
            if set(placed) == nodes:
                return placed
        raise AssertionError(f"40 connects landed only on {set(placed)}, not on each of {nodes}")

    async def close(self) -> None:
        for probe in self.probes:
            await probe.close()
        for session in self.sessions:
            await session.close()


@pytest.fixture
async def placements() -> AsyncIterator[Placements]:
    made = Placements()
    yield made
    await made.close()


def token_for(proc: GatewayProcess, sub: str) -> str:
    return TokenService(config=load_config(file=proc.config_file, environ={})).mint(sub, ttl=600)[0]


async def test_connections_land_on_both_workers_and_a_publish_reaches_sockets_on_both(
    gateway_process: Callable[..., GatewayProcess], worker_settings: dict[str, Any], placements: Placements
) -> None:
    proc, workers = await supervisor(gateway_process, worker_settings)
    assert len(workers) == 2
    # One port, two processes: new connections reach both, each answering with its own name.
    assert set(await answering_nodes(proc.url, 60, stop_at=set(workers))) == set(workers)

    placed = await placements.one_per_node(proc.url, token_for(proc, "alice"), set(workers))
    # Published through whichever worker takes the request: the Redis fan-out carries it to the other.
    await publish(proc.url, ADMIN_TOKEN, "user:alice", "invoice_paid", {"id": 42})
    for probe in placed.values():
        assert await probe.wait_for("invoice_paid") == {"id": 42}


async def test_sigterm_drains_every_worker_then_the_supervisor_exits_0(
    gateway_process: Callable[..., GatewayProcess], worker_settings: dict[str, Any], placements: Placements
) -> None:
    proc, workers = await supervisor(gateway_process, worker_settings)
    placed = await placements.one_per_node(proc.url, token_for(proc, "alice"), set(workers))
    assert proc.proc is not None
    sigterm = time.monotonic()
    proc.proc.send_signal(signal.SIGTERM)
    assert len(placed) == 2
    for probe in placements.probes:  # those on both nodes, and any more the kernel placed
        assert await probe.wait_for("closing") == GOING_AWAY
    assert await asyncio.to_thread(proc.proc.wait, 10) == 0, proc.log()[-3000:]
    assert time.monotonic() - sigterm < 5
    assert len(re.findall(r"drained: sent closing 1001 to [1-9]\d* sockets", proc.log())) == 2
    for pid in workers.values():
        assert not Path(f"/proc/{pid}").exists(), f"worker {pid} outlived its supervisor"


async def test_a_killed_worker_is_replaced_while_the_other_keeps_serving(
    gateway_process: Callable[..., GatewayProcess], worker_settings: dict[str, Any]
) -> None:
    proc, workers = await supervisor(gateway_process, worker_settings)
    (killed, pid), (survivor, _) = sorted(workers.items())
    os.kill(pid, signal.SIGKILL)
    # Reaped by the supervisor: the dead worker's listening socket is closed.
    log = await until_logged(proc, f"(pid {pid}, node {killed}) was killed by SIGKILL; restarting")

    # Until its successor listens, every new connection is served, by the survivor.
    answered: list[str] = []
    while len(READY.findall(log)) < 3:
        answered += await answering_nodes(proc.url, 1)
        log = proc.log()
    [(_, new_pid, new_node)] = READY.findall(log)[2:]
    assert new_node not in workers and int(new_pid) not in workers.values()
    assert survivor in answered and set(answered) <= {survivor, new_node}, answered
    # And the successor serves the port beside the survivor.
    assert set(await answering_nodes(proc.url, 60, stop_at={survivor, new_node})) == {survivor, new_node}


async def test_a_worker_that_cannot_restart_is_retried_ever_more_slowly_while_the_other_serves(
    gateway_process: Callable[..., GatewayProcess], worker_settings: dict[str, Any], tmp_path: Path
) -> None:
    proc, workers = await supervisor(gateway_process, worker_settings)
    (_, pid), (survivor, _) = sorted(workers.items())
    # From now on a new worker finds a key file missing and exits 2 (its one line).
    missing = tmp_path / "missing-jwks.json"
    broken = {**worker_settings, "issuers": [{"iss": "https://idp.example.test", "jwks_file": str(missing)}]}
    write_toml(proc.config_file, broken)
    os.kill(pid, signal.SIGKILL)

    failed = "exited with status 2; restarting"
    log = await until_logged(proc, failed, count=2)
    delays = [float(d or 0) for d in re.findall(re.escape(failed) + r"(?: in ([0-9.]+) s)?", log)]
    # A slot starts once a second at most, and half as often after each failed start:
    # the next start after 2 s, then after 4 s (less the time each took to fail).
    assert delays[1] > delays[0] + 1, delays
    assert log.count(f"cannot read jwks_file {missing}") == 2
    assert proc.proc is not None and proc.proc.poll() is None
    assert set(await answering_nodes(proc.url, 10)) == {survivor}


def running(pid: int) -> bool:
    """``pid`` is a process that has not exited (a zombie has: nobody reaped it yet)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


async def test_workers_drain_and_stop_when_their_supervisor_is_killed(
    gateway_process: Callable[..., GatewayProcess], worker_settings: dict[str, Any], placements: Placements
) -> None:
    proc, workers = await supervisor(gateway_process, worker_settings)
    await placements.one_per_node(proc.url, token_for(proc, "alice"), set(workers))
    assert proc.proc is not None
    proc.proc.kill()
    # No orphan keeps the port: each worker hears EOF from the supervisor, drains and exits.
    for probe in placements.probes:
        assert await probe.wait_for("closing") == GOING_AWAY
    deadline = time.monotonic() + 5
    while any(running(pid) for pid in workers.values()):
        assert time.monotonic() < deadline, proc.log()[-3000:]
        await asyncio.sleep(0.05)
    assert proc.log().count("the supervisor is gone: stopping") == 2
    with pytest.raises(aiohttp.ClientConnectionError):
        await http_json("GET", f"{proc.url}/healthz")


async def test_a_demo_admin_token_made_up_by_the_supervisor_is_printed_once_and_good_on_every_worker(
    gateway_process: Callable[..., GatewayProcess], worker_settings: dict[str, Any]
) -> None:
    settings = {name: value for name, value in worker_settings.items() if name != "admin_token"}
    proc = gateway_process(settings, name="demo", extra_args=("--workers", "2", "--demo"))
    proc.start()
    log = await until_logged(proc, SUPERVISING)
    [token] = re.findall(r"^demo admin token: (\S+)$", log, re.MULTILINE)
    nodes = {node for _, _, node in READY.findall(log)}
    accepted: set[str] = set()
    for _ in range(60):
        status, body, headers = await http_json(
            "POST", f"{proc.url}/api/publish", token=token, json={"room": "user:x", "event": "e", "data": 1}
        )
        assert status == 202, body
        accepted.add(headers["X-Ticketgate-Node"])
        if accepted == nodes:
            break
    assert accepted == nodes


def test_workers_with_the_memory_engine_are_refused_in_one_line() -> None:
    result = run_cli("serve", "--workers", "2", "--port", str(free_port()))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "ticketgate: config error: workers = 2 needs the redis engine (redis_url): "
        "with the memory engine nothing would be shared between the processes"
    ]


def serve_workers(config_file: Path, port: int) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TICKETGATE_")}
    began = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config_file), "--port", str(port), "--workers", "2"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=30,
    )
    return result, time.monotonic() - began


def test_a_worker_that_cannot_start_fails_the_supervisor_with_its_one_line(
    worker_settings: dict[str, Any], tmp_path: Path
) -> None:
    # Only a worker reads key files (when its app starts): the supervisor's own check passes.
    missing = tmp_path / "missing-jwks.json"
    issuer = {"iss": "https://idp.example.test", "jwks_file": str(missing)}
    config_file = write_toml(tmp_path / "c.toml", {**worker_settings, "issuers": [issuer]})
    result, took = serve_workers(config_file, free_port())
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"ticketgate: config error: issuer https://idp.example.test: cannot read jwks_file {missing}: "
        "No such file or directory"
    ]
    assert took < 10


def test_a_port_held_by_another_program_fails_the_supervisor_with_one_line(
    worker_settings: dict[str, Any], tmp_path: Path
) -> None:
    config_file = write_toml(tmp_path / "c.toml", worker_settings)
    # A listener without SO_REUSEPORT: no worker may join it on its port.
    with contextlib.closing(socket.socket()) as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        result, took = serve_workers(config_file, port)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"ticketgate: cannot listen on 127.0.0.1:{port}: address already in use"]
    assert took < 10
