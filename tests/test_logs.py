"""No secrets in logs (STYLE "Logging", PROTOCOL §3 "query values are never logged"),
yet every connect and every refusal is logged with its reason.

A real gateway process (both engines) goes through every way a credential
reaches it: tickets and tokens in the ``auth`` object and in the query string,
over WebSocket and long-polling, an ``authenticate`` event, a refresh token,
Bearer headers (the admin token among them), refusals of every kind, oversized
request lines and headers that aiohttp's parser rejects. Then it is stopped and
its whole output (stdout + stderr) is searched: no credential, whole or in part
(a JWT's payload or signature), and no query-string value may appear, while the
expected connect and refusal lines must.

Then the start of a process (PROTOCOL §1, §6.10): the first log line, the
warning about ephemeral keys, the `--demo` lines, and the ``ticketgate``
console script with every `serve` flag.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.auth.tokens import TokenService
from gateway.config import load_config
from tests.support import (
    GatewayProcess,
    Probe,
    RedisServer,
    free_port,
    http_json,
    issue_ticket,
    wait_for_port,
    write_toml,
)

pytestmark = pytest.mark.timeout(90)

CONNECT_LINE = re.compile(r"\bconnect sid=\S+ sub=(\S+) via=(\w+)")
REFUSED_LINE = re.compile(r"\bconnect refused sid=\S+ code=(\d+) reason=(\w+)")


class Secrets:
    """Every secret the flows below hand to the gateway, to look for in its log."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    def add(self, label: str, value: str) -> str:
        self.values[label] = value
        return value

    def add_jwt(self, label: str, value: str) -> str:
        """A JWT: its payload and its signature alone are secret too."""
        _, payload, signature = value.split(".")
        self.values[f"{label} (payload)"] = payload
        self.values[f"{label} (signature)"] = signature
        return self.add(label, value)

    def leaked(self, text: str) -> list[str]:
        return [label for label, value in self.values.items() if value and value in text]


async def raw_request(port: int, head: str) -> bytes:
    """Send a raw HTTP/1.1 request head; the response's first bytes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head.encode())
        await writer.drain()
        return await asyncio.wait_for(reader.read(200), timeout=5)
    finally:
        writer.close()


async def polling_refusal(url: str, query: str) -> Any:
    """A Socket.IO connect over bare Engine.IO long-polling requests, credentials in
    the query string of every one of them (as a seed-style client sends them); the
    refusal's data. (python-socketio's client would take ~30 s to give up on a
    refused polling connect: it waits out the pending long-poll.)"""
    base = f"{url}/socket.io/?EIO=4&transport=polling&{query}"
    status, opening, _ = await http_json("GET", base)
    assert status == 200 and isinstance(opening, str) and opening.startswith("0{"), opening
    sid = json.loads(opening[1:])["sid"]
    status, body, _ = await http_json("POST", f"{base}&sid={sid}", data=b"40")
    assert status == 200, body
    status, body, _ = await http_json("GET", f"{base}&sid={sid}")
    assert status == 200 and isinstance(body, str) and body.startswith("44"), body
    return json.loads(body[2:])["data"]


async def run_flows(
    node: GatewayProcess, settings: dict[str, Any], probes: Callable[[], Probe], http_client: aiohttp.ClientSession
) -> dict[str, Any]:
    """Every credential path against ``node``; what the log must show, and what it must not."""
    url = node.url
    tokens = TokenService(config=load_config(environ={}, flags=settings))
    stranger = TokenService(config=load_config(environ={}, flags={}))  # a key the gateway does not trust
    secrets = Secrets()
    secrets.add("admin token", settings["admin_token"])
    secrets.add("HMAC secret", settings["secret"])
    secrets.add("signing key (d)", json.loads(settings["signing_key"])["d"])

    def mint(label: str, sub: str, **kwargs: Any) -> str:
        return secrets.add_jwt(label, tokens.mint(sub, **kwargs)[0])

    accepted: list[tuple[str, str]] = []  # (sub, via) of every connect that must succeed
    refused: collections.Counter[str] = collections.Counter()  # reason of every refused connect
    sockets: list[Probe] = []
    kept: list[aiohttp.ClientWebSocketResponse] = []

    async def connect(sub: str, via: str, **kwargs: Any) -> Probe:
        probe = probes()
        assert await probe.connect(url, **kwargs), probe.connect_error
        assert (await probe.wait_for("authenticated"))["sub"] == sub
        accepted.append((sub, via))
        sockets.append(probe)
        return probe

    async def refuse(reason: str, **kwargs: Any) -> None:
        probe = probes()
        assert not await probe.connect(url, **kwargs)
        assert probe.connect_error["data"]["reason"] == reason, probe.connect_error
        refused[reason] += 1

    # -- tickets, issued with a Bearer token
    ws_ticket = secrets.add("ticket (auth, websocket)", await issue_ticket(url, mint("token for ticket 1", "t-ws")))
    await connect("t-ws", "ticket", auth={"ticket": ws_ticket})
    poll_ticket = secrets.add("ticket (auth, polling)", await issue_ticket(url, mint("token for ticket 2", "t-poll")))
    await connect("t-poll", "ticket", auth={"ticket": poll_ticket}, transports=("polling",))
    query_ticket = secrets.add("ticket (query)", await issue_ticket(url, mint("token for ticket 3", "t-query")))
    await connect("t-query", "ticket", query=f"ticket={query_ticket}", transports=("polling",))
    query_ws_ticket = secrets.add("ticket (query, ws)", await issue_ticket(url, mint("token for ticket 4", "t-qws")))
    await connect("t-qws", "ticket", query=f"ticket={query_ws_ticket}")

    # -- tokens
    await connect("k-auth", "token", auth={"token": mint("token (auth)", "k-auth")})
    query_token = mint("token (query)", "k-query")
    await connect("k-query", "token", query=f"token={query_token}", transports=("polling",))

    # -- deferred authentication: the credential arrives in an event
    deferred = probes()
    assert await deferred.connect(url)
    ack = await deferred.call("authenticate", {"token": mint("token (authenticate)", "k-deferred")})
    assert ack["ok"] is True, ack
    accepted.append(("k-deferred", "token"))
    bad_ack = await deferred.call(
        "authenticate", {"ticket": secrets.add("ticket (authenticate, garbage)", "Zz" * 21 + "Q")}
    )
    assert bad_ack["ok"] is False, bad_ack
    sockets.append(deferred)

    # -- refresh tokens the gateway pushed, one of them presented back
    for index, probe in enumerate(sockets):
        pushed = await probe.wait_for("refresh_token")
        secrets.add(f"refresh token {index}", pushed["refreshToken"])
    rotated_from = (await sockets[0].wait_for("refresh_token"))["refreshToken"]
    refresh_probe = await connect("t-ws", "refresh", auth={"refreshToken": rotated_from})
    secrets.add("refresh token (rotated)", (await refresh_probe.wait_for("refresh_token"))["refreshToken"])

    # -- auth sessions: a wsToken in the auth object, and in the raw WebSocket's query
    live = len(sockets)
    for transport in ("socket.io", "raw"):
        status, session, _ = await http_json("POST", f"{url}/auth/initiate", json={"userId": "s-user"})
        assert status == 201, session
        ws_token = secrets.add(f"wsToken ({transport})", session["wsToken"])
        # Whoever knows a session id can spend its verify attempts: not logged either.
        secrets.add(f"sessionId ({transport})", session["sessionId"])
        wrong = secrets.add(f"wrong wsToken ({transport})", "w" * 43)
        if transport == "socket.io":
            probe = probes()
            assert await probe.connect(url, auth={"sessionId": session["sessionId"], "wsToken": ws_token})
            assert (await probe.wait_for("authenticated"))["via"] == "session"
            await refuse("invalid_token", auth={"sessionId": session["sessionId"], "wsToken": wrong})
        else:
            raw = f"{url.replace('http', 'ws', 1)}/ws/session/{session['sessionId']}"
            refused_ws = await http_client.ws_connect(f"{raw}?token={wrong}")
            assert (await refused_ws.receive(timeout=5)).type == aiohttp.WSMsgType.CLOSE
            assert refused_ws.close_code == 4001
            open_ws = await http_client.ws_connect(f"{raw}?token={ws_token}")
            assert json.loads((await open_ws.receive(timeout=5)).data)["type"] == "otp_ready"
            kept.append(open_ws)  # open until the node stops
        live += 1

    # -- refusals
    await refuse("invalid_ticket", auth={"ticket": ws_ticket})  # used
    await refuse("invalid_ticket", auth={"ticket": secrets.add("garbage ticket", "garbage-ticket-7f3a9c")})
    await refuse("invalid_ticket", query=f"ticket={secrets.add('garbage ticket (query)', 'q' * 43)}")
    for query in (f"ticket={poll_ticket}", f"ticket={secrets.add('garbage ticket (polling)', 'g' * 43)}"):
        assert await polling_refusal(url, query) == {"code": 4001, "reason": "invalid_ticket"}
        refused["invalid_ticket"] += 1
    refused_token = secrets.add("garbage token (polling)", "garbage-token-9d2c")
    assert await polling_refusal(url, f"token={refused_token}") == {"code": 4001, "reason": "invalid_token"}
    refused["invalid_token"] += 1
    good = mint("token to tamper", "k-bad")
    head, _, signature = good.rpartition(".")
    tampered = secrets.add_jwt("tampered token", f"{head}.{signature[::-1]}")
    await refuse("invalid_token", auth={"token": tampered})
    await refuse("invalid_token", query=f"token={secrets.add('garbage token (query)', 'not.a.jwt-5e1d')}")
    await refuse("invalid_token", auth={"token": secrets.add_jwt("foreign token", stranger.mint("k-bad")[0])})
    await refuse("token_expired", auth={"token": mint("expired token", "k-old", ttl=60, now=time.time() - 3600)})
    oversized = mint("oversized token", "k-big", claims={"pad": "p" * 9000})  # > 8 KB, < the 16 KB header limit
    await refuse("invalid_token", auth={"token": oversized})
    await refuse("ambiguous_credentials", auth={"ticket": "x" * 43, "token": mint("ambiguous token", "k-amb")})

    # -- HTTP: Bearer headers, bad and good, the admin API
    status, _, _ = await http_json("POST", f"{url}/ws/ticket", token=tampered)
    assert status == 401
    status, _, _ = await http_json("POST", f"{url}/ws/ticket", token=oversized)
    assert status == 401
    status, _, _ = await http_json(
        "POST", f"{url}/api/publish", token=secrets.add("wrong admin token", "wrong-admin-token-0000000000000")
    )
    assert status == 401
    status, body, _ = await http_json(
        "POST",
        f"{url}/api/publish",
        token=settings["admin_token"],
        json={"room": "user:k-auth", "event": "note", "data": {"n": 1}},
    )
    assert status == 202, body
    assert await sockets[4].wait_for("note") == {"n": 1}

    # -- what aiohttp's parser refuses: a request line and a header field too long
    canary = secrets.add("query canary", "canary-" + "c" * 9000)
    answer = await raw_request(
        node.port, f"GET /socket.io/?EIO=4&transport=polling&ticket={canary} HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    assert re.match(rb"HTTP/1\.[01] 4\d\d ", answer), answer
    huge = mint("huge token", "k-huge", claims={"pad": "h" * 20000})  # > the 16 KB header field limit
    answer = await raw_request(
        node.port, f"POST /ws/ticket HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {huge}\r\nContent-Length: 0\r\n\r\n"
    )
    assert re.match(rb"HTTP/1\.[01] 4\d\d ", answer), answer

    # -- a query string with nothing to do with credentials is not logged either
    plain = secrets.add("plain query value", "plain-value-b41e")
    status, _, _ = await http_json("GET", f"{url}/healthz?note={plain}")
    assert status == 200
    # A refused Origin is logged, without anything of the request.
    status, _, _ = await http_json(
        "GET",
        f"{url}/socket.io/?EIO=4&transport=polling&ticket={query_ws_ticket}",
        headers={"Origin": "http://evil.example"},
    )
    assert status == 403

    # The sockets stay connected: the node's shutdown closes them (`closing` 1001).
    return {"secrets": secrets, "accepted": accepted, "refused": refused, "live": live, "kept": kept}


async def test_logs_hold_every_connect_and_refusal_but_no_secret(
    engine: str,
    settings: dict[str, Any],
    gateway_process: Callable[..., GatewayProcess],
    probes: Callable[[], Probe],
) -> None:
    # log_level debug: the line per connect and disconnect (INFO keeps refusals only).
    node = gateway_process({**settings, "log_level": "debug"}, name=f"logs-{engine}")
    node.start()
    async with aiohttp.ClientSession() as http_client:
        try:
            outcome = await run_flows(node, settings, probes, http_client)
        finally:
            # In a thread: this loop must keep running for the clients to answer the node's close.
            status = await asyncio.to_thread(node.terminate)
    assert status == 0
    log = node.log()

    secrets: Secrets = outcome["secrets"]
    assert secrets.leaked(log) == [], [line for line in log.splitlines() if secrets.leaked(line)][:5]
    # Positive checks: the log is the gateway's, complete, and says what happened.
    assert f"ticketgate listening on {node.url} engine={engine} mode=normal" in log
    assert re.search(r"127\.0\.0\.1 POST /ws/ticket 201 ", log)
    assert re.search(r"127\.0\.0\.1 GET /healthz 200 ", log)
    assert "refused handshake: origin_not_allowed" in log
    assert "raw session socket refused reason=invalid_token" in log
    assert re.search(r"raw session socket raw:\S+ connected", log)
    assert re.search(r"127\.0\.0\.1 GET /ws/session/\.\.\. 101 ", log)  # the raw socket, its id left out
    assert re.search(r"connect sid=\S+ session via=session", log)
    assert "event authenticate from sid=" in log and "refused: invalid_ticket" in log
    assert sorted(CONNECT_LINE.findall(log)) == sorted(outcome["accepted"])
    logged_refusals = collections.Counter(reason for _, reason in REFUSED_LINE.findall(log))
    assert logged_refusals == outcome["refused"]
    assert all(code == "4001" for code, _ in REFUSED_LINE.findall(log))
    assert f"drained: sent closing 1001 to {outcome['live']} sockets" in log


async def test_at_info_a_connect_is_counted_not_logged_but_a_refusal_is(
    settings: dict[str, Any], gateway_process: Callable[..., GatewayProcess], probes: Callable[[], Probe]
) -> None:
    """The default log_level (info): a line per refused connect, none per accepted
    connect, disconnect or Socket.IO request (their cost was measurable; /metrics counts them)."""
    node = gateway_process(settings, name="info")
    node.start()
    tokens = TokenService(config=load_config(environ={}, flags=settings))
    accepted, refused = probes(), probes()
    assert await accepted.connect(node.url, auth={"token": tokens.mint("alice")[0]}, transports=("polling",))
    await accepted.wait_for("authenticated")
    assert not await refused.connect(node.url, auth={"ticket": "x" * 43})
    await accepted.close()
    assert await asyncio.to_thread(node.terminate) == 0
    log = node.log()
    assert REFUSED_LINE.search(log) and not CONNECT_LINE.search(log)
    assert "disconnect sid=" not in log and "GET /socket.io/" not in log


FORGED = "2026-01-01 00:00:00,000 INFO gateway: connect sid=forged sub=admin via=token"


async def test_a_client_cannot_write_a_line_or_a_control_character_into_the_log(
    gateway_process: Callable[..., GatewayProcess], probes: Callable[[], Probe]
) -> None:
    """Request paths are logged percent-decoded, event names as sent: a ``%0A``
    in a path wrote a forged record of its own, a ``%1B`` an escape sequence
    for the terminal showing the log. Every control character (C0, DEL, C1,
    U+2028/9) of a message is escaped by the CLI's formatter, readable."""
    node = gateway_process({}, name="injection")
    node.start()
    forged = FORGED.replace(" ", "%20")
    for path in (
        f"/healthz%0A{forged}",
        f"/nope%0D%0A{forged}",
        f"/nope%C2%85{forged}",  # NEL, a C1 line break
        f"/nope%E2%80%A8{forged}",  # LINE SEPARATOR
        "/nope%1B[2J%07%7F%00",  # clear the screen, bell, DEL, NUL
    ):
        answer = await raw_request(node.port, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 404 "), answer
    # engine.io logs an unknown session id from the query string ("Invalid session ...").
    poll = f"/socket.io/?EIO=4&transport=polling&sid=x%0A{forged}"
    answer = await raw_request(node.port, f"GET {poll} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    probe = probes()
    assert await probe.connect(node.url)  # deferred: its first event must be `authenticate`
    await probe.client.emit(f"hello\n{FORGED}", {})
    assert (await probe.wait_for("closing"))["reason"] == "unauthenticated"
    assert await asyncio.to_thread(node.terminate) == 0
    log = node.log()

    forged_lines = [line for line in log.splitlines() if line.startswith(FORGED[:23])]
    assert forged_lines == [], forged_lines
    controls = [c for c in log if (ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) < 0xA0 or c in "\u2028\u2029"]
    assert controls == [], controls
    # Escaped, the request stays readable in its access line.
    assert re.search(r"127\.0\.0\.1 GET /healthz\\n2026-01-01 00:00:00,000 INFO gateway: connect sid=forged", log)
    assert "GET /nope\\r\\n2026-01-01" in log and "GET /nope\\x852026-01-01" in log
    assert "GET /nope\\u20282026-01-01" in log and "GET /nope\\x1b[2J\\x07\\x7f\\x00 404" in log
    assert "sent hello\\n2026-01-01 00:00:00,000 INFO gateway: connect sid=forged" in log
    assert "Invalid session x\\n2026-01-01 00:00:00,000 INFO gateway: connect sid=forged" in log


# -- the start of a process (PROTOCOL §1, §6.10)

LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?P<level>[A-Z]+) (?P<name>[\w.]+): (?P<message>.*)$")


def start_line(host: str, port: int, engine: str, mode: str) -> re.Pattern[str]:
    """The start line as a whole log record: `ticketgate listening on ... engine=... mode=...`."""
    return re.compile(
        rf"^\S+ \S+ INFO gateway: ticketgate listening on http://{re.escape(host)}:{port} engine={engine} mode={mode}$"
    )


async def wait_for_line(read: Callable[[], str], pattern: re.Pattern[str], *, timeout: float = 10.0) -> re.Match[str]:
    """The first line of the output ``read`` returns that matches ``pattern``, once it is there.

    The port opens a moment before the start lines are written: wait for them
    (the process also installs its SIGTERM handler only after printing them)."""
    deadline = time.monotonic() + timeout
    while True:
        for line in read().splitlines():
            if found := pattern.search(line):
                return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"no line matches {pattern.pattern!r} after {timeout}s:\n{read()}")
        await asyncio.sleep(0.05)


def ephemeral_warnings(log: str) -> list[str]:
    return [line for line in log.splitlines() if " WARNING " in line and "ephemeral" in line]


async def test_console_script_serves_with_every_flag(
    tmp_path: Path, redis_server: RedisServer, cluster_keys: dict[str, str]
) -> None:
    """`ticketgate serve --host H --port P --redis-url URL --config F` through the
    installed console script. The file says another host and no redis_url, so
    only the flags can make the start line say 127.0.0.1 and engine=redis."""
    script = Path(sys.executable).with_name("ticketgate")
    assert script.is_file(), f"{script}: the console script is not installed (pip install -e .)"
    config = write_toml(tmp_path / "keys.toml", {**cluster_keys, "host": "127.0.0.2"})
    port = free_port()
    log_file = tmp_path / "console.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TICKETGATE_")}
    env["PYTHONUNBUFFERED"] = "1"
    args = [
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--redis-url",
        redis_server.url,
        "--config",
        str(config),
    ]
    with log_file.open("ab") as log:
        proc = subprocess.Popen([str(script), *args], stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, env=env)
    try:
        wait_for_port(port, proc=proc, timeout=20)
        await wait_for_line(log_file.read_text, start_line("127.0.0.1", port, "redis", "normal"))
        status, body, _ = await http_json("GET", f"http://127.0.0.1:{port}/healthz")
        assert (status, body) == (200, {"status": "ok"})
        status, body, _ = await http_json("GET", f"http://127.0.0.1:{port}/readyz")  # pings the real Redis
        assert (status, body) == (200, {"status": "ready"})
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            status = await asyncio.to_thread(proc.wait, 15)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert status == 0
    lines = log_file.read_text().splitlines()
    assert start_line("127.0.0.1", port, "redis", "normal").match(lines[0]), lines[:3]
    assert ephemeral_warnings("\n".join(lines)) == []  # the keys came from the file


@pytest.mark.parametrize("configured", [(), ("signing_key",), ("secret",)])
async def test_missing_keys_are_generated_with_a_warning(
    configured: tuple[str, ...], cluster_keys: dict[str, str], gateway_process: Callable[..., GatewayProcess]
) -> None:
    """PROTOCOL §1: without a configured signing key and secret the (memory)
    gateway generates ephemeral ones and logs a warning naming them; the start
    line stays the first log line."""
    node = gateway_process({name: cluster_keys[name] for name in configured}, name="ephemeral")
    node.start()
    await wait_for_line(node.log, start_line("127.0.0.1", node.port, "memory", "normal"))
    status, body, _ = await http_json("GET", f"{node.url}/.well-known/jwks.json")
    assert status == 200 and len(body["keys"]) >= 1, body  # a key there is, generated or not
    assert await asyncio.to_thread(node.terminate) == 0
    log = node.log()
    [warning] = ephemeral_warnings(log)
    record = LOG_RECORD.match(warning)
    assert record is not None and record["level"] == "WARNING", warning
    assert "signing_key" in record["message"] and "secret" in record["message"], warning
    assert "ticketgate keygen" in record["message"], warning  # it says what to do
    assert start_line("127.0.0.1", node.port, "memory", "normal").match(log.splitlines()[0]), log.splitlines()[:3]


async def test_demo_start_lines_and_the_generated_admin_token(
    gateway_process: Callable[..., GatewayProcess],
) -> None:
    """PROTOCOL §1 and §6.10 for `ticketgate serve --demo` as `make run` starts it:
    no keys and no admin_token configured. The first log line is the start line;
    the demo URL and the generated admin token are printed, the token once, and
    that token is the one the admin API takes."""
    node = gateway_process({}, name="demo", extra_args=("--demo",))
    node.start()
    token = (await wait_for_line(node.log, re.compile(r"^demo admin token: (\S+)$")))[1]
    try:
        status, page, _ = await http_json("GET", f"{node.url}/demo/")
        assert status == 200 and "<html" in page.lower()
        note = {"room": "room:demo-lobby", "event": "note", "data": {"n": 1}}
        status, body, _ = await http_json("POST", f"{node.url}/api/publish", token=token, json=note)
        assert status == 202, body
        for wrong in (token[:-1] + ("A" if token[-1] != "A" else "B"), "admin-token-for-tests-0123456789"):
            status, body, _ = await http_json("POST", f"{node.url}/api/publish", token=wrong, json=note)
            assert status == 401, body
    finally:
        status = await asyncio.to_thread(node.terminate)
    assert status == 0
    lines = node.log().splitlines()
    assert start_line("127.0.0.1", node.port, "memory", "demo").match(lines[0]), lines[:3]
    assert f"demo: {node.url}/demo/" in lines
    assert [line for line in lines if line.startswith("demo admin token: ")] == [f"demo admin token: {token}"]
    assert sum(token in line for line in lines) == 1  # printed once, and never logged again
