"""``create_app(config)``: the only place where the gateway is wired together."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from gateway import __version__, keys
from gateway.admin_ui import admin_ui_files
from gateway.auth.admission import Admission
from gateway.auth.refresh import RefreshService
from gateway.auth.sessions import SessionService
from gateway.auth.tickets import TicketService
from gateway.auth.tokens import JWKS_MIN_REFRESH, TokenService
from gateway.config import Config
from gateway.demo import demo_files
from gateway.errors import StoreUnavailable
from gateway.lifetime import Lifetime
from gateway.messages import MessageService
from gateway.metrics import Metrics
from gateway.presence import Presence
from gateway.rate_limits import RateLimits
from gateway.realtime import Realtime, create_server
from gateway.realtime.recovery import Recovery
from gateway.scheduler import Scheduler
from gateway.store import create_store
from gateway.webhooks import Webhooks
from handlers import admin_ui, http, raw_ws, transport
from handlers.events import SocketHandlers
from handlers.openapi import build_openapi
from handlers.origins import OriginPolicy
from handlers.raw_ws import session_socket

logger = logging.getLogger(__name__)

# Long header fields, so that a >8 KB token still reaches our own 401, yet a
# 1 MB header is refused by aiohttp's parser (431).
MAX_FIELD_BYTES = 16 * 1024
# How long open handlers may finish once sockets have been told `closing`.
SHUTDOWN_TIMEOUT = 3.0
WARM_WAIT = 3.0  # seconds a start waits for the Redis clients' warm-up (_warm_ctx)
WARM_RETRY_MAX = 5.0  # the longest pause between two warm-up attempts

SOCKETIO_PATH = http.SOCKETIO_PREFIX.strip("/")
RAW_SESSION_PREFIX = raw_ws.PATH_PREFIX
MAX_BODY_BYTES = 64 * 1024


def create_runner(app: web.Application, config: Config, **options: Any) -> web.AppRunner:
    """The runner that serves ``app``, the CLI's and the tests' in-process ones alike:
    the access log that never shows query strings, long header
    fields, and the limits on slow and idle clients from ``config``.
    ``options`` are further AppRunner options (the tests' ``handler_cancellation``)."""
    return transport.DeadlineRunner(
        app,
        access_log_class=http.AccessLogger,
        max_field_size=MAX_FIELD_BYTES,
        shutdown_timeout=SHUTDOWN_TIMEOUT,
        keepalive_timeout=config.keepalive_timeout,
        header_timeout=config.header_timeout,
        body_timeout=config.body_timeout,
        **options,
    )


def create_app(config: Config, *, jwks_min_refresh: float = JWKS_MIN_REFRESH) -> web.Application:
    """The gateway for ``config``; StartupError if ``config.demo`` and the demo's files are missing.

    ``jwks_min_refresh``: the least time between two refreshes of a trusted
    issuer's key set (``TokenService``); only tests lower it."""
    demo = demo_files() if config.demo else None  # first: a missing file fails before anything is built
    operator_ui = admin_ui_files() if config.admin_ui else None
    origins = OriginPolicy(allowed=config.allowed_origins, public_url=config.public_url)
    app = web.Application(
        client_max_size=MAX_BODY_BYTES,
        middlewares=[
            *([http.forwarded_middleware(config.trusted_proxies)] if config.trusted_proxies else []),
            http.doors_middleware(origins, raw_prefix=RAW_SESSION_PREFIX),
        ],
    )
    metrics = Metrics()
    store = create_store(config.redis)
    tokens = TokenService(config=config, http=lambda: app[keys.http_client], jwks_min_refresh=jwks_min_refresh)
    sio = create_server(config, cors=origins.engineio_check)
    realtime = Realtime(sio=sio, scheduler=Scheduler(), max_held=config.max_held_events, metrics=metrics)
    realtime.recovery = Recovery(
        store=store,
        history=realtime.history,
        window=config.recovery_window,
        live_ttl=config.user_ttl,
        node=config.node_name,
    )
    webhooks = Webhooks(hooks=config.webhooks, max_attempts=config.webhook_max_attempts, metrics=metrics)
    presence = Presence(config=config, store=store, fanout=realtime, webhooks=webhooks, metrics=metrics)
    realtime.presence = presence
    rate_limits = RateLimits(config=config, realtime=realtime, metrics=metrics)
    tickets = TicketService(store=store, ttl=config.ticket_ttl, leeway=config.leeway)
    sessions = SessionService(config=config, store=store, tokens=tokens, fanout=realtime)
    refresh = RefreshService(store=store, fanout=realtime, ttl=config.refresh_ttl)
    lifetime = Lifetime(config=config, store=store, refresh=refresh, realtime=realtime, metrics=metrics)
    admission = Admission(
        config=config,
        store=store,
        tokens=tokens,
        tickets=tickets,
        sessions=sessions,
        refresh=refresh,
        lifetime=lifetime,
        realtime=realtime,
        metrics=metrics,
        presence=presence,
    )

    app[keys.config] = config
    app[keys.metrics] = metrics
    app[keys.store] = store
    app[keys.tokens] = tokens
    app[keys.tickets] = tickets
    app[keys.lifetime] = lifetime
    app[keys.admission] = admission
    app[keys.realtime] = realtime
    app[keys.rate_limits] = rate_limits
    app[keys.sessions] = sessions
    app[keys.openapi] = build_openapi(version=__version__)
    app[keys.webhooks] = webhooks
    app[keys.presence] = presence

    messages = MessageService(store=store, fanout=realtime, maxlen=config.upstream_maxlen)
    SocketHandlers(
        config=config,
        admission=admission,
        messages=messages,
        realtime=realtime,
        metrics=metrics,
        rate_limits=rate_limits,
        presence=presence,
    ).register(sio)
    sio.attach(app, socketio_path=SOCKETIO_PATH)
    http.setup_routes(app)
    app.router.add_get(RAW_SESSION_PREFIX + "{sessionId}", session_socket)
    if demo is not None:
        app.router.add_get("/demo", _redirect_to_demo)
        app.router.add_get("/demo/", _file_handler(demo.page / "index.html"))
        app.router.add_static("/demo/vendor/", demo.vendor, show_index=False)
        app.router.add_static("/demo/", demo.page, show_index=False, append_version=False)

    app.on_response_prepare.append(http.node_header(config.node_name))
    app.cleanup_ctx.extend(
        [
            _key_files_ctx,
            _http_client_ctx,
            _jwks_refresh_ctx,
            _store_ctx,
            _rate_limits_ctx,
            _warm_ctx,
            _webhooks_ctx,
            _realtime_ctx,
            _presence_ctx,
        ]
    )
    if operator_ui is not None:
        view = admin_ui.OperatorView(
            sio,
            admin_token=config.admin_token,
            server_id=config.node_name,
            rate_limits=rate_limits,
            settled=admission.engine_closed,  # releases the session's pending count and auth_timeout
            socketio_path="/" + SOCKETIO_PATH + "/",
        )
        admin_ui.add_routes(app, operator_ui)
        # Last: its reports stop before the realtime layer they are sent through.
        app.cleanup_ctx.append(view.running)
    # Not a cleanup_ctx: aiohttp runs on_shutdown *before* it waits for open
    # handlers (every WebSocket is one), cleanup_ctx only after that wait.
    # Sockets must hear `closing` 1001 first, so this hook has to run there.
    app.on_shutdown.append(_going_away)
    return app


async def _redirect_to_demo(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/demo/")


def _file_handler(path: Path) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(path)

    return handler


async def _key_files_ctx(app: web.Application) -> AsyncIterator[None]:
    # First: a bad jwks_file stops the start before anything else is opened.
    await app[keys.tokens].load_key_files()
    yield


async def _http_client_ctx(app: web.Application) -> AsyncIterator[None]:
    app[keys.http_client] = aiohttp.ClientSession()
    yield
    await app[keys.http_client].close()


async def _jwks_refresh_ctx(app: web.Application) -> AsyncIterator[None]:
    # After the HTTP client it fetches with, so it is cancelled before that closes.
    # The local variable is the task's strong reference for the app's whole life.
    task = asyncio.create_task(app[keys.tokens].keep_keys_fresh(), name="jwks-refresh")
    yield
    task.cancel()
    await asyncio.wait({task})  # unlike awaiting it, leaves a cancellation of this cleanup alone


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[keys.store].close()


async def _rate_limits_ctx(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[keys.rate_limits].close()


async def _warm_ctx(app: web.Application) -> AsyncIterator[None]:
    """The store's and the rate limits' Redis clients get ready before the node
    listens (a Redis Cluster's slot map: see ``gateway.redisconn.learn_slots``).
    A start does not wait for an unreachable Redis longer than ``WARM_WAIT``:
    the warm-up goes on in the background, and commands meanwhile do it themselves."""
    task = asyncio.create_task(_warm(app), name="redis-warm")
    await asyncio.wait({task}, timeout=WARM_WAIT)
    yield
    task.cancel()
    await asyncio.wait({task})


async def _warm(app: web.Application) -> None:
    delay = 0.2
    for warm in (app[keys.store].warm, app[keys.rate_limits].warm):
        while True:
            try:
                await warm()
                break
            except StoreUnavailable as exc:
                logger.warning("Redis not reachable to warm up (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, WARM_RETRY_MAX)


async def _webhooks_ctx(app: web.Application) -> AsyncIterator[None]:
    # Listed before realtime, so stopped after it: events submitted while realtime stops
    # are still taken, and counted in the line of abandoned deliveries rather than lost unsaid.
    await app[keys.webhooks].start()
    yield
    await app[keys.webhooks].stop()


async def _realtime_ctx(app: web.Application) -> AsyncIterator[None]:
    await app[keys.realtime].start()
    yield
    await app[keys.realtime].stop()


async def _presence_ctx(app: web.Application) -> AsyncIterator[None]:
    # After realtime (it publishes user_joined / user_left) and so stopped before it.
    await app[keys.presence].start()
    yield
    await app[keys.presence].stop()


async def _going_away(app: web.Application) -> None:
    closed = await app[keys.realtime].going_away()
    # Silent when no socket was open: the CLI has drained them already (and
    # said so), or its start failed and the error must stay the one line.
    if closed:
        logger.info("shutting down: sent closing 1001 to %d sockets", closed)
