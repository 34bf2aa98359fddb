"""Every typed key of the aiohttp app state, declared once."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from gateway.auth.admission import Admission
from gateway.auth.sessions import SessionService
from gateway.auth.tickets import TicketService
from gateway.auth.tokens import TokenService
from gateway.config import Config
from gateway.lifetime import Lifetime
from gateway.metrics import Metrics
from gateway.presence import Presence
from gateway.rate_limits import RateLimits
from gateway.realtime import Realtime
from gateway.store import Store
from gateway.webhooks import Webhooks

config = web.AppKey("config", Config)
store = web.AppKey("store", Store)
metrics = web.AppKey("metrics", Metrics)
tokens = web.AppKey("tokens", TokenService)
tickets = web.AppKey("tickets", TicketService)
sessions = web.AppKey("sessions", SessionService)
lifetime = web.AppKey("lifetime", Lifetime)
admission = web.AppKey("admission", Admission)
realtime = web.AppKey("realtime", Realtime)
rate_limits = web.AppKey("rate_limits", RateLimits)
http_client = web.AppKey("http_client", aiohttp.ClientSession)
openapi = web.AppKey("openapi", dict)
webhooks = web.AppKey("webhooks", Webhooks)
presence = web.AppKey("presence", Presence)
