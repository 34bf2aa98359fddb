"""The operator UI (issue #15, handlers/admin_ui.py): the Socket.IO Admin UI's page
at /admin/ and the /admin namespace, which must never show a credential.

The operator's side of the wire is read raw (``RawAdmin``: a bare WebSocket
speaking Engine.IO and Socket.IO), so every byte the gateway sends it is
searched: sockets connect with every credential in every place (ticket, token,
refresh token and wsToken, in ``auth`` and in the query string, an
``authenticate`` and a ``refresh`` event, Authorization and Cookie headers),
the backend publishes, and no credential may appear, while the sockets, their
rooms and their users must.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from socketio import AsyncServer
from socketio.async_admin import InstrumentedAsyncServer

from gateway import keys
from gateway.admin_ui import ICONS_CSS, ICONS_URL, admin_ui_files, local_stylesheets
from handlers.admin_ui import ADMIN_NAMESPACE, OTHER_PARAMETERS, REDACTED, redact_query
from tests.conftest import Gateway, MakeGateway
from tests.device import Device
from tests.support import Probe, http_json, issue_ticket

pytestmark = pytest.mark.timeout(60)

ADMIN_TOKEN = "admin-token-for-tests-0123456789"  # tests/conftest.py's settings
# A report waits for the next stats tick (every 2 s): long enough for two.
REPORT_WAIT = 6.0


class RawAdmin:
    """The Admin UI's connection, raw: a WebSocket to /socket.io/ that logs in to
    /admin and keeps every text frame the gateway sends (answering its pings)."""

    def __init__(self, url: str) -> None:
        self.url = url.replace("http", "ws", 1) + "/socket.io/?EIO=4&transport=websocket"
        self.frames: list[str] = []
        self._session = aiohttp.ClientSession()
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._changed = asyncio.Condition()

    async def login(self, auth: Any = None, *, password: str = ADMIN_TOKEN) -> str:
        """Open the session and send the CONNECT to /admin; the answer's frame."""
        self._ws = await self._session.ws_connect(self.url)
        self._reader = asyncio.create_task(self._read(self._ws))
        await self.wait_for(lambda frame: frame.startswith("0{"))
        credentials = {"username": "admin", "password": password} if auth is None else auth
        await self._ws.send_str(f"40{ADMIN_NAMESPACE}," + json.dumps(credentials))
        return await self.wait_for(lambda frame: frame.startswith(("40/admin,", "44/admin,")))

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for message in ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            if message.data == "2":
                await ws.send_str("3")
            async with self._changed:
                self.frames.append(message.data)
                self._changed.notify_all()
        async with self._changed:
            self.frames.append("<closed>")
            self._changed.notify_all()

    async def wait_for(self, match: Callable[[str], bool], *, timeout: float = REPORT_WAIT) -> str:
        """The first frame that ``match``es, waiting up to ``timeout``."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: any(map(match, self.frames))), timeout)
        return next(frame for frame in self.frames if match(frame))

    def events(self, name: str) -> list[list[Any]]:
        """The arguments of every ``name`` event received on /admin."""
        prefix = "42/admin,"
        found = []
        for frame in self.frames:
            if frame.startswith(prefix):
                event, *args = json.loads(frame[len(prefix) :])
                if event == name:
                    found.append(args)
        return found

    def reported_sockets(self) -> dict[str, dict[str, Any]]:
        """Every socket described so far (all_sockets and socket_connected), by id."""
        sockets = {socket["id"]: socket for [listed] in self.events("all_sockets") for socket in listed}
        sockets.update({socket["id"]: socket for socket, *_ in self.events("socket_connected")})
        return sockets

    @property
    def closed(self) -> bool:
        return "<closed>" in self.frames

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, 5)
        await self._session.close()


@pytest.fixture
async def admins() -> AsyncIterator[Callable[[str], RawAdmin]]:
    made: list[RawAdmin] = []

    def make(url: str) -> RawAdmin:
        admin = RawAdmin(url)
        made.append(admin)
        return admin

    yield make
    for admin in made:
        await admin.close()


class Secrets:
    """Every credential handed to the gateway or pushed by it, to look for in what the UI got."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    def add(self, label: str, value: str) -> str:
        self.values[label] = value
        if value.count(".") == 2:  # a JWT: its payload and its signature alone are secret too
            _, payload, signature = value.split(".")
            self.values[f"{label} (payload)"] = payload
            self.values[f"{label} (signature)"] = signature
        return value

    def leaked(self, text: str) -> list[str]:
        return [label for label, value in self.values.items() if value in text]


# -- the page ------------------------------------------------------------------------


def test_the_page_loads_nothing_from_a_cdn() -> None:
    html = admin_ui_files().index_html()
    assert not re.findall(r'(?:src|href)="(?:https?:)?//', html), html
    assert f'<link rel="stylesheet" href="{ICONS_URL}{ICONS_CSS}">' in html
    # What the pinned page links from CDNs: the icon font (served locally) and Roboto (left out).
    mdi = '<link rel="stylesheet" href="https://cdn.jsdelivr.net/npm/@mdi/font@latest/css/materialdesignicons.min.css">'
    roboto = '<link rel="stylesheet" href="https://fonts.googleapis.com/css?family=Roboto:100,300,400,500,700,900">'
    assert (
        local_stylesheets(f"<head>{roboto}{mdi}</head>")
        == f'<head><link rel="stylesheet" href="{ICONS_URL}{ICONS_CSS}"></head>'
    )


async def test_the_page_and_everything_it_loads_are_served(make_gateway: MakeGateway) -> None:
    gateway = await make_gateway(admin_ui=True)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{gateway.url}/admin", allow_redirects=False) as resp:
            assert (resp.status, resp.headers["Location"]) == (302, "/admin/")
        pages = []
        for path in ("/admin/", "/admin/index.html"):
            async with session.get(gateway.url + path) as resp:
                assert (resp.status, resp.content_type) == (200, "text/html")
                pages.append(await resp.text())
        assert pages[0] == pages[1] == admin_ui_files().index_html()
        loaded = set(re.findall(r'(?:src|href)="([^"]+)"', pages[0]))
        assert {"js/app.0d7d7845.js", "favicon.png", f"{ICONS_URL}{ICONS_CSS}"} <= loaded, loaded
        async with session.get(f"{gateway.url}/admin/{ICONS_URL}{ICONS_CSS}") as resp:
            assert resp.status == 200
            fonts = set(re.findall(r'url\("\.\./(fonts/[^"?]+\.woff2)', await resp.text()))
        assert fonts == {"fonts/materialdesignicons-webfont.woff2"}
        for name in sorted(loaded | {f"{ICONS_URL}{font}" for font in fonts}):
            async with session.get(f"{gateway.url}/admin/{name}") as resp:
                assert resp.status == 200, name
        # Only the icon font's files of @mdi/font are served, not the rest of its package.
        async with session.get(f"{gateway.url}/admin/{ICONS_URL}package.json") as resp:
            assert resp.status == 404


async def test_off_there_is_no_page_and_no_admin_namespace(gateway: Gateway, admins: Callable[[str], RawAdmin]) -> None:
    status, _, _ = await http_json("GET", f"{gateway.url}/admin/")
    assert status == 404
    answer = await admins(gateway.url).login()
    assert answer.startswith("44/admin,"), answer


# -- the login ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "auth",
    [
        {"username": "admin", "password": ADMIN_TOKEN[:-1] + "X"},
        {"username": "admin", "password": ADMIN_TOKEN + "X"},
        {"username": "admin"},
        {"username": "admin", "password": None},
        {"password": [ADMIN_TOKEN]},
        {"sessionId": None},  # what the UI sends on a reload
        {},
        "",
    ],
    ids=["wrong", "longer", "none", "null", "list", "session", "empty", "string"],
)
async def test_a_wrong_password_is_refused_and_told_nothing(
    make_gateway: MakeGateway, admins: Callable[[str], RawAdmin], auth: Any
) -> None:
    gateway = await make_gateway(admin_ui=True)
    admin = admins(gateway.url)
    answer = await admin.login(auth)
    assert answer == '44/admin,{"message":"invalid credentials"}', answer
    await asyncio.sleep(2.5)  # a stats tick: a refused admin is sent nothing
    assert [frame for frame in admin.frames if "/admin," in frame] == [answer], admin.frames


async def test_any_username_with_the_admin_token_logs_in(
    make_gateway: MakeGateway, admins: Callable[[str], RawAdmin]
) -> None:
    gateway = await make_gateway(admin_ui=True)
    for auth in ({"username": "ops", "password": ADMIN_TOKEN}, {"password": ADMIN_TOKEN}):
        admin = admins(gateway.url)
        assert (await admin.login(auth)).startswith("40/admin,")
        await admin.wait_for(lambda frame: '"config"' in frame)
        [[config]] = admin.events("config")
        # Read-only: no EMIT, JOIN, LEAVE or DISCONNECT for the UI to offer.
        assert config == {"supportedFeatures": ["AGGREGATED_EVENTS", "ALL_EVENTS"]}


async def test_logins_count_against_the_connect_rate(
    make_gateway: MakeGateway, admins: Callable[[str], RawAdmin]
) -> None:
    gateway = await make_gateway(admin_ui=True, connect_rate_per_ip=2)
    # limits' sliding window floors the previous minute's weighted count: two
    # hits just before a minute's edge weigh 1 just after it, and a third passes.
    if (wait := 60 - time.time() % 60) < 3:
        await asyncio.sleep(wait)
    assert (await admins(gateway.url).login(password="wrong-password-0123456789")).startswith("44/admin,")
    assert (await admins(gateway.url).login()).startswith("40/admin,")
    answer = await admins(gateway.url).login()
    assert json.loads(answer.removeprefix("44/admin,"))["data"] == {"code": 4029, "reason": "rate_limited"}


async def test_a_logged_in_session_outlives_auth_timeout_a_refused_one_does_not(
    make_gateway: MakeGateway, admins: Callable[[str], RawAdmin]
) -> None:
    """The gateway closes Engine.IO sessions that have not authenticated within
    auth_timeout; an operator's login is an authentication, a wrong password is not."""
    gateway = await make_gateway(admin_ui=True, auth_timeout=0.5)
    operator, stranger = admins(gateway.url), admins(gateway.url)
    answer = await operator.login()
    assert answer.startswith("40/admin,")
    assert (await stranger.login(password="wrong-password-0123456789")).startswith("44/admin,")
    await asyncio.sleep(1.5)
    assert stranger.closed
    assert not operator.closed
    await operator.wait_for(lambda frame: '"server_stats"' in frame)  # and still served
    # The gateway's own connect handler never ran for /admin: the operator's socket is none of its own.
    assert gateway.app[keys.realtime].get(json.loads(answer.removeprefix("40/admin,"))["sid"]) is None


# -- what the UI is told ----------------------------------------------------------------


async def test_the_ui_never_sees_a_credential(
    gateway_with_ui: Gateway, admins: Callable[[str], RawAdmin], probes: Callable[[], Probe]
) -> None:
    gateway = gateway_with_ui
    url = gateway.url
    secrets = Secrets()
    secrets.add("admin token", ADMIN_TOKEN)
    live = admins(url)  # logged in first: told every connect as it happens
    assert (await live.login()).startswith("40/admin,")
    users: dict[str, tuple[Probe, str]] = {}  # by label: the socket, and its user

    async def connect(label: str, sub: str, **kwargs: Any) -> None:
        probe = probes()
        assert await probe.connect(url, **kwargs), probe.connect_error
        assert (await probe.wait_for("authenticated"))["sub"] == sub
        secrets.add(f"refresh token of {label}", (await probe.wait_for("refresh_token"))["refreshToken"])
        users[label] = (probe, sub)

    def mint(label: str, sub: str) -> str:
        return secrets.add(label, gateway.mint(sub))

    async def ticket(label: str, sub: str) -> str:
        return secrets.add(label, await issue_ticket(url, mint(f"token for {label}", sub)))

    await connect("ticket", "alice", auth={"ticket": await ticket("ticket (auth)", "alice")})
    polling_ticket = await ticket("ticket (polling)", "bob")
    await connect("polling", "bob", auth={"ticket": polling_ticket}, transports=("polling",))
    await connect("ticket in query", "carol", query=f"ticket={await ticket('ticket (query)', 'carol')}")
    await connect("token", "dave", auth={"token": mint("token (auth)", "dave")})
    api_key = secrets.add("unknown query parameter", "k-1234567890abcdef")
    await connect("token in query", "erin", query=f"token={mint('token (query)', 'erin')}&x-api-key={api_key}")
    headers = {
        "Authorization": f"Bearer {mint('token (Authorization header)', 'frank')}",
        "Cookie": f"session={secrets.add('cookie', 'cookie-value-5e1f0c2a9b')}",
    }
    await connect("headers", "frank", auth={"token": mint("token (with headers)", "frank")}, headers=headers)
    await connect("refresh token", "alice", auth={"refreshToken": secrets.values["refresh token of ticket"]})
    # Deferred authentication and a refresh: credentials in events.
    deferred = probes()
    assert await deferred.connect(url)
    ack = await deferred.call("authenticate", {"token": mint("token (authenticate)", "grace")})
    assert ack["ok"] is True, ack
    first = secrets.add("refresh token of deferred", (await deferred.wait_for("refresh_token"))["refreshToken"])
    ack = await deferred.call("refresh", {"refreshToken": first})
    assert ack["ok"] is True, ack
    secrets.add("refresh token from refresh", ack["refreshToken"])
    users["deferred"] = (deferred, "grace")
    # An auth session's socket: its sessionId and wsToken in the query string.
    await Device().enroll(url, "heidi", admin_token=ADMIN_TOKEN)
    status, session, _ = await http_json("POST", f"{url}/auth/initiate", json={"userId": "heidi"})
    assert status == 201, session
    by_session = probes()
    session_id, ws_token = secrets.add("sessionId", session["sessionId"]), secrets.add("wsToken", session["wsToken"])
    assert await by_session.connect(url, query=f"sessionId={session_id}&wsToken={ws_token}")
    assert (await by_session.wait_for("authenticated"))["via"] == "session"
    # What the backend sends users is theirs.
    marker = secrets.add("published data", "private-payload-3f9a")
    await gateway.publish("user:dave", "invoice_paid", {"note": marker})
    assert await users["token"][0].wait_for("invoice_paid") == {"note": marker}
    # The transport's own session ids: whoever holds one may poll a long-polling session.
    for label, (probe, _) in [*users.items(), ("session", (by_session, ""))]:
        secrets.add(f"Engine.IO sid of {label}", probe.client.eio.sid)
    sids = {label: probe.client.get_sid("/") for label, (probe, _) in users.items()}
    session_sid = by_session.client.get_sid("/")
    for sid in [*sids.values(), session_sid]:
        await live.wait_for(lambda frame, sid=sid: '"socket_connected"' in frame and sid in frame)
    gone = sids["ticket in query"]
    await users["ticket in query"][0].close()
    await live.wait_for(lambda frame: '"socket_disconnected"' in frame and gone in frame)
    later = admins(url)  # logged in last: told every socket at once
    assert (await later.login()).startswith("40/admin,")
    await later.wait_for(lambda frame: '"all_sockets"' in frame)

    for admin in (live, later):
        everything = "\n".join(admin.frames)
        assert secrets.leaked(everything) == []
        # No event a socket sent or was sent: their arguments are credentials and user data.
        assert '"event_received"' not in everything and '"event_sent"' not in everything
        sockets = admin.reported_sockets()
        for label, (_, sub) in users.items():
            if admin is later and label == "ticket in query":
                assert gone not in sockets  # it had left
                continue
            assert f"user:{sub}" in sockets[sids[label]]["rooms"], (label, sockets[sids[label]])
        query = sockets[sids["token in query"]]["handshake"]["query"]
        shown = {"EIO": "4", "transport": "websocket", "t": REDACTED}  # t: the client's cache buster
        assert query == {**shown, "token": REDACTED, OTHER_PARAMETERS: REDACTED}
        assert sockets[sids["polling"]]["transport"] == "polling"
        assert set(sockets[sids["headers"]]["handshake"]["headers"]) <= {"user-agent", "origin"}
        [session_room] = [room for room in sockets[session_sid]["rooms"] if room.startswith("session:")]
        assert session["sessionId"] not in session_room
        assert {socket["handshake"]["address"] for socket in sockets.values()} == {"127.0.0.1"}
    assert [args[1] for args in live.events("socket_disconnected")] == [gone]
    # The deferred socket joined its user's room after it was reported: told as it happened.
    assert ["/", "user:grace", sids["deferred"]] in [args[:3] for args in live.events("room_joined")]


@pytest.fixture
async def gateway_with_ui(make_gateway: MakeGateway) -> Gateway:
    return await make_gateway(admin_ui=True)


async def test_a_refused_connect_is_never_reported(
    gateway_with_ui: Gateway, admins: Callable[[str], RawAdmin], probes: Callable[[], Probe]
) -> None:
    """python-socketio reports a socket before its connect handler runs; a socket
    the gateway refuses would stay in the UI for good."""
    admin = admins(gateway_with_ui.url)
    assert (await admin.login()).startswith("40/admin,")
    refused = probes()
    assert not await refused.connect(gateway_with_ui.url, auth={"ticket": "no-such-ticket-0123456789abcdef"})
    accepted = probes()
    assert await accepted.connect(gateway_with_ui.url, auth={"token": gateway_with_ui.mint("alice")})
    sid = accepted.client.get_sid("/")
    await admin.wait_for(lambda frame: '"socket_connected"' in frame and sid in frame)
    reported = set(admin.reported_sockets())
    assert sid in reported
    assert all(socket["nsp"] == ADMIN_NAMESPACE or name == sid for name, socket in admin.reported_sockets().items())
    assert "no-such-ticket" not in "\n".join(admin.frames)
    assert reported and admin.events("room_left") == []


async def test_a_polling_socket_is_reported_upgraded(
    gateway_with_ui: Gateway, admins: Callable[[str], RawAdmin], probes: Callable[[], Probe]
) -> None:
    admin = admins(gateway_with_ui.url)
    assert (await admin.login()).startswith("40/admin,")
    probe = probes()
    assert await probe.connect(
        gateway_with_ui.url, auth={"token": gateway_with_ui.mint("alice")}, transports=("polling", "websocket")
    )
    sid = probe.client.get_sid("/")
    await admin.wait_for(lambda frame: '"socket_connected"' in frame and sid in frame)
    if admin.reported_sockets()[sid]["transport"] == "polling":  # the upgrade came after the report
        await admin.wait_for(lambda frame: '"socket_updated"' in frame and sid in frame)
        assert [update for [update] in admin.events("socket_updated") if update["id"] == sid] == [
            {"id": sid, "nsp": "/", "transport": "websocket"}
        ]
    else:  # or before it: the report says so
        assert admin.reported_sockets()[sid]["transport"] == "websocket"
    assert probe.client.transport() == "websocket"


async def test_a_recovered_socket_shows_no_pid_and_no_offset(
    make_gateway: MakeGateway, admins: Callable[[str], RawAdmin], probes: Callable[[], Probe]
) -> None:
    """Connection state recovery: a reconnect sends the old socket's pid and its
    offset in ``auth`` (a client may put them in the query too); the pid is a
    credential for the old socket's rooms, and every room event carries an offset."""
    gateway = await make_gateway(admin_ui=True, recovery_window=60, public_rooms=["room:*"])
    admin = admins(gateway.url)
    assert (await admin.login()).startswith("40/admin,")
    first = probes()
    assert await first.connect(gateway.url, auth={"token": gateway.mint("alice")})
    await first.wait_for("authenticated")
    assert (await first.call("join", {"room": "room:lobby"}))["ok"] is True
    await gateway.publish("room:lobby", "tick", {"n": 1})
    await first.wait_for("tick")
    [conn] = [conn for conn in gateway.app[keys.realtime].registry.conns() if conn.sub == "alice"]
    secrets = Secrets()
    pid, offset = secrets.add("pid", str(conn.pid)), secrets.add("offset", first.offsets[0])
    await admin.wait_for(lambda frame: '"room_joined"' in frame and "room:lobby" in frame)
    await first.client.eio.ws.close()  # lost, as a network loses it: recoverable
    await asyncio.wait_for(first.disconnected.wait(), 5)
    await gateway.publish("room:lobby", "tick", {"n": 2})
    again = probes()
    auth = {"token": gateway.mint("alice"), "pid": pid, "offset": offset}
    assert await again.connect(gateway.url, auth=auth, query=f"pid={pid}&offset={offset}")
    assert (await again.wait_for("authenticated"))["recovered"] is True
    await again.wait_for("tick")
    secrets.add("offset after recovery", again.offsets[-1])
    sid = again.client.get_sid("/")
    await admin.wait_for(lambda frame: '"socket_connected"' in frame and sid in frame)
    assert secrets.leaked("\n".join(admin.frames)) == []
    reported = admin.reported_sockets()[sid]
    assert {"user:alice", "room:lobby"} <= set(reported["rooms"]), reported
    assert reported["handshake"]["query"][OTHER_PARAMETERS] == REDACTED


async def test_the_ui_can_take_no_action(
    gateway_with_ui: Gateway, admins: Callable[[str], RawAdmin], probes: Callable[[], Probe]
) -> None:
    """The Admin UI's actions (emit, join, leave, disconnect) would bypass the
    gateway's rules on rooms and disconnects: none is served, whatever is sent."""
    gateway = gateway_with_ui
    probe = probes()
    assert await probe.connect(gateway.url, auth={"token": gateway.mint("alice")})
    await probe.wait_for("authenticated")
    sid = probe.client.get_sid("/")
    admin = admins(gateway.url)
    assert (await admin.login()).startswith("40/admin,")
    assert admin._ws is not None
    actions = [
        ["emit", "/", sid, "injected", {"from": "admin"}],
        ["emit", "/", "user:alice", "injected", {"from": "admin"}],
        ["join", "/", "room:private", sid],
        ["leave", "/", "user:alice", sid],
        ["_disconnect", "/", True, sid],
    ]
    for number, action in enumerate(actions):
        await admin._ws.send_str(f"42/admin,{number}" + json.dumps(action))
    await asyncio.sleep(1.0)
    assert probe.named("injected") == [] and not probe.disconnected.is_set()
    rooms = gateway.app[keys.realtime].sio.manager.get_rooms(sid, "/")
    assert "user:alice" in rooms and "room:private" not in rooms, rooms
    assert not [frame for frame in admin.frames if frame.startswith("43/admin,")]  # no action acknowledged
    assert not admin.closed


def test_the_query_keeps_known_names_and_no_value() -> None:
    assert redact_query("EIO=4&transport=polling&t=P1a2b3c") == {"EIO": "4", "transport": "polling", "t": REDACTED}
    assert redact_query("EIO=3&transport=evil") == {"EIO": REDACTED, "transport": REDACTED}
    assert redact_query("ticket=a&token=b&refreshToken=c&wsToken=d&sessionId=e") == {
        "ticket": REDACTED,
        "token": REDACTED,
        "wsToken": REDACTED,
        "sessionId": REDACTED,
        OTHER_PARAMETERS: REDACTED,  # refreshToken is never read from a query: not a name the gateway knows
    }
    # A name may be anything a client sends, a credential too.
    assert redact_query("eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln") == {OTHER_PARAMETERS: REDACTED}
    assert redact_query("") == {}


# -- python-socketio's internals this relies on ---------------------------------------------


def test_python_socketios_instrumentation_keeps_its_shape() -> None:
    """handlers/admin_ui.py subclasses InstrumentedAsyncServer: its __init__ calls
    instrument() and starts the stats task from the Engine.IO connect hook."""
    parameters = list(inspect.signature(InstrumentedAsyncServer.__init__).parameters)
    assert parameters == [
        "self",
        "sio",
        "auth",
        "namespace",
        "read_only",
        "server_id",
        "mode",
        "server_stats_interval",
    ]
    init = inspect.getsource(InstrumentedAsyncServer.__init__)
    for line in ("self.admin_namespace = namespace", "self.event_buffer = EventBuffer()", "self.instrument()"):
        assert line in init, line
    connecting = inspect.getsource(InstrumentedAsyncServer._handle_eio_connect)
    for line in (
        "self.stats_task = self.sio.start_background_task(",
        "self._emit_server_stats)",
        "self.event_buffer.push('rawConnection')",
        "return await self.sio._handle_eio_connect(eio_sid, environ)",
    ):
        assert line in connecting, line
    assert "return await self.sio._handle_eio_disconnect(eio_sid, reason)" in inspect.getsource(
        InstrumentedAsyncServer._handle_eio_disconnect
    )
    replaced = ("instrument", "admin_connect", "serialize_socket", "_trigger_event", "_emit_server_stats")
    for name in replaced:
        assert callable(getattr(InstrumentedAsyncServer, name)), name
    assert list(inspect.signature(InstrumentedAsyncServer.serialize_socket).parameters) == [
        "self",
        "sid",
        "namespace",
        "eio_sid",
    ]
    # The server's side: handlers run through _trigger_event(event, namespace, *args);
    # a refused connect raises or returns False; connect handlers get (sid, environ, auth).
    assert list(inspect.signature(AsyncServer._trigger_event).parameters) == ["self", "event", "namespace", "args"]
    connect = inspect.getsource(AsyncServer._handle_connect)
    for line in (
        "'connect', namespace, sid, self.environ[eio_sid], data)",
        "if success is False:",
        "await self.manager.disconnect(sid, namespace, ignore_queue=True)",
    ):
        assert line in connect, line
    assert "await self._trigger_event('disconnect', namespace, sid," in inspect.getsource(
        AsyncServer._handle_disconnect
    )
