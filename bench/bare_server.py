"""The baseline: a bare python-socketio server on aiohttp that accepts every connect.

It runs its handlers inline (``async_handlers=False``) as the gateway does, so the
ratios measure what authentication costs, not the task python-socketio's default
spawns for every packet (which made the bare server slower than a ticket connect).
"""

from __future__ import annotations

import sys

import socketio
from aiohttp import web


def main() -> None:
    sio = socketio.AsyncServer(async_mode="aiohttp", async_handlers=False, logger=False, engineio_logger=False)

    @sio.event
    async def connect(sid: str, environ: object, auth: object = None) -> None:
        return None

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/healthz", healthz)  # the bench wakes each server before a timed connect
    sio.attach(app)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)


if __name__ == "__main__":
    main()
