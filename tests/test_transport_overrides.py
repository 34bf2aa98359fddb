"""The places where handlers/transport.py overrides aiohttp internals. setup.cfg
pins aiohttp to the tested minor; these tests fail loudly when an upgrade
changes what is overridden, before a slow client gets through unnoticed."""

from __future__ import annotations

import inspect
from importlib.metadata import version

from aiohttp import web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_exceptions import LineTooLong
from aiohttp.test_utils import TestServer
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_runner import BaseRunner

from gateway.app import create_app, create_runner
from gateway.config import load_config
from handlers.transport import DeadlineRequestHandler, DeadlineServer


def parameters(function: object) -> list[str]:
    return list(inspect.signature(function).parameters)  # type: ignore[arg-type]


def test_aiohttp_is_the_pinned_minor() -> None:
    """setup.cfg pins what these tests were written against; an upgrade starts here."""
    assert version("aiohttp").startswith("3.14."), version("aiohttp")


def test_the_overridden_protocol_methods_keep_their_shape() -> None:
    assert parameters(RequestHandler.connection_made) == ["self", "transport"]
    assert parameters(RequestHandler.data_received) == ["self", "data"]
    assert parameters(RequestHandler.connection_lost) == ["self", "exc"]
    assert parameters(RequestHandler.handle_error) == ["self", "request", "status", "exc", "message"]
    init = parameters(RequestHandler.__init__)
    assert init[:2] == ["self", "manager"]
    assert {"loop", "keepalive_timeout", "max_line_size", "max_field_size", "lingering_time"} <= set(init)
    # The state the deadlines read or set, all kept by aiohttp itself.
    slots = set(RequestHandler.__slots__) | set(BaseProtocol.__slots__)
    expected = {"_messages", "_payload_parser", "_upgraded", "_request_count", "_request_in_progress"}
    assert expected | {"_lingering_time", "_loop", "max_line_size", "max_field_size"} <= slots


def test_what_the_deadlines_rely_on_in_aiohttps_code() -> None:
    received = inspect.getsource(RequestHandler.data_received)
    # Every parsed head is counted and queued with its body (a StreamReader).
    for line in ("self._request_count += 1", "self._messages.append((msg, payload))"):
        assert line in received, line
    handling = inspect.getsource(RequestHandler._handle_request)
    assert "self._request_in_progress = True" in handling
    assert "self._request_in_progress = False" in handling
    # The lingering time is read per request, after the handler: setting it to 0 takes effect.
    assert "lingering_time = self._lingering_time" in inspect.getsource(RequestHandler.start)
    # Parser refusals reach handle_error with the parser's exception.
    assert "self.handle_error(" in inspect.getsource(RequestHandler._make_error_handler)
    # Which limit a LineTooLong passed is its second argument.
    assert LineTooLong(b"line", 8190).args[1] == 8190


def test_the_protocol_factory_keeps_its_shape() -> None:
    assert parameters(web.Server.__init__) == [
        "self",
        "handler",
        "request_factory",
        "handler_cancellation",
        "loop",
        "kwargs",
    ]
    assert "RequestHandler(self, loop=self._loop, **self._kwargs)" in inspect.getsource(web.Server.__call__)
    # AppRunner builds its Server in _make_server, which setup() calls; sites serve runner.server.
    assert inspect.iscoroutinefunction(web.AppRunner._make_server)
    assert "self._server = await self._make_server()" in inspect.getsource(BaseRunner.setup)
    assert "self._runner.server" in inspect.getsource(web.TCPSite.start)
    # The tests' in-process servers (tests/support.py GatewayTestServer) hook in here.
    assert parameters(TestServer._make_runner) == ["self", "kwargs"]


async def test_create_runner_builds_deadline_protocols_with_the_configured_limits() -> None:
    config = load_config(environ={}, flags={"keepalive_timeout": 7, "header_timeout": 3, "body_timeout": 4})
    runner = create_runner(create_app(config), config)
    await runner.setup()
    try:
        server = runner.server
        assert isinstance(server, DeadlineServer)
        protocol = server()
        assert isinstance(protocol, DeadlineRequestHandler)
        assert protocol.keepalive_timeout == 7
        assert (protocol._header_timeout, protocol._body_timeout) == (3, 4)
        assert protocol.max_field_size == 16 * 1024
    finally:
        await runner.cleanup()
