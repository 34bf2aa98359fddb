"""The operator UI's door (issue #15): the Socket.IO Admin UI's page at
``/admin/``, and the Socket.IO namespace ``/admin`` it logs in to and reads.

The namespace speaks the Admin UI's protocol through python-socketio's
instrumentation (``socketio.async_admin.InstrumentedAsyncServer``, subclassed
as ``OperatorView``), which by itself would show credentials and does not fit
this server. What it would do, and what is done here instead:

* **Handshakes.** It reports each socket's handshake with every HTTP header
  (``Authorization``, ``Cookie``) and the query string, where tickets, tokens,
  refresh tokens and wsTokens may ride. Here (``serialize_socket``) the query
  keeps the names of the parameters the gateway knows and none of their
  values but Engine.IO's own (``EIO``, ``transport``); the headers are
  User-Agent and Origin alone; the Socket.IO ``auth`` object is not reported
  (python-socketio never did); and ``clientId``, the Engine.IO session id that
  lets whoever holds it poll a long-polling session, is an opaque alias that
  still groups one client's sockets.
* **Events.** Its development mode reports every event a socket sends
  (``authenticate`` carries a token, ``refresh`` a refresh token) and every
  event sent to sockets (``refresh_token`` carries one; the backend's events
  are user data), arguments included, one admin message per recipient of a
  broadcast. None is reported here. Development mode itself is kept, because
  only it lists sockets and rooms (production mode sends per-server counts
  alone): the UI's Sockets, Rooms and Clients pages work, and its Events page
  lists connects, disconnects, joins and leaves.
* **Connects.** It reports a socket before its connect handler has run, so a
  refused connect (a bad credential) showed as a socket that never left. Here
  a socket is reported once the gateway has accepted it.
* **Hooks.** It wraps methods of python-engineio's ``AsyncSocket`` *class* to
  count packets and bytes (every server of the process; a second instrumented
  server in one process makes those wrappers call themselves without end),
  and the gateway's sessions write their WebSocket past those methods anyway.
  Here only this server's own objects are hooked; packets and bytes are not
  counted.
* **Reports** wait for the next ``server_stats`` tick (every 2 s) instead of
  being sent from inside a connect: on the redis engine an admin message is a
  publish to Redis, and a connect must never wait for, nor fail with, a report.
* **Read-only**: the UI cannot emit, join, leave or disconnect; the admin API
  does that, with the gateway's checks.
* **Login**: the password is ``admin_token`` (compared in constant time), the
  username anything. A login counts against ``connect_rate_per_ip`` like any
  connect; its Engine.IO session then no longer waits for ``auth_timeout``,
  while one that fails to log in is closed then, like any unauthenticated one.

Overridden python-socketio internals are pinned in setup.cfg;
tests/test_admin_ui.py fails loudly when their shape changes.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

import socketio
from aiohttp import web
from socketio.async_admin import InstrumentedAsyncServer

from gateway.admin_ui import AdminUIFiles
from gateway.auth.admission import QUERY_FIELDS
from gateway.auth.sessions import session_room
from gateway.errors import GatewayError
from gateway.rate_limits import RateLimits
from gateway.realtime import NAMESPACE, Server
from handlers.errors import connect_error_data
from handlers.events import client_address

logger = logging.getLogger(__name__)

PATH = "/admin/"
ADMIN_NAMESPACE = "/admin"
REDACTED = "[redacted]"
# The query parameters shown by name: Engine.IO's own, and the credentials'
# (never their values). Any other is summed up under OTHER_PARAMETERS: a
# client may send anything as a name, a token too.
ENGINEIO_PARAMETERS = frozenset({"EIO", "transport", "t", "sid", "j", "b64"})
KNOWN_PARAMETERS = ENGINEIO_PARAMETERS | frozenset(QUERY_FIELDS)
OTHER_PARAMETERS = "(other parameters)"
# The only values shown: those a session that got as far as a socket can have.
SHOWN_VALUES = {"EIO": frozenset({"4"}), "transport": frozenset({"polling", "websocket"})}
SHOWN_HEADERS = ("User-Agent", "Origin")
SESSION_ROOM_PREFIX = session_room("")
# Reports wait for the next tick; past this many the oldest are dropped (an
# operator who missed some sees every socket again at the next login).
MAX_QUEUED_REPORTS = 10_000
STATS_INTERVAL = 2.0  # python-socketio's and the UI's: a server is unhealthy after a few missed ticks
MAX_RETRY_INTERVAL = 30.0
# How long a socket reported on long-polling is watched for its upgrade to a WebSocket.
UPGRADE_WATCH = 30.0
HOSTNAME = socket.gethostname()


def redact_query(query_string: str) -> dict[str, str]:
    """A handshake's query string as the UI may show it: known names, no credential."""
    shown: dict[str, str] = {}
    for name, value in parse_qsl(query_string, keep_blank_values=True):
        if name not in KNOWN_PARAMETERS:
            shown[OTHER_PARAMETERS] = REDACTED
        elif value in SHOWN_VALUES.get(name, ()):
            shown[name] = value
        else:
            shown[name] = REDACTED
    return shown


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat()


class OperatorView(InstrumentedAsyncServer):  # type: ignore[misc]
    """python-socketio's Admin UI instrumentation, read-only, as the module says.

    Of python-socketio's class it keeps ``__init__`` (which calls ``instrument``),
    the Engine.IO connect and disconnect hooks (``_handle_eio_connect``,
    ``_handle_eio_disconnect``: connection counts, the start of the stats
    task) and their ``event_buffer``; ``instrument``, ``admin_connect``,
    ``serialize_socket``, ``_trigger_event``, the room hooks and the stats
    loop are replaced.
    """

    # python-socketio's (InstrumentedAsyncServer.__init__), typed here.
    sio: Server
    admin_namespace: str
    server_id: str
    server_stats_interval: float
    stats_task: asyncio.Task[None] | None

    def __init__(
        self,
        sio: Server,
        *,
        admin_token: str | None,
        server_id: str,
        rate_limits: RateLimits,
        settled: Callable[[str], None],
        socketio_path: str,
        stats_interval: float = STATS_INTERVAL,
    ) -> None:
        """``settled(eio_sid)``: the Engine.IO session of a logged-in operator no
        longer waits to authenticate (Admission's count and ``auth_timeout``).
        ``socketio_path``: the handshake URL path shown for every socket."""
        if not admin_token:  # load_config refuses admin_ui without one
            raise ValueError("the operator UI logs in with the admin token: there is none")
        self._password = admin_token.encode()
        self._rate_limits = rate_limits
        self._settled = settled
        self._url = socketio_path
        self._alias_key = secrets.token_bytes(16)  # clientId aliases: stable for this process only
        self._connected_at: dict[str, float] = {}  # every socket reported connected, by sid
        self._reports: collections.deque[tuple[str, tuple[Any, ...]]] = collections.deque(maxlen=MAX_QUEUED_REPORTS)
        self._unsent: set[str] = set()  # sids whose connect report waits for the next tick
        self._polling: dict[str, tuple[str, str, float]] = {}  # sid -> (namespace, eio_sid, watched until)
        self._run_handlers = sio._trigger_event  # python-socketio's own, before instrument() wraps it
        super().__init__(
            sio,
            auth=self._password_matches,
            namespace=ADMIN_NAMESPACE,
            read_only=True,
            server_id=server_id,
            mode="development",
            server_stats_interval=stats_interval,
        )

    # -- hooks ------------------------------------------------------------------

    def instrument(self) -> None:
        sio, manager = self.sio, self.sio.manager
        sio.on("connect", self.admin_connect, namespace=self.admin_namespace)
        sio._trigger_event = self._trigger_event
        self._enter_room, self._leave_room = manager.basic_enter_room, manager.basic_leave_room
        manager.basic_enter_room = self._basic_enter_room
        manager.basic_leave_room = self._basic_leave_room
        # python-socketio's hooks: a count of each, and the stats task at the first session.
        sio.eio.on("connect", self._handle_eio_connect)
        sio.eio.on("disconnect", self._handle_eio_disconnect)

    async def _trigger_event(self, event: str, namespace: str, *args: Any) -> Any:
        if event == "disconnect":
            self._report_disconnect(namespace, args[0], args[1] if len(args) > 1 else None)
        result = await self._run_handlers(event, namespace, *args)
        if event == "connect" and result is not False:  # a refusal raises, or returns False
            self._connected_at[args[0]] = time.time()
            self._unsent.add(args[0])
            self._reports.append(("connect", (namespace, args[0])))
        return result

    def _report_disconnect(self, namespace: str, sid: str, reason: Any) -> None:
        if self._connected_at.pop(sid, None) is None:
            return  # never reported
        self._polling.pop(sid, None)
        if sid in self._unsent:  # came and went within a tick: neither is told
            self._unsent.discard(sid)
            return
        self._reports.append(("socket_disconnected", (namespace, sid, str(reason), _iso(time.time()))))

    def _basic_enter_room(self, sid: str, namespace: str, room: str | None, eio_sid: str | None = None) -> None:
        self._enter_room(sid, namespace, room, eio_sid=eio_sid)
        # A socket's own room, and rooms joined while it connects, come with its connect report.
        if room is not None and room != sid and sid in self._connected_at:
            self._reports.append(("room_joined", (namespace, self._room(room), sid, _iso(time.time()))))

    def _basic_leave_room(self, sid: str, namespace: str, room: str | None) -> None:
        if room is not None and room != sid and sid in self._connected_at:
            self._reports.append(("room_left", (namespace, self._room(room), sid, _iso(time.time()))))
        self._leave_room(sid, namespace, room)

    # -- the operator's login ---------------------------------------------------

    def _password_matches(self, auth: Any) -> bool:
        password = auth.get("password") if isinstance(auth, dict) else None
        return isinstance(password, str) and hmac.compare_digest(password.encode(), self._password)

    async def admin_connect(self, sid: str, environ: Mapping[str, Any], client_auth: Any) -> None:
        try:
            await self._rate_limits.connect(client_address(environ))
        except GatewayError as exc:
            logger.info("admin UI login refused sid=%s reason=%s", sid, exc.reason)
            raise socketio.exceptions.ConnectionRefusedError(str(exc), connect_error_data(exc)) from None
        if not self._password_matches(client_auth):
            logger.info("admin UI login refused sid=%s reason=invalid_credentials", sid)
            # The UI's own words: it shows its login form again on them.
            raise socketio.exceptions.ConnectionRefusedError("invalid credentials")
        manager = self.sio.manager
        eio_sid = manager.eio_sid_from_sid(sid, self.admin_namespace)
        # (A session with a socket on the gateway's own namespace keeps waiting: that socket still has to authenticate.)
        if eio_sid is not None and manager.sid_from_eio_sid(eio_sid, NAMESPACE) is None:
            self._settled(eio_sid)
        logger.info("admin UI login sid=%s", sid)
        self.sio.start_background_task(self._welcome, sid)

    async def _welcome(self, sid: str) -> None:
        await asyncio.sleep(0.1)  # after python-socketio has sent the CONNECT packet
        # ALL_EVENTS is what turns on the UI's Sockets, Rooms, Clients and Events
        # pages; no event is sent as such (the module says why).
        features = {"supportedFeatures": ["AGGREGATED_EVENTS", "ALL_EVENTS"]}
        sockets = [
            self.serialize_socket(member, namespace, eio_sid)
            for namespace in list(self.sio.manager.get_namespaces())
            for member, eio_sid in list(self.sio.manager.get_participants(namespace, None))
            if member in self._connected_at
        ]
        try:
            await self.sio.emit("config", features, to=sid, namespace=self.admin_namespace)
            await self.sio.emit("all_sockets", sockets, to=sid, namespace=self.admin_namespace)
        except Exception:
            logger.exception("admin UI: could not send the sockets to sid=%s", sid)

    # -- what is reported -----------------------------------------------------------

    def serialize_socket(self, sid: str, namespace: str, eio_sid: str | None = None) -> dict[str, Any]:
        manager = self.sio.manager
        if eio_sid is None:
            eio_sid = manager.eio_sid_from_sid(sid, namespace)
        session = self.sio.eio.sockets.get(eio_sid) if eio_sid is not None else None
        environ: Mapping[str, Any] = self.sio.environ.get(eio_sid, {}) if eio_sid is not None else {}
        request = environ.get("aiohttp.request")
        headers = request.headers if request is not None else {}
        connected_at = self._connected_at.get(sid, 0.0)
        return {
            "id": sid,
            "clientId": self._alias(eio_sid),
            "transport": "websocket" if getattr(session, "upgraded", False) else "polling",
            "nsp": namespace,
            "data": {},
            "handshake": {
                "address": client_address(environ),
                "headers": {name.lower(): headers[name] for name in SHOWN_HEADERS if name in headers},
                "query": redact_query(environ.get("QUERY_STRING", "")),
                "secure": bool(request is not None and request.secure),
                "url": self._url,
                "issued": int(connected_at * 1000),
                "time": _iso(connected_at) if connected_at else "",
            },
            "rooms": [self._room(room) for room in manager.get_rooms(sid, namespace)],
        }

    def _room(self, room: str) -> str:
        """A room's name as the UI may show it: an auth session's id is an alias
        (whoever knows the id can spend that login's verify attempts)."""
        if room.startswith(SESSION_ROOM_PREFIX):
            return SESSION_ROOM_PREFIX + self._alias(room.removeprefix(SESSION_ROOM_PREFIX))
        return room

    def _alias(self, eio_sid: str | None) -> str:
        if eio_sid is None:
            return ""
        return hashlib.blake2b(eio_sid.encode(), key=self._alias_key, digest_size=10).hexdigest()

    # -- the stats loop -----------------------------------------------------------------

    async def _emit_server_stats(self) -> None:
        """Every tick: this server's stats, then the reports queued since the last one.
        An emit that fails (Redis unreachable) is retried at the next tick, the
        ticks spaced out while it keeps failing."""
        started = time.time()
        delay = self.server_stats_interval
        failing = False
        while True:
            await asyncio.sleep(delay)
            try:
                await self._tick(started)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not failing:
                    logger.warning("admin UI: cannot send its reports (%s: %s); retrying", type(exc).__name__, exc)
                failing = True
                delay = min(delay * 2, MAX_RETRY_INTERVAL)
            else:
                if failing:
                    logger.info("admin UI: sending its reports again")
                failing = False
                delay = self.server_stats_interval

    async def _tick(self, started: float) -> None:
        emit, sockets = self.sio.emit, self.sio.eio.sockets
        stats = {
            "serverId": self.server_id,
            "hostname": HOSTNAME,
            "pid": os.getpid(),
            "uptime": time.time() - started,
            "clientsCount": len(sockets),
            "pollingClientsCount": sum(1 for session in list(sockets.values()) if not session.upgraded),
            "aggregatedEvents": self.event_buffer.get_and_clear(),
            "namespaces": [
                {"name": namespace, "socketsCount": len(self.sio.manager.rooms.get(namespace, {}).get(None, ()))}
                for namespace in sorted(self.sio.handlers)
            ],
        }
        await emit("server_stats", stats, namespace=self.admin_namespace)
        while self._reports:
            event, args = self._reports[0]
            if event == "connect":
                args = self._connected(*args)
                event = "socket_connected"
            if args:
                await emit(event, args, namespace=self.admin_namespace)
            self._reports.popleft()  # only once sent: a failed emit is retried
        await self._report_upgrades()

    def _connected(self, namespace: str, sid: str) -> tuple[Any, ...]:
        """A connect's report, made when it is sent: with the socket's rooms and
        transport by then. Nothing for one that has left already."""
        self._unsent.discard(sid)
        connected_at = self._connected_at.get(sid)
        eio_sid = self.sio.manager.eio_sid_from_sid(sid, namespace)
        if connected_at is None or eio_sid is None:
            return ()
        session = self.sio.eio.sockets.get(eio_sid)
        if session is not None and not session.upgraded:
            self._polling[sid] = (namespace, eio_sid, time.time() + UPGRADE_WATCH)
        return (self.serialize_socket(sid, namespace, eio_sid), _iso(connected_at))

    async def _report_upgrades(self) -> None:
        now = time.time()
        for sid, (namespace, eio_sid, until) in list(self._polling.items()):
            session = self.sio.eio.sockets.get(eio_sid)
            if session is not None and session.upgraded:
                update = {"id": sid, "nsp": namespace, "transport": "websocket"}
                await self.sio.emit("socket_updated", update, namespace=self.admin_namespace)
            elif session is not None and now < until:
                continue
            self._polling.pop(sid, None)  # (a disconnect may have dropped it during the emit)

    # -- its life -------------------------------------------------------------------

    async def running(self, app: web.Application) -> AsyncIterator[None]:
        """cleanup_ctx: stops the stats task (python-socketio's ``shutdown`` waits a tick for it)."""
        yield
        task = self.stats_task
        if task is not None:
            task.cancel()
            await asyncio.wait({task})
            self.stats_task = None


def add_routes(app: web.Application, files: AdminUIFiles) -> None:
    """The Admin UI's page at /admin/ (its index.html with local stylesheets), its
    scripts and styles, and the icon font under /admin/vendor/mdi/."""
    index = files.index_html()

    async def page(request: web.Request) -> web.StreamResponse:
        return web.Response(text=index, content_type="text/html", headers={"Cache-Control": "no-cache"})

    async def to_page(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(PATH)

    app.router.add_get(PATH.rstrip("/"), to_page)
    app.router.add_get(PATH, page)
    app.router.add_get(PATH + "index.html", page)  # before the static route, which has the original
    for part in ("css", "fonts"):
        app.router.add_static(f"{PATH}vendor/mdi/{part}/", files.icons / part, show_index=False)
    app.router.add_static(PATH, files.page, show_index=False)
