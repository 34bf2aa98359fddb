"""PROTOCOL §5 behind a load balancer: the operator example deploy/nginx.conf,
run by a real nginx in front of two real gateway processes."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.auth.tokens import TokenService
from gateway.config import load_config
from tests.cluster.conftest import ADMIN_TOKEN, start_nodes
from tests.support import (
    ROOT,
    GatewayProcess,
    Nodes,
    Probe,
    free_port,
    issue_ticket,
    metric,
    publish,
    wait_for_port,
    which,
)

pytestmark = pytest.mark.timeout(60)

EXAMPLE = ROOT / "deploy" / "nginx.conf"


def adapt_example(text: str, *, port: int, nodes: Nodes, workdir: Path) -> str:
    """The example with this test's ports, and every path nginx writes in ``workdir``."""
    replacements = {
        "listen 8080;": f"listen 127.0.0.1:{port};",
        "server 127.0.0.1:8081;": f"server 127.0.0.1:{nodes[0].port};",
        "server 127.0.0.1:8082;": f"server 127.0.0.1:{nodes[1].port};",
        "\nhttp {\n": (
            "\nhttp {\n"
            f"    access_log {workdir}/access.log;\n"
            + "".join(
                f"    {kind}_temp_path {workdir}/{kind}_temp;\n"
                for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
            )
        ),
    }
    for old, new in replacements.items():
        # Exactly once: if the example changes shape, this test must be updated with it.
        assert text.count(old) == 1, f"deploy/nginx.conf no longer contains {old!r} exactly once"
        text = text.replace(old, new)
    return text


class Nginx:
    """The real nginx, running the operator example from a scratch directory."""

    def __init__(self, workdir: Path, nodes: Nodes, *, port: int) -> None:
        self.workdir = workdir
        self.port = port
        self.conf = workdir / "nginx.conf"
        self.conf.write_text(adapt_example(EXAMPLE.read_text(), port=self.port, nodes=nodes, workdir=workdir))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self, *extra: str) -> list[str]:
        return [
            which("nginx"),
            "-p",
            str(self.workdir),
            "-e",
            str(self.workdir / "error.log"),
            "-c",
            str(self.conf),
            "-g",
            f"daemon off; pid {self.workdir}/nginx.pid;",
            *extra,
        ]

    def start(self) -> None:
        check = subprocess.run(self.command("-t"), capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stderr
        self.proc = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, proc=self.proc)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: nginx's fast shutdown
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def error_log(self) -> str:
        path = self.workdir / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture
def nginx_port() -> int:
    return free_port()


@pytest.fixture
async def proxied_nodes(
    cluster_settings: dict[str, Any], gateway_process: Callable[..., GatewayProcess], nginx_port: int
) -> Nodes:
    """Nodes a and b as deploy/nginx.conf says: their public_url is nginx's."""
    return await start_nodes(gateway_process, cluster_settings, public_url=f"http://127.0.0.1:{nginx_port}")


@pytest.fixture
def nginx(proxied_nodes: Nodes, tmp_path: Path, nginx_port: int) -> Iterator[Nginx]:
    workdir = tmp_path / "nginx"
    workdir.mkdir()
    server = Nginx(workdir, proxied_nodes, port=nginx_port)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def mint(cluster_settings: dict[str, Any]) -> Callable[[str], str]:
    tokens = TokenService(config=load_config(environ={}, flags=cluster_settings))
    return lambda sub: tokens.mint(sub)[0]


async def host_and_other(nodes: Nodes) -> tuple[GatewayProcess, GatewayProcess]:
    """(the node holding the one connected socket, the other node), from their gauges."""
    counts = [await metric(node.url, "ticketgate_connected_sockets") for node in nodes]
    assert sorted(counts) == [0, 1], counts
    return (nodes[0], nodes[1]) if counts[0] == 1 else (nodes[1], nodes[0])


async def test_polling_client_upgrades_through_nginx_and_hears_the_other_node(
    nginx: Nginx, proxied_nodes: Nodes, mint: Callable[[str], str], probes: Callable[[], Probe]
) -> None:
    """socket.io-client's default: long-polling first, then the WebSocket upgrade;
    every request of the session must reach the same node (ip_hash)."""
    probe = probes()
    ticket = await issue_ticket(nginx.url, mint("alice"))
    assert await probe.connect(nginx.url, auth={"ticket": ticket}, transports=("polling", "websocket"))
    authenticated = await probe.wait_for("authenticated")
    assert (authenticated["sub"], authenticated["via"]) == ("alice", "ticket")

    deadline = time.monotonic() + 10
    while probe.client.transport() != "websocket":  # the upgrade went through nginx too
        assert time.monotonic() < deadline, "no WebSocket upgrade through nginx"
        await asyncio.sleep(0.05)

    _, other = await host_and_other(proxied_nodes)
    await publish(other.url, ADMIN_TOKEN, "user:alice", "invoice_paid", {"id": 7})
    assert await probe.wait_for("invoice_paid") == {"id": 7}
    assert probe.client.connected
    assert probe.named("__disconnect__") == []
    assert "[error]" not in nginx.error_log()


async def test_websocket_only_client_through_nginx(
    nginx: Nginx, proxied_nodes: Nodes, mint: Callable[[str], str], probes: Callable[[], Probe]
) -> None:
    probe = probes()
    assert await probe.connect(nginx.url, auth={"token": mint("bob")}, transports=("websocket",))
    assert (await probe.wait_for("authenticated"))["sub"] == "bob"
    _, other = await host_and_other(proxied_nodes)
    await publish(other.url, ADMIN_TOKEN, "user:bob", "note", "from the other node")
    await publish(nginx.url, ADMIN_TOKEN, "user:bob", "note", "through nginx")
    await probe.wait_for("note", count=2)
    assert sorted(probe.named("note")) == ["from the other node", "through nginx"]


async def test_same_origin_page_is_accepted_through_nginx(
    nginx: Nginx, mint: Callable[[str], str], probes: Callable[[], Probe]
) -> None:
    """The page is served from nginx's origin (with a port), which is the nodes'
    public_url, as the example's comment says to configure it."""
    for transports in (("polling", "websocket"), ("websocket",)):
        page = probes()
        ok = await page.connect(
            nginx.url, auth={"token": mint("carol")}, transports=transports, headers={"Origin": nginx.url}
        )
        assert ok, (transports, page.connect_error)
        assert (await page.wait_for("authenticated"))["sub"] == "carol"
    foreign = probes()
    assert not await foreign.connect(
        nginx.url, auth={"token": mint("carol")}, headers={"Origin": "http://evil.example.com"}
    )
