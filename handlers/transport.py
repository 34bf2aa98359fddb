"""HTTP/1.1 connections: deadlines for slow clients, and the JSON error shape
for what aiohttp answers by itself.

aiohttp closes a keep-alive connection that idles past ``keepalive_timeout``,
but it sets no limit on how long a request's head or body may take to arrive:
a client that connected and sent nothing, trickled one header line every few
seconds (slow-loris), or a byte of body at a time, held its connection and
buffers for as long as it liked. ``DeadlineRequestHandler`` adds the two
missing limits:

* **head**: a request's head (request line and headers) must be complete
  ``header_timeout`` seconds after its first byte; for the first request of a
  connection, after the connection opened (a client that sends nothing is
  closed then). Between requests, aiohttp's ``keepalive_timeout`` applies.
* **body**: a request's body must be complete ``body_timeout`` seconds after
  its head. A handler reading it then gets 408 (answered in the JSON shape)
  and the connection closes after that answer.

Neither limit touches a running handler: a long-poll that waits 25 s for
events and a WebSocket that lives for hours have a complete head and no body.

aiohttp answers what its parser refuses (an oversized request line or header,
a malformed request) by itself, with a text body that repeats up to 100 bytes
of the request, which may be a ticket or a Bearer token. ``handle_error``
answers those in the PROTOCOL §2 shape without any of the request's bytes.

The hooks are aiohttp's own protocol methods (``connection_made``,
``data_received``, ``connection_lost``, ``handle_error``), attributes they keep
(``_messages``, ``_payload_parser``, ``_upgraded``, ``_request_in_progress``,
``_lingering_time``, ``_request_count``) and ``Server.__call__``, which builds
the protocol: aiohttp is pinned to the tested minor range in setup.cfg, and
tests/test_transport_overrides.py fails loudly when their shape changes.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod, HttpProcessingError, LineTooLong
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler

from handlers.http import error_response, http_error_code

logger = logging.getLogger(__name__)


class DeadlineRequestHandler(RequestHandler):
    """aiohttp's protocol for one connection, with deadlines for a request's head and body."""

    __slots__ = ("_body", "_body_deadline", "_body_timeout", "_head_deadline", "_header_timeout")

    def __init__(self, manager: web.Server, *, header_timeout: float, body_timeout: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._header_timeout = header_timeout
        self._body_timeout = body_timeout
        self._head_deadline: asyncio.TimerHandle | None = None
        self._body_deadline: asyncio.TimerHandle | None = None
        self._body: StreamReader | None = None  # the body being received, until its end arrives

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._head_deadline = self._loop.call_later(self._header_timeout, self._head_timed_out)

    def data_received(self, data: bytes) -> None:
        # HTTP bytes between two requests (no body pending, not upgraded) start a head.
        awaiting_head = (
            self._payload_parser is None and not self._upgraded and (self._body is None or self._body.is_eof())
        )
        if data and awaiting_head and self._head_deadline is None:
            self._head_deadline = self._loop.call_later(self._header_timeout, self._head_timed_out)
        parsed = self._request_count
        super().data_received(data)
        if self._body is not None and self._body.is_eof():
            self._clear_body_deadline()
        if self._request_count != parsed:  # one head (or more, pipelined) is complete
            if self._head_deadline is not None:
                self._head_deadline.cancel()
                self._head_deadline = None
            body = self._messages[-1][1] if self._messages else None
            if body is not None and not body.is_eof():
                self._clear_body_deadline()
                self._body = body
                self._body_deadline = self._loop.call_later(self._body_timeout, self._body_timed_out)

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None
        self._clear_body_deadline()

    def _clear_body_deadline(self) -> None:
        if self._body_deadline is not None:
            self._body_deadline.cancel()
            self._body_deadline = None
        self._body = None

    def _head_timed_out(self) -> None:
        self._head_deadline = None
        self.force_close()

    def _body_timed_out(self) -> None:
        self._body_deadline = None
        body, self._body = self._body, None
        if body is None or body.is_eof():
            return
        if not self._request_in_progress:
            self.force_close()
            return
        # The handler's read raises 408 (doors_middleware answers it), and the
        # connection closes after the answer instead of lingering over the rest
        # of a body that does not come.
        self._lingering_time = 0.0
        body.set_exception(web.HTTPRequestTimeout())

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if isinstance(exc, HttpProcessingError):
            # Not aiohttp's own log or answer: both carry the request's first bytes.
            status, code, text = _refusal(exc, max_line_size=self.max_line_size, max_field_size=self.max_field_size)
            level = logging.DEBUG if isinstance(exc, BadHttpMethod) else logging.INFO  # TLS or noise on the port
            logger.log(level, "refused a malformed or oversized request: %s (%d)", type(exc).__name__, status)
        else:
            # aiohttp logs the handler's exception; only its answer's shape changes.
            super().handle_error(request, status, exc, message)
            code, text = http_error_code(status), "the server could not handle this request"
        response = error_response(status, code, text)
        response.force_close()
        return response


def _refusal(exc: HttpProcessingError, *, max_line_size: int, max_field_size: int) -> tuple[int, str, str]:
    """(status, code, message) for what the parser refused; nothing of the request in it."""
    if isinstance(exc, LineTooLong):
        # The parser reports which limit was passed: the request line's or a header field's.
        limit = exc.args[1] if len(exc.args) > 1 else None
        if limit == max_line_size and limit != max_field_size:
            return 414, "uri_too_long", f"the request line is longer than {max_line_size} bytes"
        return 431, "headers_too_large", f"a header field is larger than {max_field_size} bytes"
    return 400, "invalid_request", "malformed HTTP request"


class DeadlineServer(web.Server):
    """aiohttp's low-level server (the protocol factory), building DeadlineRequestHandler."""

    def __init__(self, server: web.Server, *, header_timeout: float, body_timeout: float) -> None:
        super().__init__(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=server._loop,
            **server._kwargs,
        )
        self._header_timeout = header_timeout
        self._body_timeout = body_timeout

    def __call__(self) -> RequestHandler:
        # No fallback on a TypeError, unlike aiohttp's: a dropped option must fail loudly.
        return DeadlineRequestHandler(
            self,
            loop=self._loop,
            header_timeout=self._header_timeout,
            body_timeout=self._body_timeout,
            **self._kwargs,
        )


class DeadlineRunner(web.AppRunner):
    """An AppRunner whose connections have head and body deadlines (the rest of
    its keyword arguments are AppRunner's and RequestHandler's)."""

    __slots__ = ("_body_timeout", "_header_timeout")

    def __init__(self, app: web.Application, *, header_timeout: float, body_timeout: float, **kwargs: Any) -> None:
        if header_timeout <= 0 or body_timeout <= 0:
            raise ValueError("header_timeout and body_timeout must be positive")
        super().__init__(app, **kwargs)
        self._header_timeout = header_timeout
        self._body_timeout = body_timeout

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()  # starts the app up, as AppRunner does
        return DeadlineServer(server, header_timeout=self._header_timeout, body_timeout=self._body_timeout)
