"""The python-socketio baseline of ``make bench``: bare python-socketio on aiohttp
doing what the bench asks of every server (the same as bench/node_server.mjs):
verify an ES256 JWT at connect (PyJWT, the gateway's public key), join
``user:<sub>``, emit ``authenticated``, and ``POST /api/publish`` to a room.

It runs its handlers inline (``async_handlers=False``) as the gateway does, so
the ratios measure the gateway's own work, not the task python-socketio's
default spawns for every packet.

With a Redis URL it runs python-socketio's ``AsyncRedisManager``: every emit
goes to every process on one channel (the unrouted fan-out ticketgate had
before issue #13).

    python -m bench.bare_server PORT PUBLIC_JWK_JSON ADMIN_TOKEN [REDIS_URL]
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any

import jwt
import socketio
from aiohttp import web


def main() -> None:
    port, public_jwk, admin = int(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
    key = jwt.PyJWK(public_jwk, algorithm="ES256")
    manager = socketio.AsyncRedisManager(sys.argv[4]) if len(sys.argv) > 4 else None
    sio = socketio.AsyncServer(
        async_mode="aiohttp", client_manager=manager, async_handlers=False, logger=False, engineio_logger=False
    )

    @sio.event
    async def connect(sid: str, environ: object, auth: Any = None) -> None:
        token = auth.get("token", "") if isinstance(auth, dict) else ""
        try:
            claims = jwt.decode(token, key.key, algorithms=["ES256"], issuer="ticketgate")
        except jwt.PyJWTError:
            raise socketio.exceptions.ConnectionRefusedError(
                "invalid token", {"code": 4001, "reason": "invalid_token"}
            ) from None
        await sio.enter_room(sid, f"user:{claims['sub']}")
        expires = datetime.fromtimestamp(claims["exp"], UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        await sio.emit("authenticated", {"sub": claims["sub"], "expiresAt": expires, "via": "token"}, to=sid)

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def publish(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {admin}":
            return web.json_response({"error": {"code": "invalid_token"}}, status=401)
        body = await request.json()
        await sio.emit(body["event"], body["data"], room=body["room"])
        return web.json_response({"room": body["room"], "event": body["event"]}, status=202)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_post("/api/publish", publish)
    sio.attach(app)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__":
    main()
