"""Real parts for the tests: redis-server, gateway processes, nginx, clients.

Nothing here is a mock: each helper starts or drives the real program.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self, TypeVar

import aiohttp
import jwt
import redis
import redis.asyncio as aioredis
import socketio
from aiohttp import web
from aiohttp.test_utils import TestServer
from jwcrypto import jwk
from redis.crc import key_slot

from gateway import keys
from gateway.app import create_runner

ROOT = Path(__file__).resolve().parent.parent
JS_DIR = ROOT / "tests" / "js"

# A trusted external issuer of the tests (its keys from a JWKS file or a JwksServer).
ISSUER = "https://idp.example.test"
AUDIENCE = "ticketgate-tests"


class GatewayTestServer(TestServer):
    """aiohttp's TestServer serving a gateway app with the runner the CLI uses
    (create_runner: its access log, header limits and slow-client deadlines)."""

    async def _make_runner(self, **kwargs: Any) -> web.BaseRunner:
        return create_runner(self.app, self.app[keys.config], **kwargs)


class Clock:
    """A clock that stands still until a test moves ``now``; for a ``clock=`` parameter."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports (all held at once while chosen, so none comes twice)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]


def wait_for_port(port: int, *, timeout: float = 10.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port} after {timeout}s")


def which(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin")
    if found is None:
        raise RuntimeError(f"{name} is not installed: run `make test`, which installs it")
    return found


class RedisServer:
    """A real redis-server on a free port (or ``port``), without persistence; stoppable and
    restartable on the same port.

    ``config`` is a config file it reads first and ``args`` are directives after the
    usual ones (a later directive wins). It logs to ``log_file`` in ``workdir``.
    """

    def __init__(
        self, workdir: Path, *, port: int | None = None, config: Path | None = None, args: Sequence[str] = ()
    ) -> None:
        self.port = free_port() if port is None else port
        self.workdir = workdir
        self.config = config
        self.args = tuple(args)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_file(self) -> Path:
        return self.workdir / f"redis-{self.port}.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        command = [
            which("redis-server"),
            *([str(self.config)] if self.config is not None else []),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.workdir),
            *self.args,
        ]
        # stdout and stderr both: a bad config is reported on stderr, before any log file opens.
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_port(self.port, proc=self.proc)
        except (RuntimeError, TimeoutError) as error:
            self.stop()
            raise RuntimeError(f"redis-server on {self.port} did not start ({error}):\n{self.log_tail()}") from None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None

    def flush(self) -> None:
        subprocess.run(
            [which("redis-cli"), "-p", str(self.port), "FLUSHALL"], check=True, capture_output=True, timeout=10
        )

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"


def redis_command(port: int, *args: str | int) -> Any:
    """One command to the redis-server on ``port``, answered as redis-py parses it
    (for its parser, a two-word command is one string: "CLUSTER INFO")."""
    with redis.Redis(host="127.0.0.1", port=port, socket_timeout=5, decode_responses=True) as client:
        return client.execute_command(*args)


def require_redis_7() -> None:
    """Redis Cluster's sharded pub/sub and --cluster-port are Redis 7's."""
    out = subprocess.run([which("redis-server"), "--version"], check=True, capture_output=True, text=True).stdout
    version = out.split("v=", 1)[1].split()[0]
    if int(version.split(".")[0]) < 7:
        raise RuntimeError(f"redis-server {version} is too old: Redis Cluster tests need Redis 7 or later")


class RedisCluster:
    """A real Redis Cluster: three masters without replicas (``masters``) on free ports,
    without persistence, joined by ``redis-cli --cluster create``.

    Unlike Redis's default, ``cluster-require-full-coverage no``: while a master is
    stopped the others go on serving their own slots. With the default, every node
    would refuse every key once the others mark the stopped master failed, about
    ``NODE_TIMEOUT_MS`` later, so what a test saw would depend on how long it took.

    ``config`` is a redis.conf every node reads first (deploy/redis-cluster's, to check
    it); the settings above come after it and win.
    """

    NODE_TIMEOUT_MS = 2000
    SLOTS = 16384

    def __init__(self, workdir: Path, *, masters: int = 3, config: Path | None = None) -> None:
        ports = free_ports(2 * masters)
        self.nodes = [
            RedisServer(
                workdir,
                port=port,
                config=config,
                args=(
                    "--cluster-enabled",
                    "yes",
                    # The default bus port, port + 10000, is over 65535 for many free ports.
                    "--cluster-port",
                    str(bus_port),
                    "--cluster-config-file",
                    str(workdir / f"nodes-{port}.conf"),
                    "--cluster-node-timeout",
                    str(self.NODE_TIMEOUT_MS),
                    "--cluster-require-full-coverage",
                    "no",
                ),
            )
            for port, bus_port in zip(ports[:masters], ports[masters:], strict=True)
        ]

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        """The first node's URL, a seed for cluster clients (a cluster has only database 0)."""
        return self.urls[0]

    def start(self) -> None:
        require_redis_7()
        try:
            for node in self.nodes:
                node.start()
            create = subprocess.run(
                [
                    which("redis-cli"),
                    "--cluster",
                    "create",
                    *(f"127.0.0.1:{port}" for port in self.ports),
                    "--cluster-replicas",
                    "0",
                    "--cluster-yes",
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
            if create.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed ({create.returncode}):\n{create.stdout}")
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def flush(self) -> None:
        """FLUSHALL on every master."""
        for node in self.nodes:
            node.flush()

    def stop_node(self, i: int) -> None:
        """Stop master ``i``. Its slots stay its own (it has no replica to take them
        over): until ``start_node(i)`` commands on its keys fail, while the other
        masters serve theirs. Its data is lost (no persistence)."""
        self.nodes[i].stop()

    def start_node(self, i: int) -> None:
        """Start master ``i`` again on its port with its nodes.conf: it rejoins as the
        same node with the same slots, empty. Returns once the cluster is healthy:
        ~2 s, as a restarted master waits that long before it serves; up to 4 s more
        if the others had marked it failed (see ``wait_healthy``)."""
        self.nodes[i].start()
        self.wait_healthy()

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Until every node says ``cluster_state:ok`` and sees every node connected
        and none failing. (The others clear a master of FAIL, once it is back, only
        two node timeouts after they marked it.)"""
        deadline = time.monotonic() + timeout
        while True:
            problems = {node.port: self._problem(node.port) for node in self.nodes}
            if not any(problems.values()):
                return
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {node.log_file}\n{node.log_tail(5)}" for node in self.nodes)
                raise TimeoutError(f"Redis Cluster not healthy after {timeout}s: {problems}\n{logs}")
            time.sleep(0.05)

    def _problem(self, port: int) -> str:
        """What is wrong with the cluster as the node on ``port`` sees it ("" if nothing)."""
        try:
            state = redis_command(port, "CLUSTER INFO")["cluster_state"]
            nodes = redis_command(port, "CLUSTER NODES")
        except redis.RedisError as error:
            return repr(error)
        if state != "ok":
            return f"cluster_state:{state}"
        bad = [
            f"{address} {info['flags']}"
            for address, info in nodes.items()
            if "fail" in info["flags"] or not info["connected"]
        ]
        if len(nodes) != len(self.nodes) or bad:
            return f"knows {len(nodes)} nodes, unwell: {bad}"
        return ""

    def slot_ports(self) -> list[tuple[int, int, int]]:
        """(first slot, last slot, port of its master) of every slot range, from CLUSTER SLOTS."""
        port = next(node.port for node in self.nodes if node.running)
        return [(first, last, int(master[1])) for first, last, master, *_ in redis_command(port, "CLUSTER SLOTS")]

    def port_of_slot(self, slot: int) -> int:
        return next(port for first, last, port in self.slot_ports() if first <= slot <= last)

    def node_for_slot(self, slot: int) -> int:
        """The index in ``nodes`` of the master serving ``slot``."""
        return self.ports.index(self.port_of_slot(slot))

    def node_for_key(self, key: str | bytes) -> int:
        return self.node_for_slot(key_slot(key.encode() if isinstance(key, str) else key))

    def key_for_node(self, i: int, prefix: str = "key:") -> str:
        """The first of ``prefix`` + 0, 1, 2... that lives on master ``i`` (a key name,
        or a hash tag to put between braces)."""
        ranges = [(first, last) for first, last, port in self.slot_ports() if port == self.ports[i]]
        for n in range(self.SLOTS):
            slot = key_slot(f"{prefix}{n}".encode())
            if any(first <= slot <= last for first, last in ranges):
                return f"{prefix}{n}"
        raise ValueError(f"no key {prefix}<n> on node {i}: does {prefix!r} hold a hash tag?")


class RedisSentinel:
    """One real Redis master (``master``, a RedisServer) watched by one real Sentinel,
    both on free ports, the master known as ``SERVICE``."""

    SERVICE = "ticketgate"
    DOWN_AFTER_MS = 2000

    def __init__(self, workdir: Path) -> None:
        self.master = RedisServer(workdir / "master")
        self.config_file = workdir / "sentinel" / "sentinel.conf"
        self.sentinel = RedisServer(workdir / "sentinel", config=self.config_file, args=("--sentinel",))

    @property
    def port(self) -> int:
        return self.sentinel.port

    @property
    def url(self) -> str:
        """python-socketio's form: redis+sentinel://host:port[,host:port...]/db/service."""
        return f"redis+sentinel://127.0.0.1:{self.port}/0/{self.SERVICE}"

    def start(self) -> None:
        try:
            self.master.start()
            self.config_file.parent.mkdir(parents=True, exist_ok=True)
            # Written anew at each start: Sentinel rewrites it with what it learns.
            # (Port, bind and dir come on its command line, as for every RedisServer.)
            self.config_file.write_text(
                f"sentinel monitor {self.SERVICE} 127.0.0.1 {self.master.port} 1\n"
                f"sentinel down-after-milliseconds {self.SERVICE} {self.DOWN_AFTER_MS}\n"
            )
            self.sentinel.start()
            self._wait_master()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        self.sentinel.stop()
        self.master.stop()

    def flush(self) -> None:
        self.master.flush()

    def _wait_master(self, timeout: float = 10.0) -> None:
        """Until the sentinel names the master and has a link to it (flags just "master")."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                address = redis_command(self.port, "SENTINEL GET-MASTER-ADDR-BY-NAME", self.SERVICE)
                flags = redis_command(self.port, "SENTINEL MASTER", self.SERVICE)["flags"]
            except redis.RedisError as error:
                address, flags = None, repr(error)
            if address == ("127.0.0.1", self.master.port) and flags == "master":
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"sentinel on {self.port} reports {address}, flags {flags} after {timeout}s:\n"
                    f"{self.sentinel.log_tail()}"
                )
            time.sleep(0.05)


def keygen() -> dict[str, str]:
    """A signing key and secret as `ticketgate keygen` prints them (run for real)."""
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "keygen"], check=True, capture_output=True, text=True, cwd=ROOT, timeout=30
    ).stdout
    values: dict[str, str] = {}
    for line in out.splitlines():
        if " = " in line and not line.startswith("#"):
            name, _, value = line.partition(" = ")
            values[name] = value.strip()[1:-1]
    return values


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    text = str(value)
    return (
        f"'{text}'" if '"' in text and "'" not in text else '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    )


def write_toml(path: Path, settings: dict[str, Any]) -> Path:
    lines = []
    tables = []
    for name, value in settings.items():
        if name in ("issuers", "webhooks"):  # arrays of tables
            for table in value:
                tables.append(f"[[{name}]]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in table.items()))
        else:
            lines.append(f"{name} = {toml_value(value)}")
    path.write_text("\n".join(lines) + "\n\n" + "\n".join(tables))
    return path


@dataclass
class GatewayProcess:
    """One real `python -m gateway serve` process."""

    config_file: Path
    log_file: Path
    port: int = field(default_factory=free_port)
    extra_args: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, wait: bool = True) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TICKETGATE_")}
        env["PYTHONUNBUFFERED"] = "1"
        log = self.log_file.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway",
                "serve",
                "--config",
                str(self.config_file),
                "--port",
                str(self.port),
                *self.extra_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=env,
        )
        log.close()
        if wait:
            wait_for_port(self.port, proc=self.proc, timeout=20)

    def terminate(self) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=15)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""


class Probe:
    """A real python-socketio AsyncClient that records every event in order.

    ``http_session``: the aiohttp session it connects with (its own by default),
    for a test that watches the HTTP responses, such as which node answered."""

    def __init__(self, *, http_session: aiohttp.ClientSession | None = None) -> None:
        self.client = socketio.AsyncClient(reconnection=False, http_session=http_session)
        self.events: list[tuple[str, Any]] = []
        self.offsets: list[str] = []  # the offsets the room events carried, in order
        self.connect_error: Any = None
        self.events_before_connect: int | None = None  # how many events arrived before `connect`
        self.disconnected = asyncio.Event()
        self._changed = asyncio.Condition()

        @self.client.on("*")
        async def _any(event: str, data: Any = None, *more: Any) -> None:
            # With recovery on (docs/recovery.md) a room's event ends with its offset:
            # python-socketio's client hands it over as one more argument.
            if more:
                self.offsets.append(more[-1])
            await self._record(event, data)

        @self.client.event
        async def connect_error(data: Any) -> None:
            self.connect_error = data

        @self.client.event
        async def connect() -> None:
            self.events_before_connect = len(self.events)

        @self.client.event
        async def disconnect(reason: Any = None) -> None:
            self.disconnected.set()
            await self._record("__disconnect__", reason)

    async def _record(self, event: str, data: Any) -> None:
        async with self._changed:
            self.events.append((event, data))
            self._changed.notify_all()

    async def connect(
        self,
        url: str,
        *,
        auth: Any = None,
        query: str = "",
        transports: tuple[str, ...] = ("websocket",),
        headers: dict[str, str] | None = None,
    ) -> bool:
        """Connect; True on success, False on refusal (see ``connect_error``)."""
        target = url + (f"?{query}" if query else "")
        try:
            await self.client.connect(
                target, auth=auth, transports=list(transports), headers=headers or {}, wait_timeout=10
            )
        except socketio.exceptions.ConnectionError:
            return False
        return True

    async def call(self, event: str, data: Any = None, *, timeout: float = 5.0) -> Any:
        """Emit ``event`` with ``data`` and wait up to ``timeout`` for its ack; the ack's data."""
        return await self.client.call(event, data, timeout=timeout)

    async def wait_for(self, event: str, *, timeout: float = 5.0, count: int = 1) -> Any:
        """The data of the ``count``-th ``event`` received, waiting up to ``timeout``."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: len(self.named(event)) >= count), timeout=timeout)
        return self.named(event)[count - 1]

    def named(self, event: str) -> list[Any]:
        return [data for name, data in self.events if name == event]

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.client.disconnect()
        with contextlib.suppress(Exception):
            await self.client.shutdown()


async def http_json(
    method: str,
    url: str,
    *,
    token: str | None = None,
    json: Any = None,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, dict[str, str]]:
    """One real HTTP request; (status, parsed JSON body or text, headers)."""
    all_headers = dict(headers or {})
    if token is not None:
        all_headers["Authorization"] = f"Bearer {token}"
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, json=json, data=data, headers=all_headers) as resp,
    ):
        text = await resp.text()
        try:
            import json as _json

            body: Any = _json.loads(text)
        except ValueError:
            body = text
        return resp.status, body, dict(resp.headers)


async def publish(url: str, admin_token: str, room: str, event: str, data: Any) -> None:
    """POST /api/publish to the gateway (or proxy) at ``url``; it must be accepted."""
    status, body, _ = await http_json(
        "POST", f"{url}/api/publish", token=admin_token, json={"room": room, "event": event, "data": data}
    )
    assert status == 202, body


async def issue_ticket(url: str, token: str) -> str:
    """POST /ws/ticket to the gateway (or proxy) at ``url`` with ``token``; it must be issued (201)."""
    status, body, _ = await http_json("POST", f"{url}/ws/ticket", token=token)
    assert status == 201, body
    return str(body["ticket"])


async def refused_everywhere(url: str, token: str, reason: str) -> None:
    """``token`` is refused with ``reason`` at every door of the gateway at ``url``:
    a connect (``connect_error`` 4001), ``authenticate`` on a pending socket (ack
    4001) and ``POST /ws/ticket`` (401)."""
    refused = Probe()
    pending = Probe()
    try:
        assert not await refused.connect(url, auth={"token": token}), "connected"
        assert refused.connect_error["data"] == {"code": 4001, "reason": reason}, refused.connect_error
        assert not refused.named("authenticated")
        assert await pending.connect(url, auth={})
        ack = await pending.call("authenticate", {"token": token})
        assert ack == {"ok": False, "error": {"code": 4001, "reason": reason}}, ack
    finally:
        await refused.close()
        await pending.close()
    status, body, _ = await http_json("POST", f"{url}/ws/ticket", token=token)
    assert status == 401 and body["error"]["code"] == reason, (status, body)


Nodes = tuple[GatewayProcess, GatewayProcess]


def start_together(*procs: GatewayProcess, timeout: float = 20) -> None:
    """Start every process, then wait until each listens: the interpreters boot in parallel."""
    for proc in procs:
        proc.start(wait=False)
    for proc in procs:
        assert proc.proc is not None
        wait_for_port(proc.port, proc=proc.proc, timeout=timeout)


@contextlib.contextmanager
def gateway_processes(*procs: GatewayProcess) -> Iterator[tuple[GatewayProcess, ...]]:
    try:
        for proc in procs:
            proc.start()
        yield procs
    finally:
        for proc in procs:
            proc.terminate()


async def wait_subscribed(redis_url: str, count: int, *, channel: str = "socketio", timeout: float = 10.0) -> None:
    """Wait until ``count`` gateways listen on the fan-out channel (Redis PUBSUB NUMSUB):
    only then is an event published by one node sure to reach the others."""

    client = aioredis.Redis.from_url(redis_url)
    try:
        deadline = time.monotonic() + timeout
        while True:
            [(_, subscribers)] = await client.pubsub_numsub(channel)
            if subscribers >= count:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{subscribers} of {count} gateways subscribed to {channel!r} after {timeout}s")
            await asyncio.sleep(0.05)
    finally:
        await client.aclose()


async def metric(url: str, name: str) -> float:
    """The value of an unlabelled sample on the /metrics of the gateway at ``url``."""
    status, text, _ = await http_json("GET", f"{url}/metrics")
    assert status == 200
    return metric_value(text, name)


def metric_value(text: str, name: str) -> float:
    """The value of an unlabelled sample in Prometheus text format."""
    for line in text.splitlines():
        sample, _, value = line.partition(" ")
        if sample == name:
            return float(value)
    raise KeyError(f"no sample {name} in /metrics")


class RawSocketIO:
    """A bare Socket.IO v5 over an Engine.IO v4 WebSocket, driven frame by frame.

    For what a full client hides: the exact frames on the wire, and a client
    that does not answer the server's close.
    """

    def __init__(self) -> None:
        import json  # here, not at the top: http_json's parameter is named json

        self._json = json
        self.session = aiohttp.ClientSession()
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.events: list[tuple[str, Any]] = []  # every Socket.IO event seen, in order

    async def connect(self, url: str, auth: dict[str, Any]) -> tuple[bool, Any]:
        """(True, `authenticated` data) or (False, the refusal's data)."""
        self.ws = await self.session.ws_connect(f"{url}/socket.io/?EIO=4&transport=websocket", autoclose=False)
        opening = await self.frame()
        assert opening.startswith("0{"), opening
        await self.ws.send_str("40" + self._json.dumps(auth))
        # The connect handler emits `authenticated` before python-socketio sends
        # the CONNECT ack ("40{...}"); socket.io clients buffer it until then.
        acked = False
        while not (acked and self.named("authenticated")):
            frame = await self.frame()
            if frame.startswith("44"):
                return False, self._json.loads(frame[2:])["data"]
            acked = acked or frame.startswith("40")
        return True, self.named("authenticated")[0]

    async def until(self, event: str) -> Any:
        """Read frames up to the next ``event``; its data."""
        seen = len(self.named(event))
        while len(self.named(event)) == seen:
            await self.frame()
        return self.named(event)[-1]

    def named(self, event: str) -> list[Any]:
        return [data for name, data in self.events if name == event]

    async def frame(self, timeout: float = 5.0) -> str:
        """The next text frame (Socket.IO events among them are also recorded)."""
        assert self.ws is not None
        message = await self.ws.receive(timeout=timeout)
        assert message.type == aiohttp.WSMsgType.TEXT, message
        text = str(message.data)
        if text.startswith("42"):
            name, *args = self._json.loads(text[2:])
            self.events.append((name, args[0] if args else None))
        return text

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        await self.session.close()


class JwksServer:
    """A trusted issuer over real HTTP on 127.0.0.1: a rotatable ES256 JWKS (kid k1
    to start with) that counts its fetches, and the issuer's token signing.

    ``cache_control``, when set, is sent as the JWKS response's Cache-Control
    header; while ``failing`` is true the JWKS is answered 503 (the issuer is
    up but broken)."""

    def __init__(self) -> None:
        self.keys = [jwk.JWK.generate(kty="EC", crv="P-256", kid="k1")]
        self.fetches = 0
        self.cache_control: str | None = None
        self.failing = False
        app = web.Application()
        app.router.add_get("/jwks.json", self._jwks)
        self.server = TestServer(app, host="127.0.0.1")

    async def _jwks(self, request: web.Request) -> web.Response:
        self.fetches += 1
        if self.failing:
            return web.json_response({"error": "unavailable"}, status=503)
        response = web.json_response({"keys": [k.export_public(as_dict=True) for k in self.keys]})
        if self.cache_control is not None:
            response.headers["Cache-Control"] = self.cache_control
        return response

    async def start(self) -> None:
        await self.server.start_server()

    async def close(self) -> None:
        """Stop serving: the issuer goes down."""
        await self.server.close()

    def rotate(self, kid: str) -> jwk.JWK:
        """Publish only a new key, ``kid``, from now on."""
        key = jwk.JWK.generate(kty="EC", crv="P-256", kid=kid)
        self.keys = [key]
        return key

    @property
    def uri(self) -> str:
        return str(self.server.make_url("/jwks.json"))

    def token(self, key: jwk.JWK | None = None, *, kid: str | None = None, alg: str = "ES256", **claims: Any) -> str:
        """A token as the issuer signs them: ``alg`` (ES256) with ``key`` (default: the
        first one it publishes), ``kid`` (default: the key's own) in the header, for
        sub ivy, valid 300 s; ``claims`` override those (a claim given as None is left out)."""
        key = self.keys[0] if key is None else key
        now = int(time.time())
        payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": "ivy", "iat": now, "exp": now + 300, **claims}
        payload = {name: value for name, value in payload.items() if value is not None}
        pem = key.export_to_pem(private_key=True, password=None)
        return jwt.encode(payload, pem, algorithm=alg, headers={"kid": kid or key["kid"]})


class NodeScript:
    """One ``node`` process running a script of tests/js against a gateway.

    The script reports what it sees as JSON lines on stdout; they are parsed as
    they come into ``lines`` (any other line, such as a page's own
    ``console.log``, is kept as ``{"event": "log", "text": ...}``). Scripts that
    take orders read them from stdin, one per line (``command``).
    """

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[dict[str, Any]] = []
        self._changed = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def launch(cls, script: str, *args: str, env: dict[str, str] | None = None, stdin: bool = False) -> Self:
        proc = await asyncio.create_subprocess_exec(
            which("node"),
            str(JS_DIR / script),
            *args,
            cwd=JS_DIR,  # node resolves socket.io-client and ws from tests/js/node_modules
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "DEBUG": "", **(env or {})},
        )
        return cls(proc)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            text = raw.decode().rstrip("\n")
            try:
                line = json.loads(text)
            except ValueError:
                line = {"event": "log", "text": text}
            async with self._changed:
                self.lines.append(line)
                self._changed.notify_all()

    def matching(self, predicate: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        return [line for line in self.lines if predicate(line)]

    async def wait(
        self, predicate: Callable[[dict[str, Any]], bool], *, count: int = 1, timeout: float = 10.0
    ) -> dict[str, Any]:
        """The ``count``-th line matching ``predicate``, once it has come."""
        async with self._changed:
            await asyncio.wait_for(
                self._changed.wait_for(lambda: len(self.matching(predicate)) >= count), timeout=timeout
            )
        return self.matching(predicate)[count - 1]

    async def command(self, text: str) -> None:
        assert self.proc.stdin is not None, "launched without stdin"
        self.proc.stdin.write(text.encode() + b"\n")
        await self.proc.stdin.drain()

    async def finish(self, timeout: float = 15.0) -> list[dict[str, Any]]:
        """Wait for node to exit by itself; it must exit 0 with nothing on stderr. Every line."""
        async with asyncio.timeout(timeout):
            await self._reader
            status = await self.proc.wait()
        assert self.proc.stderr is not None
        errors = (await self.proc.stderr.read()).decode()
        assert status == 0 and not errors, (status, errors, self.lines)
        return self.lines

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


class JsClient(NodeScript):
    """The official socket.io-client (pinned in tests/js/package.json), run by node
    in one of the scripts of tests/js; launch it with ``connect``, ``deferred`` or
    ``reauth``, and track it with the ``node_scripts`` fixture.

    Every script prints the same two kinds of line. Pseudo-events, what the
    client itself saw or did: ``{"event": "open" | "upgrade" | "connect" |
    "connect_error" | "disconnect" | "sent" | "ack" | "ready" | "timeout", ...}``
    (``seen``); and each event the server emitted, as ``{"event": "emit",
    "name", "args"}`` (``emitted``, ``received``).
    """

    CONNECT_TIMEOUT_MS = 15_000
    DEFERRED_TIMEOUT_MS = 15_000
    REAUTH_TIMEOUT_MS = 20_000

    @classmethod
    async def connect(cls, url: str, **options: Any) -> Self:
        """``node connect.mjs``: connect with ``options`` (auth, query, transports,
        extraHeaders, until, timeoutMs; None leaves one out); node exits 0 once an
        event or pseudo-event named in ``until`` is seen."""
        options = {name: value for name, value in options.items() if value is not None}
        options.setdefault("timeoutMs", cls.CONNECT_TIMEOUT_MS)
        return await cls.launch("connect.mjs", url, json.dumps(options))

    @classmethod
    async def deferred(cls, url: str, scenario: str, token: str = "", transports: str = "polling,websocket") -> Self:
        """``node deferred.mjs``: connect with an empty auth, then ``scenario``
        ("authenticate" with ``token``, or "join-first"); node exits once disconnected."""
        env = {"DEFERRED_TIMEOUT_MS": str(cls.DEFERRED_TIMEOUT_MS)}
        return await cls.launch("deferred.mjs", url, scenario, token, transports, env=env)

    @classmethod
    async def reauth(cls, url: str, token: str, fresh_token: str) -> Self:
        """``node reauth.mjs``: connect with ``token``, rotate the first refresh
        token, and re-authenticate with ``fresh_token`` when told on stdin
        (``command("authenticate")``); ``finish`` tells it to close."""
        env = {"REAUTH_TIMEOUT_MS": str(cls.REAUTH_TIMEOUT_MS)}
        return await cls.launch("reauth.mjs", url, token, fresh_token, env=env, stdin=True)

    @classmethod
    async def recover(cls, url: str, **options: Any) -> Self:
        """``node recover.mjs``: connect with ``options`` (auth or ticket, transports,
        delayMs, timeoutMs) and reconnect by itself; ``command("cut")`` drops its
        transport, ``command("join room:x")`` joins a room; ``finish`` closes it."""
        options = {name: value for name, value in options.items() if value is not None}
        return await cls.launch("recover.mjs", url, json.dumps(options), stdin=True)

    def seen(self, event: str) -> list[dict[str, Any]]:
        """The lines of a pseudo-event (connect, ack, ...), in order."""
        return [line for line in self.lines if line["event"] == event]

    def emitted(self, name: str | None = None) -> list[tuple[str, list[Any]]]:
        """(name, args) of every event the server emitted (or only those called ``name``), in order."""
        return [(line["name"], line["args"]) for line in self.seen("emit") if name in (None, line["name"])]

    def received(self, name: str) -> list[Any]:
        """The first argument of every ``name`` event the server emitted."""
        return [args[0] if args else None for _, args in self.emitted(name)]

    def index(self, predicate: Callable[[dict[str, Any]], bool]) -> int:
        """The position of the first line matching ``predicate``."""
        return next(i for i, line in enumerate(self.lines) if predicate(line))

    async def wait_for(self, event: str, *, timeout: float = 10.0) -> dict[str, Any]:
        """The first line of the pseudo-event ``event``, or of the server event of
        that name, once it has come."""
        return await self.wait(
            lambda line: line["event"] == event or (line["event"] == "emit" and line["name"] == event),
            timeout=timeout,
        )

    async def emit_wait(self, name: str, *, count: int = 1, timeout: float = 5.0) -> Any:
        """The first argument of the ``count``-th ``name`` event, once it has come."""
        line = await self.wait(
            lambda line: line["event"] == "emit" and line["name"] == name, count=count, timeout=timeout
        )
        return line["args"][0] if line["args"] else None

    async def ack(self, name: str, *, timeout: float = 5.0) -> Any:
        """The ack the server gave to the client's ``name`` (``{"error": ...}`` if none came in time)."""
        line = await self.wait(lambda line: line["event"] == "ack" and line["name"] == name, timeout=timeout)
        return line["ack"]

    async def finish(self, timeout: float = 15.0) -> list[dict[str, Any]]:
        """A script that takes orders on stdin is told to close first; then as
        ``NodeScript.finish``: it must exit 0 with nothing on stderr."""
        if self.proc.stdin is not None:
            await self.command("close")
        return await super().finish(timeout)


ScriptT = TypeVar("ScriptT", bound=NodeScript)


class NodeScripts:
    """The node processes of one test, killed at its end if still running."""

    def __init__(self) -> None:
        self.made: list[NodeScript] = []

    async def __call__(self, launching: Awaitable[ScriptT]) -> ScriptT:
        script = await launching
        self.made.append(script)
        return script

    async def stop(self) -> None:
        for script in self.made:
            await script.stop()


async def redis_contents(url: str) -> dict[bytes, list[bytes]]:
    """Every key of the Redis database at ``url`` with every string it holds (members, fields, values)."""
    client = aioredis.Redis.from_url(url)
    try:
        contents: dict[bytes, list[bytes]] = {}
        async for key in client.scan_iter(count=1000):
            kind = (await client.type(key)).decode()
            if kind == "string":
                values = [await client.get(key) or b""]
            elif kind == "hash":
                values = [item for pair in (await client.hgetall(key)).items() for item in pair]
            elif kind == "list":
                values = list(await client.lrange(key, 0, -1))
            elif kind == "set":
                values = list(await client.smembers(key))
            elif kind == "zset":
                values = list(await client.zrange(key, 0, -1))
            elif kind == "stream":
                values = [item for _, fields in await client.xrange(key) for pair in fields.items() for item in pair]
            elif kind == "none":  # expired between SCAN and TYPE
                continue
            else:
                raise AssertionError(f"unexpected Redis type {kind} of {key!r}")
            contents[key] = values
        return contents
    finally:
        await client.aclose()


async def raw_frames(ws: aiohttp.ClientWebSocketResponse, timeout: float = 5) -> tuple[list[Any], int | None]:
    """Every JSON frame until the server's close frame, and that frame's code (what
    a browser's CloseEvent.code reports; aiohttp's own ``close_code`` says 1006
    because the server drops TCP right after its close frame)."""
    frames = []
    async with asyncio.timeout(timeout):
        while True:
            message = await ws.receive()
            if message.type == aiohttp.WSMsgType.TEXT:
                frames.append(json.loads(message.data))
            elif message.type == aiohttp.WSMsgType.CLOSE:
                return frames, int(message.data)
            else:
                return frames, None
