"""The baseline: a bare python-socketio server on aiohttp that accepts every connect."""

from __future__ import annotations

import sys

import socketio
from aiohttp import web


def main() -> None:
    sio = socketio.AsyncServer(async_mode="aiohttp", logger=False, engineio_logger=False)

    @sio.event
    async def connect(sid: str, environ: object, auth: object = None) -> None:
        return None

    app = web.Application()
    sio.attach(app)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)


if __name__ == "__main__":
    main()
