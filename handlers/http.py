"""aiohttp routes: parse and validate, call the domain, render JSON.

Every error leaves as ``{"error": {"code", "message"}}``; domain errors are
translated here and nowhere else.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp_remotes import XForwardedFiltered
from marshmallow import Schema

from gateway import keys
from gateway.auth.sessions import TOTP_DIGITS, TOTP_PERIOD
from gateway.errors import (
    AuthError,
    Forbidden,
    GatewayError,
    InvalidRequest,
    InvalidToken,
    MissingCredentials,
    RateLimited,
    StoreUnavailable,
)
from gateway.formats import iso_z
from handlers import raw_ws, schemas
from handlers.errors import Surface, code_for
from handlers.origins import OriginPolicy

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SOCKETIO_PREFIX = "/socket.io/"
_PRINTABLE_ASCII = re.compile(r"^[\x21-\x7e]+\Z")

_HTTP_CODES = {
    400: "invalid_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "payload_too_large",
    414: "uri_too_long",
    431: "headers_too_large",
    500: "internal_error",
}


def http_error_code(status: int) -> str:
    """The error ``code`` of an HTTP status the application itself does not choose."""
    return _HTTP_CODES.get(status, "http_error")


class AccessLogger(AbstractAccessLogger):
    """Access log without the query string (tickets and tokens may ride in it) and
    without the id in ``/ws/session/<sessionId>``: whoever reads the log could
    otherwise spend that session's verify attempts."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        path = request.path
        if path.startswith(raw_ws.PATH_PREFIX):
            path = raw_ws.PATH_PREFIX + "..."
        # Socket.IO's requests (a poll every few seconds per long-polling client, a
        # line per WebSocket session) are DEBUG, like connects: at INFO they cost
        # a measurable share of a connect and of a drain (`log_level`).
        level = logging.DEBUG if path.startswith(SOCKETIO_PREFIX) and response.status < 400 else logging.INFO
        self.logger.log(level, "%s %s %s %d %.3fs", request.remote, request.method, path, response.status, time)


class RedactParserErrors(logging.Filter):
    """aiohttp's parser logs the first 100 bytes of an oversized or malformed
    request line or header, which may hold a ticket or token: keep the event,
    drop the bytes. (handlers/transport.py answers and logs parser refusals
    itself, without the bytes; this filter guards any of aiohttp's own lines.)"""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], HttpProcessingError):
            record.msg = "refused a malformed or oversized request: %s"
            record.args = (type(record.exc_info[1]).__name__,)
            record.exc_info = None
            record.exc_text = None
        return True


def node_header(node: str) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    """``X-Ticketgate-Node`` on every response: which node of a cluster answered."""

    async def add(request: web.Request, response: web.StreamResponse) -> None:
        response.headers["X-Ticketgate-Node"] = node

    return add


def error_response(status: int, code: str, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message, **extra}}, status=status)


def error_response_for(exc: GatewayError) -> web.Response:
    """A domain error in the PROTOCOL §2 shape, with its status and headers."""
    extra = {}
    attempts_left = getattr(exc, "attempts_left", None)
    if attempts_left is not None:  # PROTOCOL §6.4
        extra["attemptsLeft"] = attempts_left
    response = error_response(code_for(exc, Surface.HTTP), exc.reason, str(exc), **extra)
    if isinstance(exc, RateLimited):
        response.headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    if isinstance(exc, AuthError) and exc.reason in ("missing_credentials", "invalid_token", "token_expired"):
        response.headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
    return response


def forwarded_middleware(trusted: tuple[str, ...]) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Believe X-Forwarded-For/-Proto/-Host only from a trusted proxy (aiohttp-remotes
    parses them); a direct client's headers are ignored, so it cannot pose as another."""
    networks = [ipaddress.ip_network(item, strict=False) for item in trusted]
    forwarded = XForwardedFiltered(set(trusted))

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        peer = request.remote
        try:
            trusted_peer = peer is not None and any(ipaddress.ip_address(peer) in n for n in networks)
        except ValueError:
            trusted_peer = False
        if not trusted_peer:
            return await handler(request)
        response: web.StreamResponse = await forwarded.middleware(request, handler)
        return response

    return middleware


# PROTOCOL §2 and issue #16: the routes anyone may call that cost the store a
# write (or, for /auth/verify, an attempt), limited per client address.
RATE_LIMITED_ROUTES = frozenset({"/auth/initiate", "/auth/verify", "/auth/devices", "/ws/ticket"})


def doors_middleware(policy: OriginPolicy, *, raw_prefix: str) -> Callable[..., Awaitable[web.StreamResponse]]:
    """The one middleware of the doors (a WebSocket's request stays inside every
    middleware for the socket's life: one frame here, not one per concern).

    Before any handler runs, a request is refused for:

    * a cross-origin Socket.IO or raw WebSocket handshake: 403
      ``origin_not_allowed`` before any upgrade (PROTOCOL §3, 4003);
    * a new Engine.IO session (no ``sid`` yet) while the node drains: 503
      ``unavailable``;
    * a new Engine.IO session (no ``sid`` yet) while its address holds
      ``max_pending_per_ip`` sessions that never sent the Socket.IO CONNECT: 429
      with Retry-After (admission refuses them too; this answers in the
      documented shape);
    * ``http_rate_per_ip`` on the routes anyone may call: 429 ``rate_limited``.

    And every error, these and the handlers', leaves in the PROTOCOL §2 shape:
    domain errors are translated here and nowhere else. The address is the one
    forwarded_middleware settled on."""

    async def doors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            path = request.path
            if path.startswith((SOCKETIO_PREFIX, raw_prefix)):
                if not policy.allows_request(request):
                    logger.info("refused handshake: origin_not_allowed")
                    return error_response(403, "origin_not_allowed", "this Origin may not connect")
                if path.startswith(SOCKETIO_PREFIX) and request.method == "GET" and "sid" not in request.query:
                    if request.app[keys.realtime].draining:
                        # At the handshake, not as a Socket.IO connect_error: socket.io-client
                        # retries a failed handshake by itself, but never a refused CONNECT.
                        raise StoreUnavailable("this node is shutting down; reconnect")
                    if request.app[keys.admission].unconnected_full(request.remote or "unknown"):
                        retry = request.app[keys.config].auth_timeout
                        raise RateLimited("too many unauthenticated sessions from this address", retry_after=retry)
            elif request.method == "POST" and path in RATE_LIMITED_ROUTES:
                await request.app[keys.rate_limits].http(request.remote or "unknown")
            return await handler(request)
        except GatewayError as exc:
            return error_response_for(exc)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return error_response(exc.status, http_error_code(exc.status), exc.reason)

    return web.middleware(doors)


async def load_body(request: web.Request, schema: type[Schema]) -> dict[str, Any]:
    raw = await request.read()  # raises 413 past client_max_size
    if not raw.strip():
        raw = b"{}"
    try:
        payload = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InvalidRequest("body is not valid JSON") from None
    except RecursionError:
        raise InvalidRequest(f"body is nested deeper than {schemas.MAX_DEPTH}") from None
    return schemas.load(schema, payload, not_an_object="body must be a JSON object")


def bearer(request: web.Request) -> str:
    header = request.headers.get("Authorization")
    if not header:
        raise MissingCredentials("Authorization: Bearer <token> required")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise InvalidToken("Authorization must be 'Bearer <token>'")
    token = value.strip()
    # Every token (JWT, admin token) is printable ASCII; a header is decoded with
    # surrogateescape, so other bytes would only fail later, in an encoder.
    if not _PRINTABLE_ASCII.match(token):
        raise InvalidToken("malformed token")
    return token


def require_admin(request: web.Request) -> None:
    expected = request.app[keys.config].admin_token
    if expected is None:
        raise Forbidden("the admin API is disabled: no admin_token is configured")
    if not hmac.compare_digest(bearer(request).encode(), expected.encode()):
        raise InvalidToken("invalid admin token")


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    try:
        await request.app[keys.store].ping()
    except StoreUnavailable:
        return web.json_response({"status": "unavailable"}, status=503)
    return web.json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    body = request.app[keys.metrics].render()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def jwks(request: web.Request) -> web.Response:
    return web.json_response(request.app[keys.tokens].jwks, headers={"Cache-Control": "public, max-age=300"})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(request.app[keys.openapi])


async def issue_ticket(request: web.Request) -> web.Response:
    principal = await request.app[keys.tokens].verify(bearer(request))
    await load_body(request, schemas.TicketRequest)
    issued = await request.app[keys.tickets].issue(principal)
    request.app[keys.metrics].tickets_issued.inc()
    body = {"ticket": issued.ticket, "expires": issued.expires, "expiresAt": iso_z(issued.expires)}
    return web.json_response(body, status=201, headers={"Cache-Control": "no-store"})


async def publish(request: web.Request) -> web.Response:
    require_admin(request)
    body = await load_body(request, schemas.PublishRequest)
    await request.app[keys.realtime].publish(body["room"], body["event"], body["data"])
    request.app[keys.metrics].events_published.inc()
    return web.json_response({"room": body["room"], "event": body["event"]}, status=202)


async def enroll_device(request: web.Request) -> web.Response:
    if not request.app[keys.config].demo:  # --demo opens enrollment to the demo page
        require_admin(request)
    body = await load_body(request, schemas.EnrollRequest)
    enrolled = await request.app[keys.sessions].enroll(body["userId"], body["publicKey"])
    response = {
        "deviceId": enrolled.device_id,
        "totpSecret": enrolled.totp_secret,
        "digits": TOTP_DIGITS,
        "period": TOTP_PERIOD,
        "algorithm": "SHA1",
    }
    return web.json_response(response, status=201, headers={"Cache-Control": "no-store"})


async def initiate_session(request: web.Request) -> web.Response:
    body = await load_body(request, schemas.InitiateRequest)
    initiated = await request.app[keys.sessions].initiate(body["userId"])
    response = {
        "sessionId": initiated.session_id,
        "wsToken": initiated.ws_token,
        "random": initiated.random,
        "expiresAt": iso_z(initiated.expires_at),
    }
    return web.json_response(response, status=201, headers={"Cache-Control": "no-store"})


async def verify_session(request: web.Request) -> web.Response:
    body = await load_body(request, schemas.VerifyRequest)
    await request.app[keys.sessions].verify(
        session_id=body["sessionId"], device_id=body["deviceId"], otp=body["otp"], signature=body["signature"]
    )
    return web.json_response({"status": "approved"})


async def disconnect_user(request: web.Request) -> web.Response:
    require_admin(request)
    sub = schemas.load(schemas.UserPath, {"sub": request.match_info["sub"]})["sub"]
    body = await load_body(request, schemas.DisconnectRequest)
    closed = await request.app[keys.lifetime].disconnect_user(sub, revoke=body["revokeTokens"])
    return web.json_response({"disconnected": closed})


async def user_presence(request: web.Request) -> web.Response:
    require_admin(request)
    sub = schemas.load(schemas.UserPath, {"sub": request.match_info["sub"]})["sub"]
    connections = await request.app[keys.presence].user(sub)
    return web.json_response({"sub": sub, "online": connections > 0, "connections": connections})


async def room_presence(request: web.Request) -> web.Response:
    require_admin(request)
    room = schemas.load(schemas.RoomPath, {"room": request.match_info["room"]})["room"]
    if len(request.query) != len(set(request.query)):
        raise InvalidRequest("a query parameter is given more than once")
    query = schemas.load(schemas.PresenceQuery, dict(request.query))
    page = await request.app[keys.presence].page(room, cursor=query.get("cursor"), limit=query["limit"])
    return web.json_response(page.body())


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/.well-known/jwks.json", jwks)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_post("/ws/ticket", issue_ticket)
    app.router.add_post("/api/publish", publish)
    app.router.add_post("/auth/devices", enroll_device)
    app.router.add_post("/auth/initiate", initiate_session)
    app.router.add_post("/auth/verify", verify_session)
    app.router.add_post("/api/users/{sub}/disconnect", disconnect_user)
    app.router.add_get("/api/users/{sub}", user_presence)
    # A room's name may hold a slash: the path's end says where it stops.
    app.router.add_get("/api/rooms/{room:.+}/presence", room_presence)
