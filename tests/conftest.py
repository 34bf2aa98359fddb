"""Fixtures: fresh apps from the factory, both engines, real Redis, real clients."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web

from gateway import keys
from gateway.app import create_app
from gateway.config import Config, load_config
from gateway.store import PREFIX, MemoryStore
from gateway.store import keys as store_keys
from tests.support import (
    GatewayProcess,
    GatewayTestServer,
    JwksServer,
    NodeScripts,
    Probe,
    RedisCluster,
    RedisSentinel,
    RedisServer,
    http_json,
    issue_ticket,
    keygen,
    publish,
    write_toml,
)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A real three-master Redis Cluster shared by the session: ``flush()`` it first; a
    test that stops a master starts it again (in a ``finally``)."""
    cluster = RedisCluster(tmp_path_factory.mktemp("redis-cluster"))
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisSentinel]:
    """A real Redis master watched by a real Sentinel, shared by the session: ``flush()`` it first."""
    sentinel = RedisSentinel(tmp_path_factory.mktemp("redis-sentinel"))
    sentinel.start()
    yield sentinel
    sentinel.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test alone: the test may stop and restart it (same port)."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def cluster_keys() -> dict[str, str]:
    """signing_key and secret from the real `ticketgate keygen`."""
    return keygen()


@pytest.fixture(params=["memory", "redis"])
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def settings(engine: str, request: pytest.FixtureRequest, cluster_keys: dict[str, str]) -> dict[str, Any]:
    """Settings for one gateway of the parametrized engine (as flags: highest precedence)."""
    values: dict[str, Any] = {**cluster_keys, "admin_token": "admin-token-for-tests-0123456789"}
    if engine == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        server.flush()
        values["redis_url"] = server.url
    return values


@dataclass
class Gateway:
    """An in-process gateway built by create_app and served on a real port."""

    app: web.Application
    server: GatewayTestServer

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    @property
    def config(self) -> Config:
        return self.app[keys.config]

    def jwks(self) -> dict[str, Any]:
        return self.app[keys.tokens].jwks

    def mint(self, sub: str = "alice", **kwargs: Any) -> str:
        return self.app[keys.tokens].mint(sub, **kwargs)[0]

    async def publish(self, room: str, event: str, data: Any) -> None:
        await publish(self.url, self.config.admin_token, room, event, data)

    async def disconnect_user(self, sub: str, *, revoke: bool) -> tuple[int, Any]:
        """POST /api/users/{sub}/disconnect as the admin: (status, body)."""
        url = f"{self.url}/api/users/{sub}/disconnect"
        status, body, _ = await http_json("POST", url, token=self.config.admin_token, json={"revokeTokens": revoke})
        return status, body

    async def upstream(self) -> list[tuple[str, dict[str, str]]]:
        """Every entry of the upstream stream (tg:upstream), oldest first, as a consumer reads it."""
        store = self.app[keys.store]
        if isinstance(store, MemoryStore):
            return store.read_stream(store_keys.UPSTREAM)
        client = aioredis.Redis.from_url(str(self.config.redis_url), decode_responses=True)
        try:
            return [(entry_id, dict(fields)) for entry_id, fields in await client.xrange(PREFIX + store_keys.UPSTREAM)]
        finally:
            await client.aclose()

    async def ticket(self, sub: str = "alice", **mint: Any) -> str:
        return await issue_ticket(self.url, self.mint(sub, **mint))


MakeGateway = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def make_gateway(settings: dict[str, Any]) -> AsyncIterator[MakeGateway]:
    servers: list[GatewayTestServer] = []

    async def make(**overrides: Any) -> Gateway:
        config = load_config(environ={}, flags={**settings, **overrides})
        app = create_app(config)
        server = GatewayTestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return Gateway(app=app, server=server)

    yield make
    for server in reversed(servers):
        await server.close()


@pytest.fixture
async def gateway(make_gateway: MakeGateway) -> Gateway:
    return await make_gateway()


@pytest.fixture
async def probes() -> AsyncIterator[Callable[[], Probe]]:
    made: list[Probe] = []

    def make() -> Probe:
        probe = Probe()
        made.append(probe)
        return probe

    yield make
    for probe in made:
        await probe.close()


@pytest.fixture
async def node_scripts() -> AsyncIterator[NodeScripts]:
    """Track node processes: ``client = await node_scripts(JsClient.connect(url, ...))``."""
    scripts = NodeScripts()
    yield scripts
    await scripts.stop()


@pytest.fixture
async def jwks_server() -> AsyncIterator[JwksServer]:
    """A trusted issuer serving its JWKS over real HTTP (fetched on the gateway's first need)."""
    server = JwksServer()
    await server.start()
    yield server
    await server.close()


@pytest.fixture
def gateway_process(tmp_path: Path) -> Iterator[Callable[..., GatewayProcess]]:
    """Factory of real gateway processes; each is SIGTERMed at teardown."""
    made: list[GatewayProcess] = []

    def make(settings: dict[str, Any], *, name: str = "node", extra_args: tuple[str, ...] = ()) -> GatewayProcess:
        config_file = write_toml(tmp_path / f"{name}-{len(made)}.toml", settings)
        proc = GatewayProcess(
            config_file=config_file, log_file=tmp_path / f"{name}-{len(made)}.log", extra_args=extra_args
        )
        made.append(proc)
        return proc

    yield make
    for proc in made:
        proc.terminate()
