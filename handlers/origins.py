"""Which browser pages may open a socket: PROTOCOL §3 (4003) and §6.16.

No Origin (a non-browser client) is allowed; a listed origin is allowed
(``allowed_origins``; ``*`` any, demo only); and the gateway's own origin is
allowed: ``public_url`` when it is configured, else the address the connection
came in on (``http://<local address>:<port>``, and ``http://localhost:<port>``
on loopback). Never the request's ``Host`` header, nor ``X-Forwarded-Host``:
a page on a name that an attacker points at the gateway (DNS rebinding) sends
that name in both, and would pass as same-origin.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` of a URL, as a browser writes it in ``Origin``."""
    parts = urlsplit(url)
    default_port = {"http": 80, "https": 443}.get(parts.scheme)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port is not None and parts.port != default_port else ""
    return f"{parts.scheme}://{host}{port}"


class OriginPolicy:
    def __init__(self, *, allowed: tuple[str, ...], public_url: str | None) -> None:
        self._any = "*" in allowed
        self._allowed = frozenset(origin_of(o) for o in allowed if o != "*")
        self._public = origin_of(public_url) if public_url else None

    def own_origins(self, local: tuple[str, int] | None) -> frozenset[str]:
        """The gateway's own origin(s) for a connection that arrived at ``local``."""
        if self._public is not None:
            return frozenset({self._public})
        if local is None:
            return frozenset()
        host, port = local
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return frozenset()
        literal = f"[{host}]" if address.version == 6 else host
        own = {f"http://{literal}:{port}"}
        if address.is_loopback:
            own.add(f"http://localhost:{port}")
        return frozenset(own)

    def allows(self, origin: str | None, *, local: tuple[str, int] | None) -> bool:
        if origin is None or self._any:
            return True
        origin = origin.rstrip("/")
        return origin in self._allowed or origin in self.own_origins(local)

    def allows_request(self, request: web.BaseRequest) -> bool:
        return self.allows(request.headers.get("Origin"), local=local_address(request))

    def engineio_check(self, origin: str | None, environ: Mapping[str, Any]) -> bool:
        """The callable form python-engineio accepts for ``cors_allowed_origins``."""
        request = environ.get("aiohttp.request")
        return self.allows(origin, local=local_address(request) if request is not None else None)


def local_address(request: web.BaseRequest) -> tuple[str, int] | None:
    """The address and port the connection came in on (not a header: the socket's own)."""
    transport = request.transport
    sockname = transport.get_extra_info("sockname") if transport is not None else None
    if isinstance(sockname, tuple) and len(sockname) >= 2:
        return str(sockname[0]), int(sockname[1])
    return None
