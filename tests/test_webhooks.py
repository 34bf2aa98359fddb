"""gateway/webhooks.py: signed deliveries to a real aiohttp receiver, retries,
give-ups, a hanging receiver, the bounded queue, the backoff schedule; and the
[[webhooks]] settings."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import random
import re
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway import __version__, keys
from gateway.app import create_app
from gateway.config import WebhookConfig, load_config
from gateway.errors import ConfigError
from gateway.formats import iso_z
from gateway.metrics import Metrics
from gateway.webhooks import (
    ATTEMPT_TIMEOUT,
    CONCURRENCY,
    MAX_DELAY,
    MAX_QUEUED,
    SIGNATURE_HEADER,
    Webhooks,
    retry_delay,
)
from tests.support import ROOT, Clock, GatewayTestServer, free_port, http_json, metric_value, write_toml

SECRET = "whsec-for-the-tests-0123456789"
OTHER_SECRET = "another-whsec-for-the-tests-42"
EVERY_EVENT = ["user.online", "user.offline", "room.occupied", "room.vacated", "user.joined", "user.left"]


def docs_verify() -> Callable[..., bool]:
    """The `verify` function of docs/webhooks.md, run as the docs show it."""
    text = (ROOT / "docs" / "webhooks.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "def verify(" in b]
    assert len(blocks) == 1
    namespace: dict[str, Any] = {}
    exec(blocks[0], namespace)
    return namespace["verify"]


verify = docs_verify()


@dataclass
class Received:
    at: float  # time.monotonic() when it arrived
    headers: dict[str, str]
    body: bytes
    verified: bool

    @property
    def event(self) -> dict[str, Any]:
        return json.loads(self.body)

    @property
    def t(self) -> int:
        return int(dict(p.split("=", 1) for p in self.headers[SIGNATURE_HEADER].split(","))["t"])


Respond = Callable[[dict[str, Any], int], int | None]


@dataclass
class Receiver:
    """A webhook receiver over real HTTP on 127.0.0.1 (a free port): it checks
    every request's signature with the docs' `verify` (a bad one: 401), records
    it, and answers ``respond(event, n)`` (n: earlier requests with the event's
    id), or never answers while that is None (until the test ends)."""

    secret: str = SECRET
    respond: Respond = lambda event, n: 200
    path: str = "/hooks/ticketgate?token=receiver-url-token"
    requests: list[Received] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0

    def __post_init__(self) -> None:
        self._release = asyncio.Event()
        self._changed = asyncio.Event()
        app = web.Application()
        app.router.add_post("/hooks/ticketgate", self._handle)
        self.server = TestServer(app, host="127.0.0.1")

    @property
    def url(self) -> str:
        return str(self.server.make_url("/")).rstrip("/") + self.path

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        ok = verify(self.secret, body, request.headers.get(SIGNATURE_HEADER, ""))
        event = json.loads(body)
        n = sum(1 for r in self.requests if r.event["id"] == event["id"])
        self.requests.append(Received(time.monotonic(), dict(request.headers), body, ok))
        self._changed.set()
        if not ok:
            return web.Response(status=401)
        status = self.respond(event, n)
        if status is None:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            try:
                await self._release.wait()
            finally:
                self.in_flight -= 1
            status = 200
        return web.Response(status=status)

    def ids(self) -> list[str]:
        return [r.event["id"] for r in self.requests]

    async def until(self, count: int, timeout: float = 5.0) -> list[Received]:
        async with asyncio.timeout(timeout):
            while len(self.requests) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.requests

    async def start(self) -> None:
        await self.server.start_server()

    async def close(self) -> None:
        self._release.set()
        await self.server.close()


@pytest.fixture
async def receivers() -> AsyncIterator[Callable[..., Awaitable[Receiver]]]:
    made: list[Receiver] = []

    async def make(**kwargs: Any) -> Receiver:
        receiver = Receiver(**kwargs)
        await receiver.start()
        made.append(receiver)
        return receiver

    yield make
    for receiver in made:
        await receiver.close()


@pytest.fixture
async def services() -> AsyncIterator[Callable[..., Awaitable[Webhooks]]]:
    made: list[Webhooks] = []

    async def make(hooks: list[WebhookConfig], **kwargs: Any) -> Webhooks:
        kwargs.setdefault("max_attempts", 8)
        kwargs.setdefault("metrics", Metrics())
        service = Webhooks(hooks=hooks, **kwargs)
        await service.start()
        made.append(service)
        return service

    yield make
    for service in made:
        await service.stop()


def hook(receiver: Receiver | str, *events: str, secret: str = SECRET) -> WebhookConfig:
    url = receiver if isinstance(receiver, str) else receiver.url
    return WebhookConfig(url=url, secret=secret, events=events or ("user.online",))


def deliveries(metrics: Metrics, result: str) -> float:
    value = metrics.registry.get_sample_value("ticketgate_webhook_deliveries_total", {"result": result})
    assert value is not None
    return value


def attempts(metrics: Metrics, outcome: str) -> float:
    value = metrics.registry.get_sample_value("ticketgate_webhook_attempts_total", {"outcome": outcome})
    assert value is not None
    return value


def queued(metrics: Metrics) -> float:
    value = metrics.registry.get_sample_value("ticketgate_webhook_queued_deliveries")
    assert value is not None
    return value


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


# --- the backoff schedule ---------------------------------------------------


def test_retry_delay_bounds_double_from_two_seconds_up_to_five_minutes() -> None:
    """The bound of the wait after the n-th failure: 2 s, then double each time, capped at 300 s."""
    bounds = [retry_delay(n, rand=lambda: 1.0) for n in range(1, 13)]
    assert bounds == [2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300, 300]
    assert MAX_DELAY == 300
    assert retry_delay(10_000, rand=lambda: 1.0) == 300  # no overflow however many
    assert [retry_delay(n, rand=lambda: 0.0) for n in (1, 5, 50)] == [0, 0, 0]
    with pytest.raises(ValueError):
        retry_delay(0)


def test_retry_delay_jitter_stays_within_bounds_and_roughly_doubles() -> None:
    """Full jitter: every draw in [0, bound); the mean doubles with each failure; draws are spread."""
    rng = random.Random(15)
    means = []
    for n in range(1, 10):
        bound = min(300.0, 2.0 * 2 ** (n - 1))
        draws = [retry_delay(n, rand=rng.random) for _ in range(4000)]
        assert all(0 <= d < bound for d in draws)
        assert statistics.pstdev(draws) > bound / 5  # spread over the range, not a constant
        means.append(statistics.fmean(draws))
    assert means[0] <= 2 and 0.8 < means[0] < 1.2
    for before, after in itertools.pairwise(means[:8]):
        assert 1.7 < after / before < 2.3
    assert 140 < means[8] < 160  # capped: half of 300
    # The real random source too: the first retry within 2 s, always.
    assert all(0 <= retry_delay(1) < 2 for _ in range(1000))


# --- deliveries ---------------------------------------------------------------


async def test_a_delivery_is_signed_and_shaped_as_documented(receivers: Any, services: Any) -> None:
    receiver = await receivers()
    other = await receivers(secret=OTHER_SECRET)
    clock = Clock(time.time())
    metrics = Metrics()
    service = await services(
        [hook(receiver, "user.online", "user.offline"), hook(other, "room.occupied", secret=OTHER_SECRET)],
        metrics=metrics,
        clock=clock,
    )

    event_id = service.submit("user.online", {"sub": "alice"})
    assert service.submit("user.left", {"room": "room:lobby", "sub": "alice"}) is None  # nobody subscribes
    assert service.wants("room.occupied") and not service.wants("user.left")
    room_id = service.submit("room.occupied", {"room": "room:lobby"})
    (got,) = await receiver.until(1)
    (got_room,) = await other.until(1)

    assert got.verified and got_room.verified
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["User-Agent"].startswith("ticketgate/") and __version__ in got.headers["User-Agent"]
    assert list(got.event) == ["id", "type", "time", "data"]
    assert got.event == {"id": event_id, "type": "user.online", "time": iso_z(clock.now), "data": {"sub": "alice"}}
    assert uuid.UUID(got.event["id"]) and got.event["id"] != room_id
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", got.event["time"])
    assert got.t == int(clock.now)
    assert got_room.event["data"] == {"room": "room:lobby"} and got_room.event["id"] == room_id
    await until(lambda: deliveries(metrics, "delivered") == 2)
    assert queued(metrics) == 0 and attempts(metrics, "ok") == 2

    # The docs' verify refuses what it must: another secret, a changed body, a t out of tolerance.
    header = got.headers[SIGNATURE_HEADER]
    assert verify(SECRET, got.body, header, now=clock.now)
    assert not verify(OTHER_SECRET, got.body, header, now=clock.now)
    assert not verify(SECRET, got.body + b" ", header, now=clock.now)
    assert not verify(SECRET, got.body, header, now=clock.now + 301)
    assert not verify(SECRET, got.body, header, now=clock.now - 301)
    assert verify(SECRET, got.body, header, now=clock.now + 299)
    assert not verify(SECRET, got.body, "garbage")
    assert not verify(SECRET, got.body, header.replace(f"t={got.t},", f"t={got.t + 1},"), now=clock.now)

    # An event id and time the caller chose.
    service.submit("user.offline", {"sub": "alice"}, event_id="evt-42", at=0)
    (_, late) = await receiver.until(2)
    assert late.event["id"] == "evt-42" and late.event["time"] == "1970-01-01T00:00:00Z"
    with pytest.raises(ValueError):
        service.submit("user.renamed", {})


async def test_a_signature_out_of_tolerance_is_refused_by_the_receiver(receivers: Any, services: Any) -> None:
    """A gateway clock 10 minutes behind: the receiver's tolerance check refuses (401), and it is retried."""
    receiver = await receivers()
    metrics = Metrics()
    service = await services(
        [hook(receiver)], metrics=metrics, clock=lambda: time.time() - 600, delay=lambda n: 0.01, max_attempts=2
    )
    service.submit("user.online", {"sub": "alice"})
    await until(lambda: deliveries(metrics, "failed") == 1)
    assert [r.verified for r in receiver.requests] == [False, False]
    assert attempts(metrics, "status") == 2


async def test_retried_after_500s_until_success_with_the_same_id_and_body(receivers: Any, services: Any) -> None:
    receiver = await receivers(respond=lambda event, n: [500, 503, 500][n] if n < 3 else 204)
    clock = Clock(time.time())
    waits: list[int] = []

    def delay(failed: int) -> float:
        waits.append(failed)
        clock.now += 7  # each attempt at a later time: its own t and signature
        return 0.02

    metrics = Metrics()
    service = await services([hook(receiver)], metrics=metrics, clock=clock, delay=delay)
    event_id = service.submit("user.online", {"sub": "alice"})
    got = await receiver.until(4)
    await until(lambda: deliveries(metrics, "delivered") == 1)

    assert receiver.ids() == [event_id] * 4
    assert len({r.body for r in got}) == 1  # byte-identical, "time" included
    assert [r.t for r in got] == [int(clock.now) - 21, int(clock.now) - 14, int(clock.now) - 7, int(clock.now)]
    assert len({r.headers[SIGNATURE_HEADER] for r in got}) == 4 and all(r.verified for r in got)
    assert waits == [1, 2, 3]
    assert (attempts(metrics, "status"), attempts(metrics, "ok")) == (3, 1)
    assert (deliveries(metrics, "failed"), queued(metrics)) == (0, 0)
    await asyncio.sleep(0.1)
    assert len(receiver.requests) == 4  # a 2xx ends it


async def test_given_up_after_max_attempts_counted_and_logged_without_secrets(
    receivers: Any, services: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="gateway.webhooks")
    receiver = await receivers(respond=lambda event, n: 500)
    dead_port = free_port()  # nothing listens there: connection refused
    dead = f"http://127.0.0.1:{dead_port}/hooks/ticketgate?token=dead-url-token"
    metrics = Metrics()
    service = await services(
        [hook(receiver, "user.offline"), hook(dead, "user.offline", secret=OTHER_SECRET)],
        metrics=metrics,
        max_attempts=3,
        delay=lambda n: 0.02,
    )
    marker = "body-marker-that-must-not-be-logged"
    event_id = service.submit("user.offline", {"sub": marker})
    await until(lambda: deliveries(metrics, "failed") == 2)
    await asyncio.sleep(0.2)

    assert receiver.ids() == [event_id] * 3  # exactly webhook_max_attempts, then no more
    assert (attempts(metrics, "status"), attempts(metrics, "error")) == (3, 3)
    assert (deliveries(metrics, "delivered"), queued(metrics)) == (0, 0)

    ours = [r for r in caplog.records if r.name == "gateway.webhooks"]
    warnings = [r.getMessage() for r in ours if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    host = receiver.url.split("/")[2]
    (to_receiver,) = [w for w in warnings if host in w]
    (to_dead,) = [w for w in warnings if f"127.0.0.1:{dead_port}" in w]
    assert "3 attempts" in to_receiver and "HTTP 500" in to_receiver
    assert "ClientConnectorError" in to_dead
    for line in (to_receiver, to_dead):
        assert "user.offline" in line and event_id in line
    assert len([r for r in ours if r.levelno == logging.DEBUG]) == 4  # the attempts before the last
    logged = caplog.text + "".join(str(r.args) for r in caplog.records)
    for secret in (SECRET, OTHER_SECRET, marker, "receiver-url-token", "dead-url-token", "/hooks/ticketgate"):
        assert secret not in logged


async def test_a_hanging_receiver_delays_neither_the_caller_nor_another_hook(receivers: Any, services: Any) -> None:
    """A receiver that never answers: submit returns at once, the other hook gets its
    events at once, and each attempt to the hanging one times out after 5 s."""
    assert ATTEMPT_TIMEOUT == 5 and CONCURRENCY == 4
    hanging = await receivers(respond=lambda event, n: None)
    healthy = await receivers()
    metrics = Metrics()
    service = await services([hook(hanging), hook(healthy)], metrics=metrics, max_attempts=1)
    assert not asyncio.iscoroutinefunction(service.submit)

    started = time.monotonic()
    first = service.submit("user.online", {"sub": "alice"})
    submitted = time.monotonic() - started
    await hanging.until(1)
    await healthy.until(1)
    assert healthy.ids() == [first]
    assert healthy.requests[0].at - started < 1.0

    # While the hanging receiver holds all its workers, many more events: the
    # caller is not slowed, and the healthy hook gets them all promptly.
    for n in range(3):
        service.submit("user.online", {"sub": f"u{n}"})
    await hanging.until(4)
    started_many = time.monotonic()
    for n in range(200):
        service.submit("user.online", {"sub": f"v{n}"})
    many = time.monotonic() - started_many
    await healthy.until(204)
    assert time.monotonic() - started < ATTEMPT_TIMEOUT  # all before the first hanging attempt ended
    assert submitted < 0.05 and many < 0.5
    assert hanging.most_in_flight == CONCURRENCY  # 4 workers, the rest queued

    await until(lambda: attempts(metrics, "timeout") >= 1, timeout=8)
    elapsed = time.monotonic() - started
    assert ATTEMPT_TIMEOUT - 0.5 < elapsed < ATTEMPT_TIMEOUT + 2
    assert deliveries(metrics, "failed") >= 1 and deliveries(metrics, "delivered") == 204


async def test_a_retry_waiting_for_its_backoff_holds_no_worker(receivers: Any, services: Any) -> None:
    """One worker: an event whose retry waits 1 s does not hold back the next event."""
    receiver = await receivers(respond=lambda event, n: 500 if event["data"]["sub"] == "first" and n == 0 else 200)
    service = await services([hook(receiver)], concurrency=1, delay=lambda n: 1.0)
    first = service.submit("user.online", {"sub": "first"})
    await receiver.until(1)
    second = service.submit("user.online", {"sub": "second"})
    await receiver.until(2)
    assert receiver.ids() == [first, second]
    assert receiver.requests[1].at - receiver.requests[0].at < 0.5
    await receiver.until(3)
    assert receiver.ids() == [first, second, first]
    assert receiver.requests[2].at - receiver.requests[0].at >= 0.9


async def test_a_full_queue_drops_and_counts(receivers: Any, services: Any, caplog: pytest.LogCaptureFixture) -> None:
    assert MAX_QUEUED == 10_000
    caplog.set_level(logging.WARNING, logger="gateway.webhooks")
    hanging = await receivers(respond=lambda event, n: None)
    healthy = await receivers()
    metrics = Metrics()
    service = await services([hook(hanging), hook(healthy)], metrics=metrics, concurrency=1, max_queued=5, timeout=30)
    ids = [service.submit("user.online", {"sub": f"u{n}"}) for n in range(5)]
    await healthy.until(5)  # the other hook's queue empties, the hanging one's stays full
    await hanging.until(1)
    ids += [service.submit("user.online", {"sub": f"u{n}"}) for n in range(5, 8)]
    assert all(ids)
    await healthy.until(8)
    assert healthy.ids() == ids
    assert deliveries(metrics, "dropped") == 3
    await until(lambda: queued(metrics) == 5)
    (line,) = [r.getMessage() for r in caplog.records if "full" in r.getMessage()]  # one line, not one per event
    assert hanging.url.split("/")[2] in line and ids[5] in line and SECRET not in line


async def test_stop_abandons_what_is_pending_with_a_log_line(receivers: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.webhooks")
    hanging = await receivers(respond=lambda event, n: None)
    metrics = Metrics()
    service = Webhooks(hooks=[hook(hanging)], max_attempts=8, metrics=metrics, concurrency=1, timeout=30)
    await service.start()
    for n in range(3):
        service.submit("user.online", {"sub": f"u{n}"})
    await hanging.until(1)
    assert service.pending == 3

    started = time.monotonic()
    await service.stop()
    assert time.monotonic() - started < 1  # does not wait for the receiver
    assert [r.getMessage() for r in caplog.records if r.name == "gateway.webhooks"] == [
        "webhooks stopped: 3 pending deliveries abandoned"
    ]
    assert (service.pending, queued(metrics)) == (0, 0)
    assert service.submit("user.online", {"sub": "late"}) is None
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("webhook-")]


# --- wiring -------------------------------------------------------------------


async def test_create_app_runs_the_configured_hooks_and_shows_the_metrics(receivers: Any) -> None:
    receiver = await receivers()
    config = load_config(
        environ={}, flags={"webhooks": [{"url": receiver.url, "secret": SECRET, "events": ["user.online"]}]}
    )
    app = create_app(config)
    server = GatewayTestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        event_id = app[keys.webhooks].submit("user.online", {"sub": "alice"})
        (got,) = await receiver.until(1)
        assert got.verified and got.event["id"] == event_id
        url = str(server.make_url("/metrics"))
        await until(lambda: queued(app[keys.metrics]) == 0)
        status, text, _ = await http_json("GET", url)
        assert status == 200
        assert metric_value(text, 'ticketgate_webhook_deliveries_total{result="delivered"}') == 1
        assert metric_value(text, 'ticketgate_webhook_deliveries_total{result="dropped"}') == 0
        assert metric_value(text, "ticketgate_webhook_queued_deliveries") == 0
    finally:
        await server.close()
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("webhook-")]


async def test_without_hooks_nothing_runs() -> None:
    app = create_app(load_config(environ={}, flags={}))
    server = GatewayTestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        webhooks = app[keys.webhooks]
        assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("webhook-")]
        assert webhooks._session is None
        assert webhooks.submit("user.online", {"sub": "alice"}) is None and webhooks.pending == 0
    finally:
        await server.close()


# --- settings -----------------------------------------------------------------


def test_webhook_settings_from_toml_and_env(tmp_path: Path) -> None:
    config = load_config(environ={})
    assert (config.webhooks, config.webhook_max_attempts) == ((), 8)

    file = tmp_path / "hooks.toml"
    file.write_text(
        "webhook_max_attempts = 3\n"
        "[[webhooks]]\n"
        'url = "https://backend.example.com/events?token=x"\n'
        f'secret = "{SECRET}"\n'
        'events = ["user.online", "user.offline", "user.online"]\n'
        "[[webhooks]]\n"
        'url = "http://127.0.0.1:9000/hook"\n'
        f'secret = "{OTHER_SECRET}"\n'
        f"events = {json.dumps(EVERY_EVENT)}\n"
    )
    config = load_config(file=file, environ={})
    assert config.webhook_max_attempts == 3
    first, second = config.webhooks
    assert first == WebhookConfig(
        url="https://backend.example.com/events?token=x", secret=SECRET, events=("user.online", "user.offline")
    )
    assert second.events == tuple(EVERY_EVENT)
    assert SECRET not in repr(config) and OTHER_SECRET not in repr(first) + repr(second)

    env = {
        "TICKETGATE_WEBHOOKS": json.dumps(
            [{"url": "https://b.example/h", "secret": SECRET, "events": ["room.vacated"]}]
        ),
        "TICKETGATE_WEBHOOK_MAX_ATTEMPTS": "12",
    }
    config = load_config(file=file, environ=env)  # the environment replaces the file's list whole
    assert [(h.url, h.events) for h in config.webhooks] == [("https://b.example/h", ("room.vacated",))]
    assert config.webhook_max_attempts == 12
    assert load_config(environ={"TICKETGATE_WEBHOOKS": ""}).webhooks == ()
    via_toml = write_toml(tmp_path / "none.toml", {"webhook_max_attempts": 1})
    assert load_config(file=via_toml, environ={}).webhook_max_attempts == 1


@pytest.mark.parametrize(
    ("settings", "names"),
    [
        ({"webhooks": [{"url": "ftp://b.example/h", "secret": SECRET, "events": ["user.online"]}]}, "webhooks.0.url"),
        ({"webhooks": [{"url": "not a url", "secret": SECRET, "events": ["user.online"]}]}, "webhooks.0.url"),
        ({"webhooks": [{"url": "https://b.example/h", "secret": "short-secret", "events": ["user.online"]}]}, "secret"),
        ({"webhooks": [{"url": "https://b.example/h", "events": ["user.online"]}]}, "webhooks.0.secret"),
        ({"webhooks": [{"secret": SECRET, "events": ["user.online"]}]}, "webhooks.0.url"),
        ({"webhooks": [{"url": "https://b.example/h", "secret": SECRET, "events": []}]}, "webhooks.0.events"),
        ({"webhooks": [{"url": "https://b.example/h", "secret": SECRET}]}, "webhooks.0.events"),
        ({"webhooks": [{"url": "https://b.example/h", "secret": SECRET, "events": ["user.typing"]}]}, "events"),
        ({"webhooks": [{"url": "https://b.example/h", "secret": SECRET, "events": ["user.online"], "x": 1}]}, "x"),
        (
            {"webhooks": [{"url": "https://b.example/h", "secret": 1234567890123456789, "events": ["user.online"]}]},
            "secret",
        ),
        ({"webhook_max_attempts": 0}, "webhook_max_attempts"),
        ({"webhook_max_attempts": "many"}, "webhook_max_attempts"),
    ],
)
def test_bad_webhook_settings_are_refused_without_echoing_secrets(settings: dict[str, Any], names: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_config(environ={}, flags=settings)
    message = str(refused.value)
    assert message.startswith("webhooks") or message.startswith("webhook_max_attempts")
    assert names in message
    assert SECRET not in message and "short-secret" not in message


def test_webhooks_from_env_must_be_a_json_array_of_objects() -> None:
    for value in ("https://b.example/h", '[{"url": "https://b.example/h", "secret": "x"'):
        with pytest.raises(ConfigError) as refused:
            load_config(environ={"TICKETGATE_WEBHOOKS": value})
        assert "webhooks" in str(refused.value).lower()
