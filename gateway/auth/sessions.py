"""Device-approval login (seed 000): enrollment, sessions, OTP + ECDSA verify.

A browser initiates a session and waits on a socket; the user's enrolled
device proves possession of its key by signing ``approve.<sessionId>.<otp>``.
Attempts are spent atomically *before* any verification, so concurrent
guesses can never run more than ``max_attempts`` signature checks, and the
pending -> approved/rejected transition is a compare-and-set that exactly one
verify wins, on any node.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pyotp
from cryptography.exceptions import InvalidSignature as CryptoInvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from jwcrypto import jwk

from gateway import closes
from gateway.auth.tokens import TokenService
from gateway.config import Config
from gateway.errors import (
    InvalidOtp,
    InvalidRequest,
    InvalidSignature,
    InvalidToken,
    SessionNotFound,
    SessionResolved,
    TooManyAttempts,
)
from gateway.formats import b64url, b64url_decode, iso_z
from gateway.realtime import Fanout
from gateway.store import Store, keys

# Enrolled devices outlive sessions by far, but like every key they expire;
# each approval renews them.
DEVICE_TTL = 400 * 86400
TOTP_DIGITS = 6
TOTP_PERIOD = 30


def session_room(session_id: str) -> str:
    return f"session:{session_id}"


def parse_device_key(value: Any) -> ec.EllipticCurvePublicKey:
    """An EC P-256 *public* JWK, or InvalidRequest saying what is wrong with it."""
    if not isinstance(value, dict):
        raise InvalidRequest("publicKey must be a JWK object")
    if value.get("kty") != "EC":
        raise InvalidRequest("publicKey must be an EC key (kty EC), not " + str(value.get("kty")))
    if value.get("crv") != "P-256":
        raise InvalidRequest("publicKey must be on curve P-256, not " + str(value.get("crv")))
    if "d" in value:
        raise InvalidRequest("publicKey contains a private key (d): send only the public part")
    try:
        key = jwk.JWK(**{k: v for k, v in value.items() if k in ("kty", "crv", "x", "y")})
        public = key.get_op_key("verify")
    except Exception:
        raise InvalidRequest("publicKey is not a valid EC P-256 JWK (x, y)") from None
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise InvalidRequest("publicKey is not an EC public key")
    return public


def signature_bytes(signature: str) -> bytes:
    """DER bytes from a base64url signature: raw r||s (64 bytes, WebCrypto) or DER."""
    try:
        raw = b64url_decode(signature)
    except (binascii.Error, ValueError):
        return b""
    if len(raw) == 64:
        return encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    return raw


def mask_otp(otp: str, masked: int) -> str:
    return otp[: len(otp) - masked] + "*" * masked if masked else otp


@dataclass(frozen=True, kw_only=True)
class Enrolled:
    device_id: str
    totp_secret: str


@dataclass(frozen=True, kw_only=True)
class Initiated:
    session_id: str
    ws_token: str
    random: str
    expires_at: float


@dataclass(frozen=True, kw_only=True)
class OpenedSession:
    """A connection admitted to a pending session, with its number (newest wins)."""

    session_id: str
    seq: int
    auto_password: str
    expires_at: float


class SessionService:
    def __init__(self, *, config: Config, store: Store, tokens: TokenService, fanout: Fanout) -> None:
        if config.secret is None:
            raise ValueError("config.secret is required")
        self._secret = config.secret
        self._config = config
        self._store = store
        self._tokens = tokens
        self._fanout = fanout

    # -- wsToken and hash (PROTOCOL §2 "Auth sessions") ------------------------

    def ws_token(self, session_id: str) -> str:
        return b64url(hmac.new(self._secret, session_id.encode(), hashlib.sha256).digest())

    def check_ws_token(self, session_id: str, ws_token: str) -> None:
        if not hmac.compare_digest(self.ws_token(session_id).encode(), ws_token.encode()):
            raise InvalidToken("invalid wsToken")

    @staticmethod
    def approval_hash(ws_token: str, jwt: str, random: str) -> str:
        return b64url(hmac.new(ws_token.encode(), f"{jwt}.{random}".encode(), hashlib.sha256).digest())

    # -- enrollment and initiation -----------------------------------------

    async def enroll(self, user_id: str, public_key: Mapping[str, Any]) -> Enrolled:
        parse_device_key(public_key)
        device_id = secrets.token_urlsafe(16)
        totp_secret = pyotp.random_base32(32)
        record = {"userId": user_id, "publicKey": json.dumps(dict(public_key)), "totpSecret": totp_secret}
        await self._store.create_record(keys.device(device_id), record, ttl=DEVICE_TTL)
        await self._store.append(keys.user_devices(user_id), device_id, ttl=DEVICE_TTL)
        return Enrolled(device_id=device_id, totp_secret=totp_secret)

    async def initiate(self, user_id: str) -> Initiated:
        devices = await self._store.members(keys.user_devices(user_id))
        # autoPassword: the OTP of the user's newest device. An unknown user gets
        # one of the same shape from a random secret, and a session no device can
        # approve. Both paths do the same work (a device read, which misses for a
        # random id, and a TOTP), so their timing does not tell users apart.
        device = await self._store.get_record(keys.device(devices[-1] if devices else secrets.token_urlsafe(16)))
        secret = device["totpSecret"] if device is not None else pyotp.random_base32(32)
        otp = pyotp.TOTP(secret).now()
        session_id = secrets.token_urlsafe(18)
        expires_at = time.time() + self._config.session_ttl
        random = secrets.token_hex(8)
        record = {
            "userId": user_id,
            "devices": json.dumps(devices),
            "random": random,
            "status": "pending",
            "attempts": "0",
            "conn": "0",
            "autoPassword": mask_otp(otp, self._config.otp_mask),
            "expiresAt": str(expires_at),
        }
        await self._store.create_record(keys.session(session_id), record, ttl=self._config.session_ttl)
        return Initiated(
            session_id=session_id, ws_token=self.ws_token(session_id), random=random, expires_at=expires_at
        )

    # -- connections -----------------------------------------------------------

    async def open(self, session_id: str, ws_token: str) -> OpenedSession:
        """Admit a connection (either transport) and close older ones cluster-wide.

        PROTOCOL §6.13: the wsToken is checked first (no store needed).
        """
        self.check_ws_token(session_id, ws_token)
        record = await self._store.incr_field(keys.session(session_id), "conn")
        if record is None or record["status"] != "pending":
            raise SessionNotFound("unknown, expired or resolved session")
        seq = int(record["conn"])
        await self._fanout.close_room(session_room(session_id), closes.REPLACED, older_than=seq)
        return OpenedSession(
            session_id=session_id,
            seq=seq,
            auto_password=record["autoPassword"],
            expires_at=float(record["expiresAt"]),
        )

    async def superseded(self, session_id: str, seq: int) -> bool:
        """Has a newer connection (or a resolution) overtaken connection ``seq``?

        Checked once the connection is registered on its node: a newer connect
        then either raised the counter before this read, or publishes its close
        order after it, which finds this connection registered. So at most the
        newest of any number of concurrent connections survives, on any node.
        """
        record = await self._store.get_record(keys.session(session_id))
        return record is None or record["status"] != "pending" or int(record["conn"]) > seq

    # -- verification ----------------------------------------------------------

    async def verify(self, *, session_id: str, device_id: str, otp: str, signature: str) -> None:
        """Approve the session, or raise the failure after telling the browser."""
        key = keys.session(session_id)
        outcome, record = await self._store.count_attempt(key, limit=self._config.max_attempts)
        if outcome == "missing" or record is None:
            raise SessionNotFound("unknown or expired session")
        if outcome != "counted":
            raise SessionResolved("this session is already resolved")
        attempts_left = self._config.max_attempts - int(record["attempts"])
        failure = await self._check(record, session_id=session_id, device_id=device_id, otp=otp, signature=signature)
        if failure is not None:
            await self._reject(session_id, failure, attempts_left=attempts_left)
        if not await self._store.transition(key, from_status="pending", to_status="approved"):
            raise SessionResolved("this session is already resolved")
        await self._approve(session_id, record)

    async def _check(
        self, record: Mapping[str, str], *, session_id: str, device_id: str, otp: str, signature: str
    ) -> type[InvalidOtp] | type[InvalidSignature] | None:
        if device_id not in json.loads(record["devices"]):
            return InvalidSignature
        device = await self._store.get_record(keys.device(device_id))
        if device is None:
            return InvalidSignature
        public = parse_device_key(json.loads(device["publicKey"]))
        message = f"approve.{session_id}.{otp}".encode()
        try:
            public.verify(signature_bytes(signature), message, ec.ECDSA(hashes.SHA256()))
        except (CryptoInvalidSignature, ValueError):
            return InvalidSignature
        if not pyotp.TOTP(device["totpSecret"]).verify(otp, valid_window=self._config.otp_window):
            return InvalidOtp
        await self._store.create_record(keys.device(device_id), device, ttl=DEVICE_TTL)  # renew
        return None

    async def _reject(
        self, session_id: str, failure: type[InvalidOtp] | type[InvalidSignature], *, attempts_left: int
    ) -> None:
        room = session_room(session_id)
        final = attempts_left <= 0
        reason = "Invalid OTP" if failure is InvalidOtp else "Invalid signature"
        if final:
            if not await self._store.transition(keys.session(session_id), from_status="pending", to_status="rejected"):
                raise SessionResolved("this session is already resolved")  # a concurrent verify approved it
            reason = "Too many attempts"
        event = {"type": "rejected", "reason": reason, "attemptsLeft": max(0, attempts_left), "final": final}
        await self._fanout.publish(room, "rejected", event)
        if final:
            await self._fanout.close_room(room, closes.RESOLVED)
            raise TooManyAttempts("too many attempts: the session is closed")
        raise failure(reason, attempts_left=attempts_left)

    async def _approve(self, session_id: str, record: Mapping[str, str]) -> None:
        jwt, exp = self._tokens.mint(record["userId"], claims={"sid": session_id, "amr": ["otp", "hwk"]})
        random = record["random"]
        event = {
            "type": "approved",
            "jwt": jwt,
            "hash": self.approval_hash(self.ws_token(session_id), jwt, random),
            "random": random,
            "expiresAt": iso_z(exp),
        }
        room = session_room(session_id)
        await self._fanout.publish(room, "approved", event)
        await self._fanout.close_room(room, closes.RESOLVED)
