"""Access JWTs: minting with the gateway's key, verification of ours and of
trusted issuers' tokens.

Library split: jwcrypto handles JWK documents (parsing the configured key,
thumbprint kids, exporting the public JWKS) because that is what it models
best; PyJWT signs and verifies, because its ``decode`` checks ``exp``/``nbf``/
``iat``/``iss``/``aud`` with a leeway against an explicit algorithm allowlist.
Neither library offers an asyncio JWKS client (PyJWT's ``PyJWKClient`` uses
blocking urllib), so ``JwksSource`` fetches with aiohttp and caches keys, and
``TokenService.keep_keys_fresh`` refreshes each ``jwks_uri`` issuer's key set
when its ``Cache-Control: max-age`` runs out (within bounds), so that a key the
issuer withdrew stops being trusted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwcrypto import jwk

from gateway.config import Config, IssuerConfig
from gateway.errors import ConfigError, InvalidToken, TokenExpired
from gateway.formats import LAST_TIMESTAMP, b64url_decode, is_canonical_b64url

logger = logging.getLogger(__name__)

GATEWAY_ISSUER = "ticketgate"
GATEWAY_ALGORITHM = "ES256"
MAX_TOKEN_BYTES = 8 * 1024
JWKS_REFETCH_INTERVAL = 30.0  # at most one refetch per interval for unknown kids
# The background refresh of a jwks_uri key set: Cache-Control max-age, bounded;
# the default when the response has none (also the cap of the retry backoff).
JWKS_MIN_REFRESH = 60.0
JWKS_DEFAULT_REFRESH = 600.0
JWKS_MAX_REFRESH = 86400.0
_MAX_JWKS_BYTES = 256 * 1024
_RESERVED_CLAIMS = frozenset({"iss", "sub", "iat", "exp", "nbf", "jti"})
# What a Principal keeps of a token's claims is the rest (``rooms``, ``sid``,
# ``amr``...): the registered ones are its fields already, or were checked.
_REGISTERED_CLAIMS = frozenset({*_RESERVED_CLAIMS, "aud"})
# RFC 7518 §3.4: each ES* algorithm is ECDSA on one curve (cryptography's names).
_EC_CURVES = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1", "ES256K": "secp256k1"}
_RSA_KEYS = (rsa.RSAPublicKey, rsa.RSAPrivateKey)
_EC_KEYS = (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)
_OKP_KEYS = (ed25519.Ed25519PublicKey, ed25519.Ed25519PrivateKey, ed448.Ed448PublicKey, ed448.Ed448PrivateKey)


@dataclass(frozen=True, kw_only=True)
class Principal:
    """Who a verified credential speaks for, and until when; ``claims`` are the
    token's own (``rooms``...), without the registered ones (iss, sub, exp, ...)."""

    sub: str
    exp: float
    iat: float = 0.0  # for revocation: credentials issued before a user's cut-off stop working
    claims: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Loaded:
    """A JWKS document as loaded, and for how long its sender says it stays fresh
    (seconds; None when it did not say)."""

    document: object
    max_age: float | None = None


Loader = Callable[[], Awaitable[Loaded]]


@dataclass(frozen=True, kw_only=True)
class RefreshBounds:
    """When a key set is refreshed again: after a fetch, its ``max-age`` within
    [``least``, ``most``] (``default`` without one); after failed fetches, a
    backoff doubling from ``least`` up to ``default``."""

    least: float = JWKS_MIN_REFRESH
    default: float = JWKS_DEFAULT_REFRESH
    most: float = JWKS_MAX_REFRESH

    def __post_init__(self) -> None:
        if not 0 < self.least <= self.most:
            raise ValueError("refresh bounds need 0 < least <= most")

    def after_fetch(self, max_age: float | None) -> float:
        return min(max(self.default if max_age is None else max_age, self.least), self.most)

    def after_failures(self, failures: int) -> float:
        return min(self.least * 2.0 ** min(failures - 1, 32), max(self.least, self.default))


_MAX_AGE = re.compile(r'"?([0-9]+)"?')


def cache_max_age(header: str) -> float | None:
    """The lifetime a Cache-Control header value grants: its ``max-age``, 0 for
    ``no-store`` or ``no-cache``, None when it says neither readably."""
    max_age: float | None = None
    for directive in header.split(","):
        name, _, value = directive.partition("=")
        name = name.strip().lower()
        if name in ("no-store", "no-cache"):
            return 0.0
        if name == "max-age" and (found := _MAX_AGE.fullmatch(value.strip())):
            max_age = float(found.group(1))
    return max_age


class JwksSource:
    """Keys of one issuer, by kid, refetched on an unknown kid at most once per
    ``min_interval``. With ``refresh`` bounds, each fetch also sets when the key
    set is due again (``next_refresh``, on ``clock``), and ``on_schedule`` is told."""

    def __init__(
        self,
        *,
        name: str,
        load: Loader,
        min_interval: float = JWKS_REFETCH_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        refresh: RefreshBounds | None = None,
        on_schedule: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self._load = load
        self._min_interval = min_interval
        self._clock = clock
        self._bounds = refresh
        self._on_schedule = on_schedule
        self._keys: dict[str | None, jwt.PyJWK] = {}
        self._last_fetch: float | None = None
        self._failures = 0
        self._lock = asyncio.Lock()
        self.fetches = 0
        self.next_refresh: float | None = None  # None: not fetched yet, or never refreshed

    @property
    def refreshes(self) -> bool:
        return self._bounds is not None

    def refresh_in(self) -> float | None:
        """Seconds until the key set is due for a refresh (<= 0: due); None if not scheduled."""
        return None if self.next_refresh is None else self.next_refresh - self._clock()

    async def key(self, kid: str | None) -> jwt.PyJWK | None:
        found = self._lookup(kid)
        if found is not None:
            return found
        async with self._lock:  # concurrent misses share one fetch
            found = self._lookup(kid)
            if found is None and self._may_fetch():
                await self._refresh()
                found = self._lookup(kid)
        return found

    def _lookup(self, kid: str | None) -> jwt.PyJWK | None:
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        return self._keys.get(kid)

    def _may_fetch(self) -> bool:
        return self._last_fetch is None or self._clock() - self._last_fetch >= self._min_interval

    async def fetch(self) -> int:
        """Load the keys now; the number of usable ones. Raises what loading
        or parsing raised, and then keeps the keys it had."""
        self._last_fetch = self._clock()
        self.fetches += 1
        try:
            loaded = await self._load()
            keys = parse_jwks(loaded.document)
        except Exception:
            self._failures += 1
            if self._bounds is not None:
                self._schedule(self._bounds.after_failures(self._failures))
            raise
        self._keys = keys
        self._failures = 0
        if self._bounds is not None:
            self._schedule(self._bounds.after_fetch(loaded.max_age))
        return len(keys)

    def _schedule(self, delay: float) -> None:
        self.next_refresh = self._clock() + delay
        if self._on_schedule is not None:
            self._on_schedule()

    async def refresh(self) -> None:
        """Fetch now (a due refresh); a failure is logged and keeps the old keys."""
        async with self._lock:
            await self._refresh()

    async def _refresh(self) -> None:
        try:
            await self.fetch()
        except Exception as exc:  # keep the old keys; a refresh or an unknown kid retries
            retry = self.refresh_in()
            logger.warning(
                "jwks fetch for %s failed: %s; keeping its %d keys%s",
                self.name,
                type(exc).__name__,
                len(self._keys),
                "" if retry is None else f", retrying in {retry:.0f} s",
            )


def check_spelling(token: str) -> None:
    """A compact JWS has one spelling: three segments, each canonical base64url.
    PyJWT also takes ``=`` padding (and older versions more), which would make
    two strings of one token. Raises InvalidToken."""
    segments = token.split(".")
    if len(segments) != 3:
        raise InvalidToken("malformed token: a JWT has three segments")
    if not all(is_canonical_b64url(segment) for segment in segments):
        raise InvalidToken("malformed token: not canonical base64url")


def read_unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header and claims of a token in its one spelling, not yet verified
    (to pick the issuer's key); one pass, where PyJWT's unverified reads took two.
    Raises InvalidToken."""
    check_spelling(token)
    header_segment, payload_segment, _ = token.split(".")
    try:
        header, claims = (orjson.loads(b64url_decode(segment)) for segment in (header_segment, payload_segment))
    except ValueError:
        raise InvalidToken("malformed token") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise InvalidToken("malformed token")
    return header, claims


def check_times(claims: Mapping[str, Any]) -> None:
    """``exp``, ``iat`` and ``nbf``, where present, must be JSON numbers from 1970 to
    9999-12-31T23:59:59Z, the last second an ``expiresAt`` can say: PyJWT reads
    them with ``int()``, which takes a string, a boolean or 1e20, and Python's
    json module adds NaN and Infinity. Raises InvalidToken."""
    for name in ("exp", "iat", "nbf"):
        if name not in claims:
            continue
        value = claims[name]
        # bool is an int to Python, not a number to JSON; NaN fails both comparisons.
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= LAST_TIMESTAMP:
            raise InvalidToken(f"{name} must be a number of seconds from 1970 to 9999-12-31T23:59:59Z")


def key_fits(alg: str, key: object) -> bool:
    """Whether ``key`` (a PyJWK's ``key``) is of the type ``alg`` needs: RS*/PS* an
    RSA key, ES* an EC key on that algorithm's curve, EdDSA an Ed25519/Ed448 key."""
    if alg.startswith(("RS", "PS")):
        return isinstance(key, _RSA_KEYS)
    if alg in _EC_CURVES:
        return isinstance(key, _EC_KEYS) and key.curve.name == _EC_CURVES[alg]
    if alg == "EdDSA":
        return isinstance(key, _OKP_KEYS)
    return False


def parse_jwks(document: object) -> dict[str | None, jwt.PyJWK]:
    """The usable signing keys of a JWKS document, by kid; ValueError if it is
    not a JWKS at all (a JSON object with a "keys" array)."""
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise ValueError('expected a JSON object with a "keys" array')
    keys: dict[str | None, jwt.PyJWK] = {}
    for entry in document["keys"]:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        try:
            keys[entry.get("kid")] = jwt.PyJWK(entry)
        except jwt.PyJWTError:
            continue  # an unusable key (unknown kty/crv) must not hide the others
    return keys


def _url_loader(iss: str, session: Callable[[], aiohttp.ClientSession] | None, uri: str) -> Loader:
    async def load() -> Loaded:
        if session is None:
            raise RuntimeError(f"issuer {iss}: no HTTP client to fetch its jwks_uri")
        timeout = aiohttp.ClientTimeout(total=5)
        async with session().get(uri, timeout=timeout, allow_redirects=False) as resp:
            resp.raise_for_status()
            body = await resp.content.read(_MAX_JWKS_BYTES + 1)
            if len(body) > _MAX_JWKS_BYTES:
                raise ValueError("jwks document too large")
            cache_control = ",".join(resp.headers.getall("Cache-Control", ()))
            return Loaded(json.loads(body), cache_max_age(cache_control))

    return load


def _file_loader(path: str) -> Loader:
    async def load() -> Loaded:
        text = await asyncio.to_thread(Path(path).read_text)
        return Loaded(json.loads(text))

    return load


@dataclass(frozen=True)
class _Trust:
    source: JwksSource
    algorithms: tuple[str, ...]
    audience: str | None


class TokenService:
    """Mints gateway access tokens and verifies any trusted token."""

    def __init__(
        self,
        *,
        config: Config,
        http: Callable[[], aiohttp.ClientSession] | None = None,
        clock: Callable[[], float] = time.monotonic,
        jwks_min_refresh: float = JWKS_MIN_REFRESH,
    ) -> None:
        """``http`` gives the client that fetches ``jwks_uri`` key sets; without one
        the service still mints and verifies, but such a fetch fails (RuntimeError,
        logged). ``jwks_min_refresh`` is the least time between two refreshes of a
        key set, whatever its max-age says (tests lower it)."""
        if config.signing_key is None:
            raise ValueError("config.signing_key is required")
        private = jwk.JWK(**config.signing_key)
        self.kid: str = config.signing_key["kid"]
        public: dict[str, Any] = private.export_public(as_dict=True)
        public.update(kid=self.kid, alg=GATEWAY_ALGORITHM, use="sig")
        self.jwks: dict[str, Any] = {"keys": [public]}
        self._signer = jwt.PyJWK(dict(config.signing_key), algorithm=GATEWAY_ALGORITHM)
        self._leeway = config.leeway
        self._access_ttl = config.access_token_ttl
        self._refresh_bounds = RefreshBounds(least=jwks_min_refresh)
        self._rescheduled = asyncio.Event()
        own = JwksSource(name=GATEWAY_ISSUER, load=self._own_jwks, min_interval=float("inf"))
        self._trusted: dict[str, _Trust] = {GATEWAY_ISSUER: _Trust(own, (GATEWAY_ALGORITHM,), None)}
        for issuer in config.issuers:
            source = self._source_for(issuer, http, clock)
            self._trusted[issuer.iss] = _Trust(source, issuer.algorithms, issuer.audience)
        self._key_files = {issuer.iss: issuer.jwks_file for issuer in config.issuers if issuer.jwks_file is not None}

    async def load_key_files(self) -> None:
        """Load every issuer's ``jwks_file`` once, at start: a missing or broken
        file stops the gateway then, naming the file, instead of refusing each
        of the issuer's tokens later. (A ``jwks_uri`` stays fetched on first
        need: an identity provider that is down must not keep the gateway down;
        ``keep_keys_fresh`` refreshes it from then on.)

        Raises ConfigError.
        """
        for iss, path in self._key_files.items():
            try:
                usable = await self._trusted[iss].source.fetch()
            except OSError as exc:
                raise ConfigError(f"issuer {iss}: cannot read jwks_file {path}: {exc.strerror}") from None
            except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, parse_jwks
                raise ConfigError(f"issuer {iss}: jwks_file {path} is not a JWKS: {exc}") from None
            if not usable:
                raise ConfigError(f"issuer {iss}: jwks_file {path} has no usable signing key")

    async def keep_keys_fresh(self) -> None:
        """Refresh each ``jwks_uri`` issuer's key set whenever it is due, until
        cancelled: one background task for all of them (``app.cleanup_ctx``),
        asleep until the earliest due refresh or until a fetch on first need
        schedules one. A failed refresh keeps the old keys and is retried with
        a capped backoff (``RefreshBounds``)."""
        sources = [trust.source for trust in self._trusted.values() if trust.source.refreshes]
        if not sources:
            return
        failures = 0
        while True:
            try:
                self._rescheduled.clear()
                for source in sources:
                    due = source.refresh_in()
                    if due is not None and due <= 0:
                        await source.refresh()  # logs its own failure
                waits = [due for due in map(JwksSource.refresh_in, sources) if due is not None]
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, min(waits)) if waits else None):
                        await self._rescheduled.wait()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception:
                failures += 1
                logger.exception("jwks refresh loop failed; retrying")
                await asyncio.sleep(min(2.0**failures, JWKS_MIN_REFRESH))

    async def _own_jwks(self) -> Loaded:
        return Loaded(self.jwks)

    def _source_for(
        self, issuer: IssuerConfig, http: Callable[[], aiohttp.ClientSession] | None, clock: Callable[[], float]
    ) -> JwksSource:
        if issuer.jwks_file is not None:
            return JwksSource(name=issuer.iss, load=_file_loader(issuer.jwks_file), clock=clock)
        if issuer.jwks_uri is None:
            raise ValueError(f"issuer {issuer.iss} has neither jwks_file nor jwks_uri")
        return JwksSource(
            name=issuer.iss,
            load=_url_loader(issuer.iss, http, issuer.jwks_uri),
            clock=clock,
            refresh=self._refresh_bounds,
            on_schedule=self._rescheduled.set,
        )

    def source(self, iss: str) -> JwksSource:
        return self._trusted[iss].source

    def mint(
        self,
        sub: str,
        *,
        ttl: float | None = None,
        claims: Mapping[str, Any] | None = None,
        now: float | None = None,
    ) -> tuple[str, int]:
        """A signed ES256 access JWT for ``sub`` and its ``exp`` (unix seconds)."""
        issued = time.time() if now is None else now
        exp = int(issued + (self._access_ttl if ttl is None else ttl))
        payload = {k: v for k, v in (claims or {}).items() if k not in _RESERVED_CLAIMS}
        # iat keeps milliseconds (RFC 7519 allows fractions): a token minted just
        # after a revocation in the same second must not count as revoked.
        iat = round(issued, 3)
        payload.update(iss=GATEWAY_ISSUER, sub=sub, iat=iat, exp=exp, jti=secrets.token_urlsafe(16))
        token = jwt.encode(payload, self._signer.key, algorithm=GATEWAY_ALGORITHM, headers={"kid": self.kid})
        return token, exp

    async def verify(self, token: object) -> Principal:
        """Verify a gateway-issued or trusted issuer's JWT; raise InvalidToken/TokenExpired."""
        if not isinstance(token, str) or not token:
            raise InvalidToken("token must be a non-empty string")
        if len(token) > MAX_TOKEN_BYTES:
            raise InvalidToken("token too large")
        header, unverified = read_unverified(token)
        check_times(unverified)
        # Header fields jku/jwk/x5u are never consulted: keys come only from config.
        iss = unverified.get("iss")
        trust = self._trusted.get(iss) if isinstance(iss, str) else None
        if trust is None or not isinstance(iss, str):
            raise InvalidToken("untrusted issuer")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in trust.algorithms:
            raise InvalidToken("algorithm not allowed for this issuer")
        kid = header.get("kid")
        key = await trust.source.key(kid if isinstance(kid, str) else None)
        if key is None:
            raise InvalidToken("unknown signing key")
        # PyJWT is handed a key object, not a PEM: given one of another type than
        # its alg needs it raises TypeError instead of a PyJWTError.
        if not key_fits(alg, key.key):
            raise InvalidToken("the signing key does not fit the token's algorithm")
        claims = self._decode(token, key, trust, iss)
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise InvalidToken("sub must be a non-empty string")
        iat = claims.get("iat")
        return Principal(
            sub=sub,
            exp=float(claims["exp"]),
            iat=float(iat) if isinstance(iat, int | float) else 0.0,
            claims={name: value for name, value in claims.items() if name not in _REGISTERED_CLAIMS},
        )

    def _decode(self, token: str, key: jwt.PyJWK, trust: _Trust, iss: str) -> dict[str, Any]:
        """PyJWT's checks: signature, algorithm allowlist, exp/nbf/iat with the
        leeway, iss, aud. Raises TokenExpired or InvalidToken, whatever PyJWT raised."""
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=list(trust.algorithms),
                audience=trust.audience,
                issuer=iss,
                leeway=self._leeway,
                options={"require": ["exp", "sub"], "verify_aud": trust.audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise TokenExpired("token expired") from None
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"token rejected: {type(exc).__name__}") from None
        except Exception as exc:
            # Not a verdict on the token but a failure inside PyJWT (a key it cannot
            # use, a bug): refuse the token rather than fail the request. Only the
            # type is logged: an exception's text may quote the token.
            logger.warning("unexpected %s verifying a token of %s (kid %s)", type(exc).__name__, iss, key.key_id)
            raise InvalidToken("token rejected: verification failed") from None
        return claims
