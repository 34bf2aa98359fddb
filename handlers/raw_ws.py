"""``GET /ws/session/{sessionId}?token={wsToken}``: the IDToken-compatible
plain WebSocket (seed 000, PROTOCOL §4).

The socket is upgraded first, because a browser sees a close code only on an
open WebSocket; then it is checked (4001 bad wsToken, 4004 unknown session),
registered in the room ``session:<id>`` of the shared fan-out, and sent
``otp_ready``. Later events arrive through Realtime.deliver_raw on any node.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from aiohttp import WSMsgType, web

from gateway import closes, keys
from gateway.auth.sessions import session_room
from gateway.closes import Close
from gateway.errors import GatewayError, InvalidRequest, InvalidToken
from gateway.formats import iso_z
from handlers import schemas
from handlers.errors import Surface, code_for

logger = logging.getLogger(__name__)

# The endpoint's path, before the session id (which the access log leaves out).
PATH_PREFIX = "/ws/session/"


class RawSessionSocket:
    def __init__(self, ws: web.WebSocketResponse, *, seq: int) -> None:
        self.id = "raw:" + secrets.token_urlsafe(9)
        self.seq = seq
        self._ws = ws

    async def send_event(self, event: str, data: Any) -> None:
        if not self._ws.closed:
            await self._ws.send_json(data)

    async def close(self, close: Close) -> None:
        await self._ws.close(code=close.code, message=close.reason.encode())


async def session_socket(request: web.Request) -> web.StreamResponse:
    ws = web.WebSocketResponse(heartbeat=25, max_msg_size=4096)
    await ws.prepare(request)
    session_id = request.match_info["sessionId"]
    realtime = request.app[keys.realtime]
    metrics = request.app[keys.metrics]
    room = session_room(session_id)
    try:
        if realtime.draining:
            await ws.close(code=closes.GOING_AWAY.code, message=closes.GOING_AWAY.reason.encode())
            return ws
        await request.app[keys.rate_limits].connect(request.remote or "unknown")
        params = {"sessionId": session_id, "token": request.query.get("token", "")}
        try:
            schemas.load(schemas.RawSessionParams, params)
        except InvalidRequest:
            # PROTOCOL §6.13: the wsToken is judged first, and a malformed one is wrong.
            raise InvalidToken("malformed sessionId or token") from None
        opened = await request.app[keys.sessions].open(session_id, params["token"])
        raw = RawSessionSocket(ws, seq=opened.seq)
        await realtime.add_raw(room, raw)
    except GatewayError as exc:
        metrics.connect_attempts.labels("refused", exc.reason).inc()
        logger.info("raw session socket refused reason=%s", exc.reason)
        await ws.close(code=code_for(exc, Surface.RAW), message=exc.reason.encode())
        return ws
    if await request.app[keys.sessions].superseded(session_id, opened.seq):  # see SessionService.superseded
        realtime.remove_raw(room, raw)
        await raw.close(closes.REPLACED)
        return ws
    metrics.connect_attempts.labels("accepted", "raw_session").inc()
    timer = realtime.scheduler.at(opened.expires_at, raw.close, closes.EXPIRED)
    logger.info("raw session socket %s connected", raw.id)
    try:
        otp_ready = {"type": "otp_ready", "autoPassword": opened.auto_password, "expiresAt": iso_z(opened.expires_at)}
        await raw.send_event("otp_ready", otp_ready)
        async for message in ws:  # the protocol is server -> client; read only to see the close
            if message.type == WSMsgType.ERROR:
                break
    finally:
        realtime.scheduler.cancel(timer)
        realtime.remove_raw(room, raw)
        logger.info("raw session socket %s closed", raw.id)
    return ws
