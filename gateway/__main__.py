"""The ``ticketgate`` CLI: parse args -> load_config -> run create_app(config)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from aiohttp import web

from gateway import keys, workers
from gateway.app import create_app, create_runner
from gateway.auth.tokens import TokenService
from gateway.config import Config, encode_secret, generate_signing_key, load_config
from gateway.errors import ConfigError, StartupError
from gateway.logs import configure_logging
from handlers.http import RedactParserErrors

logger = logging.getLogger("gateway")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ticketgate", description="Authenticated real-time gateway.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run a gateway")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--config", metavar="FILE.toml")
    serve.add_argument("--redis-url", dest="redis_url", metavar="URL")
    serve.add_argument(
        "--redis-cluster", action="store_const", const=True, default=None, help="--redis-url is a Redis Cluster node"
    )
    serve.add_argument(
        "--recovery-window", dest="recovery_window", type=float, metavar="SECONDS", help="0 turns recovery off"
    )
    serve.add_argument("--demo", action="store_const", const=True, default=None, help="serve the web demo")
    serve.add_argument(
        "--admin-ui",
        dest="admin_ui",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="serve the operator UI at /admin/ (on with --demo)",
    )
    serve.add_argument(
        "--loop", choices=["auto", "uvloop", "asyncio"], help="event loop (default: uvloop if installed)"
    )
    serve.add_argument(
        "--workers", type=int, metavar="N", help="processes on the one port, each a node (needs the redis engine)"
    )
    # A worker of a --workers supervisor: its channel to it (gateway/workers.py).
    serve.add_argument("--worker-fd", type=int, help=argparse.SUPPRESS)
    commands.add_parser("keygen", help="print a TOML snippet with a signing key and a secret")
    token = commands.add_parser("token", help="mint an access JWT with the configured key")
    token.add_argument("--config", required=True, metavar="FILE.toml")
    token.add_argument("--sub", required=True)
    token.add_argument("--ttl", type=float, help="seconds (default: access_token_ttl)")
    token.add_argument("--claims", default="{}", help="extra claims as a JSON object")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging()
    logging.getLogger("aiohttp.server").addFilter(RedactParserErrors())
    try:
        if args.command == "keygen":
            return _keygen()
        if args.command == "token":
            return _token(args)
        flags = {
            "host": args.host,
            "port": args.port,
            "redis_url": args.redis_url,
            "redis_cluster": args.redis_cluster,
            "recovery_window": args.recovery_window,
            "demo": args.demo,
            "admin_ui": args.admin_ui,
            "loop": args.loop,
            # A worker is one process, whatever the file or environment says.
            "workers": 1 if args.worker_fd is not None else args.workers,
        }
        config = load_config(file=args.config, flags=flags)
        logging.getLogger().setLevel(config.log_level.upper())
        if config.workers > 1:
            return workers.supervise(config, sys.argv[1:] if argv is None else argv)
        supervisor = None if args.worker_fd is None else workers.channel_to_supervisor(args.worker_fd)
        run(serve(config, supervisor=supervisor), loop=config.loop)
    except ConfigError as exc:
        print(f"ticketgate: config error: {exc}", file=sys.stderr)
        return 2
    except StartupError as exc:
        print(f"ticketgate: {exc}", file=sys.stderr)
        return 2
    return 0


def run(main: Coroutine[Any, Any, None], *, loop: str) -> None:
    """Run ``main`` on uvloop where it is installed (``auto``), or as ``loop`` says.

    uvloop's transports write, read and schedule in C: the delivery path (a
    write per recipient, a read per message) gains a third or more over
    asyncio's own loop. ``--loop asyncio`` opts out."""
    if loop != "asyncio":
        try:
            import uvloop
        except ImportError:
            if loop == "uvloop":
                raise StartupError("--loop uvloop: uvloop is not installed (pip install uvloop)") from None
        else:
            uvloop.run(main)
            return
    asyncio.run(main)


def _keygen() -> int:
    import secrets

    key = json.dumps(generate_signing_key(), separators=(",", ":"))
    print("# ticketgate keys: share them between all nodes of a cluster; keep them secret.")
    print(f"signing_key = '{key}'")
    print(f'secret = "{encode_secret(secrets.token_bytes(32))}"')
    return 0


def _token(args: argparse.Namespace) -> int:
    config = load_config(file=args.config)
    if "signing_key" in config.generated:
        raise ConfigError(f"{args.config} has no signing_key: a token signed by a throwaway key is useless")
    try:
        claims: Any = json.loads(args.claims)
    except json.JSONDecodeError:
        raise ConfigError("--claims is not valid JSON") from None
    if not isinstance(claims, dict):
        raise ConfigError("--claims must be a JSON object")
    token, _ = TokenService(config=config).mint(args.sub, ttl=args.ttl, claims=claims)
    print(token)
    return 0


async def serve(config: Config, *, supervisor: socket.socket | None = None) -> None:
    """Run one gateway until SIGTERM/SIGINT, then drain its sockets and stop.

    ``supervisor``: this is a worker of ``--workers``; it shares the port with
    the others (SO_REUSEPORT), and reports to the supervisor on this channel."""
    # Signals first: a SIGTERM that comes as soon as the port opens still drains.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = create_runner(create_app(config), config)
    try:
        await runner.setup()
        try:
            await web.TCPSite(runner, config.host, config.port, reuse_port=supervisor is not None).start()
        except OSError as exc:
            raise StartupError(f"cannot listen on {config.host}:{config.port}: {_os_reason(exc)}") from None
    except BaseException:
        # Close what the app's start-up opened (the HTTP client, the store):
        # an unclosed aiohttp session would add a warning to the one line.
        await runner.cleanup()
        raise
    host, port = runner.addresses[0][:2]
    base = f"http://{host}:{port}"
    logger.info(
        "ticketgate listening on %s engine=%s mode=%s", base, config.engine, "demo" if config.demo else "normal"
    )
    # After the start line: PROTOCOL §1 wants that one first, whatever the config.
    logger.info("event loop: %s", "uvloop" if "uvloop" in type(loop).__module__ else "asyncio")
    if {"signing_key", "secret"} & config.generated:
        logger.warning(
            "no signing_key/secret configured: using ephemeral ones (tokens die with this process); "
            "run `ticketgate keygen` to make permanent ones"
        )
    if config.admin_ui:
        logger.info("operator UI: %s/admin/ (log in with the admin token)", base)
    if config.demo:
        print(f"demo: {base}/demo/", flush=True)
        if "admin_token" in config.generated:
            print(f"demo admin token: {config.admin_token}", flush=True)
    reporting = None
    if supervisor is not None:  # the task's strong reference until the end
        reporting = asyncio.create_task(workers.report(supervisor, node_name=config.node_name, stop=stop))
    try:
        await stop.wait()
    finally:
        if reporting is not None:
            reporting.cancel()
        logger.info("stopping")
        # Drain first, while the server still listens and reads: aiohttp's
        # on_shutdown hook (going_away again, then a no-op) runs only after it
        # stopped reading every connection, too late for a WebSocket client to
        # complete the close handshake, so each one stalled the exit for the
        # whole shutdown_timeout. Meanwhile a new connect is refused (4503).
        closed = await runner.app[keys.realtime].going_away()
        logger.info("drained: sent closing 1001 to %d sockets", closed)
        await runner.cleanup()


def _os_reason(exc: OSError) -> str:
    """'address already in use' rather than asyncio's whole sentence around it
    (it repeats the address); a resolver error has no errno of the OS."""
    if exc.errno is not None and exc.errno > 0:
        return os.strerror(exc.errno).lower()
    return str(exc.strerror or exc)


if __name__ == "__main__":
    sys.exit(main())
