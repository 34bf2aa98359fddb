"""The one configuration object, loaded once: flag > env > file > default.

``load_config`` merges the three sources into one mapping and validates it
with a single marshmallow schema, so a setting is parsed in exactly one place.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import logging
import os
import secrets
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jwcrypto import jwk
from marshmallow import Schema, ValidationError, fields, post_load, validate, validates

from gateway.errors import ConfigError
from gateway.redisconn import RedisTarget

logger = logging.getLogger(__name__)

ENV_PREFIX = "TICKETGATE_"
MIN_SECRET_BYTES = 32
# --demo's per-address rates, unless configured: QA testers behind one office
# address, clicking through the demo in several tabs, must not trip them.
DEMO_RATES = {"http_rate_per_ip": 600, "connect_rate_per_ip": 600}
# The event types a [[webhooks]] entry may subscribe to (docs/webhooks.md).
WEBHOOK_EVENTS = ("user.online", "user.offline", "room.occupied", "room.vacated", "user.joined", "user.left")
MIN_WEBHOOK_SECRET_CHARS = 16


@dataclass(frozen=True, kw_only=True)
class IssuerConfig:
    """A trusted external JWT issuer (``[[issuers]]``)."""

    iss: str
    jwks_uri: str | None = None
    jwks_file: str | None = None
    audience: str | None = None
    algorithms: tuple[str, ...] = ("RS256", "ES256")


@dataclass(frozen=True, kw_only=True)
class WebhookConfig:
    """A receiver of webhook events (``[[webhooks]]``)."""

    url: str
    secret: str = field(repr=False)  # HMAC key of the signature: never in a repr, a log or an error
    events: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class Config:
    """Every setting of a gateway; see docs/configuration.md."""

    host: str = "127.0.0.1"
    port: int = 8080
    redis_url: str | None = None
    # redis_url is the seed node of a Redis Cluster (sharded pub/sub, hash-tagged keys).
    redis_cluster: bool = False
    signing_key: Mapping[str, Any] | None = None  # private EC P-256 JWK
    secret: bytes | None = None  # decoded HMAC secret
    admin_token: str | None = None
    allowed_origins: tuple[str, ...] = ()
    # The gateway's own origin, as browsers reach it (e.g. https://gw.example.com
    # behind a TLS proxy); unset: the address each connection came in on.
    public_url: str | None = None
    # Rooms any authenticated socket may join, beside those its `rooms` claim
    # allows (glob patterns over room:<name>); --demo defaults it to room:demo-*.
    public_rooms: tuple[str, ...] = ()
    # Proxies (addresses or networks) whose X-Forwarded-For/-Proto/-Host are
    # believed: the client address (max_pending_per_ip) and the same-origin
    # check then see the client, not the proxy. Empty: headers are ignored.
    trusted_proxies: tuple[str, ...] = ()
    ticket_ttl: float = 30
    session_ttl: float = 60
    access_token_ttl: float = 3600
    otp_mask: int = 2
    otp_window: int = 1
    max_attempts: int = 3
    deferred_auth: bool = True
    auth_timeout: float = 10
    on_expiry: str = "reauth"
    expiry_warning: float = 30
    reauth_grace: float = 30
    refresh_tokens: bool = True
    refresh_ttl: float = 86400
    per_message_auth: bool = False
    max_pending_per_ip: int = 100
    # Rate limits (gateway/rate_limits.py): client events per socket (a token
    # bucket: events per second, and how many at once), how long a socket may
    # stay over it before it is closed; HTTP requests to the auth and ticket
    # routes, and connects, per client address per minute (cluster-wide on
    # the redis engine). --demo raises the per-address ones (DEMO_RATES).
    client_event_rate: float = 20
    client_event_burst: int = 40
    client_abuse_seconds: float = 5
    http_rate_per_ip: int = 120
    connect_rate_per_ip: int = 300
    max_message_bytes: int = 16 * 1024  # JSON size of a `message` event's data
    upstream_maxlen: int = 100_000  # tg:upstream is trimmed to about this many entries
    max_held_events: int = 1000  # per socket awaiting re-auth, and per user once parked
    # Connection state recovery (docs/recovery.md): how long after losing its
    # connection a socket may come back and get what it missed; 0 turns it off.
    recovery_window: float = 120
    # What a socket may have been sent and not read: past it, it is a slow consumer, closed (4012).
    max_buffered_bytes: int = 1024 * 1024
    log_level: str = "info"  # debug adds a line per connect, disconnect and Socket.IO request
    loop: str = "auto"  # the event loop of `serve`: uvloop where installed ("auto"), or "uvloop"/"asyncio"
    # Processes of `serve` on one port (SO_REUSEPORT), each a node of the cluster;
    # more than one makes the CLI a supervisor (gateway/workers.py).
    workers: int = 1
    leeway: float = 5
    # Slow and idle HTTP clients (handlers/transport.py): how long a keep-alive
    # connection may idle between requests, how long a request's head and its
    # body may take to arrive. None applies to a running handler (a long-poll,
    # a WebSocket).
    keepalive_timeout: float = 75
    header_timeout: float = 10
    body_timeout: float = 15
    redis_channel: str = "socketio"
    issuers: tuple[IssuerConfig, ...] = ()
    # Webhook receivers, and how many times one event is tried on each before
    # it is given up (gateway/webhooks.py).
    webhooks: tuple[WebhookConfig, ...] = ()
    webhook_max_attempts: int = 8
    # Presence (gateway/presence.py, docs/presence.md): rooms whose members are
    # counted cluster-wide beside every user:<sub> (glob patterns over
    # room:<name>); how long a node's counts outlive its last heartbeat (a
    # killed node's ghosts last at most this); how long an emptied room or a
    # user's last connection waits before room.vacated / user.offline (a
    # reconnect within it makes neither); connections one user may hold over
    # the cluster (0: no limit).
    presence_rooms: tuple[str, ...] = ()
    presence_ttl: float = 30
    offline_grace: float = 5
    max_connections_per_user: int = 0
    demo: bool = False
    # The operator UI at /admin/ (the Socket.IO Admin UI, gateway/admin_ui.py):
    # logs in with admin_token; --demo turns it on unless it is set.
    admin_ui: bool = False
    node_name: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    # Set by load_config when it had to invent a key/secret/admin token, so
    # that the CLI can warn (or print the demo admin token once).
    generated: frozenset[str] = field(default_factory=frozenset)

    @property
    def engine(self) -> str:
        return "redis" if self.redis_url else "memory"

    @property
    def redis(self) -> RedisTarget | None:
        """Where the redis engine's Redis is (None: the memory engine)."""
        return RedisTarget(self.redis_url, cluster=self.redis_cluster) if self.redis_url else None

    @property
    def user_ttl(self) -> float:
        """How long per-user records (live registry, parked events, revocation) live."""
        return max(self.refresh_ttl, self.access_token_ttl) + self.leeway


_positive = validate.Range(min=0, min_inclusive=False)


class IssuerSchema(Schema):
    iss = fields.String(required=True, validate=validate.Length(min=1))
    jwks_uri = fields.Url(schemes={"http", "https"}, require_tld=False, load_default=None)
    jwks_file = fields.String(load_default=None)
    audience = fields.String(load_default=None)
    algorithms = fields.List(
        fields.String(validate=validate.OneOf(["RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"])),
        validate=validate.Length(min=1),
        load_default=["RS256", "ES256"],
    )

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> IssuerConfig:
        if (data["jwks_uri"] is None) == (data["jwks_file"] is None):
            raise ValidationError("exactly one of jwks_uri or jwks_file is required", "issuers")
        data["algorithms"] = tuple(data["algorithms"])
        return IssuerConfig(**data)


class WebhookSchema(Schema):
    url = fields.Url(schemes={"http", "https"}, require_tld=False, required=True)
    # marshmallow's messages for these never echo the value.
    secret = fields.String(required=True, validate=validate.Length(min=MIN_WEBHOOK_SECRET_CHARS))
    events = fields.List(
        fields.String(validate=validate.OneOf(WEBHOOK_EVENTS)), required=True, validate=validate.Length(min=1)
    )

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> WebhookConfig:
        data["events"] = tuple(dict.fromkeys(data["events"]))  # once each, in the order given
        return WebhookConfig(**data)


class ConfigSchema(Schema):
    host = fields.String()
    port = fields.Integer(validate=validate.Range(min=0, max=65535))
    redis_url = fields.String(
        allow_none=True,
        validate=validate.Regexp(
            r"^(rediss?|unix|redis\+sentinel)://",
            error="must be a redis://, rediss://, unix:// or redis+sentinel:// URL",
        ),
    )
    redis_cluster = fields.Boolean()
    signing_key = fields.String(allow_none=True)
    secret = fields.String(allow_none=True)
    admin_token = fields.String(allow_none=True, validate=validate.Length(min=16))
    allowed_origins = fields.List(fields.String())
    public_url = fields.Url(schemes={"http", "https"}, require_tld=False, allow_none=True)
    trusted_proxies = fields.List(fields.String())
    public_rooms = fields.List(fields.String(validate=validate.Regexp(r"^room:\S+\Z", error="must be room:<pattern>")))
    ticket_ttl = fields.Float(validate=_positive)
    session_ttl = fields.Float(validate=_positive)
    access_token_ttl = fields.Float(validate=_positive)
    otp_mask = fields.Integer(validate=validate.Range(min=0, max=6))
    otp_window = fields.Integer(validate=validate.Range(min=0, max=10))
    max_attempts = fields.Integer(validate=validate.Range(min=1))
    deferred_auth = fields.Boolean()
    auth_timeout = fields.Float(validate=_positive)
    on_expiry = fields.String(validate=validate.OneOf(["ignore", "close", "reauth"]))
    expiry_warning = fields.Float(validate=validate.Range(min=0))
    reauth_grace = fields.Float(validate=_positive)
    refresh_tokens = fields.Boolean()
    refresh_ttl = fields.Float(validate=_positive)
    per_message_auth = fields.Boolean()
    max_pending_per_ip = fields.Integer(validate=validate.Range(min=1))
    client_event_rate = fields.Float(validate=_positive)
    client_event_burst = fields.Integer(validate=validate.Range(min=1))
    client_abuse_seconds = fields.Float(validate=_positive)
    http_rate_per_ip = fields.Integer(validate=validate.Range(min=1))
    connect_rate_per_ip = fields.Integer(validate=validate.Range(min=1))
    max_message_bytes = fields.Integer(validate=validate.Range(min=1, max=60 * 1024))
    upstream_maxlen = fields.Integer(validate=validate.Range(min=1))
    max_held_events = fields.Integer(validate=validate.Range(min=1, max=100_000))
    recovery_window = fields.Float(validate=validate.Range(min=0, max=3600))
    max_buffered_bytes = fields.Integer(validate=validate.Range(min=64 * 1024))
    loop = fields.String(validate=validate.OneOf(["auto", "uvloop", "asyncio"]))
    workers = fields.Integer(validate=validate.Range(min=1))
    log_level = fields.String(validate=validate.OneOf(["debug", "info", "warning", "error"]))
    leeway = fields.Float(validate=validate.Range(min=0, max=30))
    keepalive_timeout = fields.Float(validate=_positive)
    header_timeout = fields.Float(validate=_positive)
    body_timeout = fields.Float(validate=_positive)
    redis_channel = fields.String(validate=validate.Length(min=1))
    issuers = fields.List(fields.Nested(IssuerSchema))
    webhooks = fields.List(fields.Nested(WebhookSchema))
    webhook_max_attempts = fields.Integer(validate=validate.Range(min=1))
    presence_rooms = fields.List(
        fields.String(validate=validate.Regexp(r"^room:\S+\Z", error="must be room:<pattern>"))
    )
    presence_ttl = fields.Float(validate=validate.Range(min=1, max=3600))
    offline_grace = fields.Float(validate=validate.Range(min=0, max=3600))
    max_connections_per_user = fields.Integer(validate=validate.Range(min=0))
    demo = fields.Boolean()
    admin_ui = fields.Boolean()
    # Sent as the X-Ticketgate-Node header and in Redis keys: visible ASCII only.
    node_name = fields.String(
        validate=[
            validate.Length(min=1, max=64),
            validate.Regexp(r"^[!-~]+\Z", error="must be visible ASCII, no spaces"),
        ]
    )

    @validates("allowed_origins")
    def _origins(self, value: list[str], **_: Any) -> None:
        for origin in value:
            if origin != "*" and not origin.startswith(("http://", "https://")):
                raise ValidationError(f"{origin!r} is not an origin like https://app.example.com")

    @validates("trusted_proxies")
    def _proxies(self, value: list[str], **_: Any) -> None:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValidationError(f"{item!r} is not an IP address or network") from None

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        if data.get("redis_cluster"):
            url = data.get("redis_url") or ""
            if not url.startswith(("redis://", "rediss://")):
                raise ValidationError("needs a redis:// or rediss:// redis_url (a cluster node)", "redis_cluster")
        if "*" in data.get("allowed_origins", ()) and not data.get("demo"):
            raise ValidationError("'*' is allowed only with --demo", "allowed_origins")
        if data.get("signing_key") is not None:
            data["signing_key"] = _load_signing_key(data["signing_key"])
        if data.get("secret") is not None:
            data["secret"] = _decode_secret(data["secret"])
        for name in ("allowed_origins", "issuers", "presence_rooms", "public_rooms", "trusted_proxies", "webhooks"):
            if name in data:
                data[name] = tuple(data[name])
        return data


def _load_signing_key(value: str) -> dict[str, Any]:
    text = value.strip()
    if not text.startswith("{"):
        try:
            text = Path(text).read_text()
        except OSError as exc:
            raise ValidationError(f"cannot read key file: {exc.strerror}", "signing_key") from None
        except UnicodeDecodeError:
            raise ValidationError("the key file is not UTF-8 text", "signing_key") from None
    try:
        key = jwk.JWK.from_json(text)
    except Exception:
        # Never echo the text: it is a private key.
        raise ValidationError("not a valid JWK", "signing_key") from None
    if key.get("kty") != "EC" or key.get("crv") != "P-256" or not key.has_private:
        raise ValidationError("must be a private EC P-256 JWK", "signing_key")
    exported: dict[str, Any] = key.export(private_key=True, as_dict=True)
    exported.setdefault("kid", key.thumbprint())
    return exported


def _decode_secret(value: str) -> bytes:
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise ValidationError("must be base64url", "secret") from None
    if len(raw) < MIN_SECRET_BYTES:
        raise ValidationError(f"must decode to at least {MIN_SECRET_BYTES} bytes", "secret")
    return raw


def _read_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:  # tomllib decodes the bytes itself, before parsing
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


_LIST_SETTINGS = {"allowed_origins", "issuers", "presence_rooms", "public_rooms", "trusted_proxies", "webhooks"}


def _read_env(environ: Mapping[str, str]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    known = set(ConfigSchema().fields)
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        setting = name[len(ENV_PREFIX) :].lower()
        if setting not in known:
            raise ConfigError(f"{name}: unknown setting {setting!r}")
        if setting in _LIST_SETTINGS:
            found[setting] = _env_list(name, value)
        else:
            found[setting] = value
    return found


def _env_list(name: str, value: str) -> Any:
    if value.lstrip().startswith("["):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            raise ConfigError(f"{name}: not a valid JSON list") from None
    return [item.strip() for item in value.split(",") if item.strip()]


def _first_error(messages: Any, path: str = "") -> str:
    """Flatten marshmallow's nested error dict into one 'setting: problem' line."""
    if isinstance(messages, dict):
        key, value = next(iter(messages.items()))
        name = str(key) if key != "_schema" else ""
        return _first_error(value, f"{path}.{name}".strip(".") if name else path)
    if isinstance(messages, list) and messages:
        return _first_error(messages[0], path)
    return f"{path}: {messages}" if path else str(messages)


def load_config(
    *,
    file: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> Config:
    """Merge file, environment and flags (in rising precedence) into a Config.

    Raises ConfigError with a one-line message naming the bad setting.
    """
    merged: dict[str, Any] = {}
    if file is not None:
        merged.update(_read_file(file))
    merged.update(_read_env(os.environ if environ is None else environ))
    merged.update({k: v for k, v in (flags or {}).items() if v is not None})
    try:
        data = ConfigSchema().load(merged)
    except ValidationError as exc:
        raise ConfigError(_first_error(exc.messages)) from None
    generated: set[str] = set()
    _check_workers(data)
    if data.get("redis_url"):
        missing = [name for name in ("signing_key", "secret") if data.get(name) is None]
        if missing:
            raise ConfigError(
                f"the redis engine needs {' and '.join(missing)} shared by every node "
                "(run `ticketgate keygen` and add its output to the config file)"
            )
    if data.get("signing_key") is None:
        data["signing_key"] = generate_signing_key()
        generated.add("signing_key")
    if data.get("secret") is None:
        data["secret"] = secrets.token_bytes(MIN_SECRET_BYTES)
        generated.add("secret")
    if data.get("demo") and "public_rooms" not in data:
        data["public_rooms"] = ("room:demo-*",)
    if data.get("demo") and "presence_rooms" not in data:
        data["presence_rooms"] = ("room:demo-*",)  # the demo's chat shows who is in the room
    if data.get("demo"):
        for name, value in DEMO_RATES.items():
            data.setdefault(name, value)
        data.setdefault("admin_ui", True)
    if data.get("demo") and data.get("admin_token") is None:
        data["admin_token"] = secrets.token_urlsafe(24)
        generated.add("admin_token")
    if data.get("admin_ui") and data.get("admin_token") is None:
        raise ConfigError("admin_ui needs an admin_token: the operator UI logs in with it")
    return Config(**data, generated=frozenset(generated))


def _check_workers(data: Mapping[str, Any]) -> None:
    """Several worker processes need what they share (Redis) and one port to share."""
    workers = data.get("workers", 1)
    if workers == 1:
        return
    if not data.get("redis_url"):
        raise ConfigError(
            f"workers = {workers} needs the redis engine (redis_url): "
            "with the memory engine nothing would be shared between the processes"
        )
    if data.get("port") == 0:
        raise ConfigError(f"workers = {workers} needs a fixed port: with port 0 each worker would get one of its own")
    if "node_name" in data:
        raise ConfigError(
            f"node_name names one process: leave it unset with workers = {workers} (each worker is <hostname>-<pid>)"
        )


def generate_signing_key() -> dict[str, Any]:
    """A fresh private EC P-256 JWK whose kid is its RFC 7638 thumbprint."""
    key = jwk.JWK.generate(kty="EC", crv="P-256")
    exported: dict[str, Any] = key.export(private_key=True, as_dict=True)
    exported["kid"] = key.thumbprint()
    return exported


def encode_secret(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
