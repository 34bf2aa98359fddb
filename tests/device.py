"""A simulated phone: a real P-256 key and TOTP, signing like WebCrypto does."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

import pyotp
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from tests.support import http_json


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@dataclass
class Device:
    key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    device_id: str = ""
    totp_secret: str = ""

    def public_jwk(self) -> dict[str, Any]:
        numbers = self.key.public_key().public_numbers()
        return {
            "kty": "EC",
            "crv": "P-256",
            "x": b64url(numbers.x.to_bytes(32, "big")),
            "y": b64url(numbers.y.to_bytes(32, "big")),
        }

    async def enroll(self, base_url: str, user_id: str, *, admin_token: str | None) -> dict[str, Any]:
        status, body, _ = await http_json(
            "POST",
            f"{base_url}/auth/devices",
            token=admin_token,
            json={"userId": user_id, "publicKey": self.public_jwk()},
        )
        assert status == 201, body
        self.device_id, self.totp_secret = body["deviceId"], body["totpSecret"]
        return body

    def otp(self) -> str:
        return pyotp.TOTP(self.totp_secret).now()

    def sign(self, session_id: str, otp: str, *, der: bool = False) -> str:
        der_sig = self.key.sign(f"approve.{session_id}.{otp}".encode(), ec.ECDSA(hashes.SHA256()))
        if der:
            return b64url(der_sig)
        r, s = decode_dss_signature(der_sig)
        return b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))  # raw r||s, as WebCrypto

    async def verify(
        self,
        base_url: str,
        session_id: str,
        *,
        otp: str | None = None,
        signature: str | None = None,
        device_id: str | None = None,
    ) -> tuple[int, Any]:
        otp = otp if otp is not None else self.otp()
        body = {
            "sessionId": session_id,
            "deviceId": device_id if device_id is not None else self.device_id,
            "otp": otp,
            "signature": signature if signature is not None else self.sign(session_id, otp),
        }
        status, response, _ = await http_json("POST", f"{base_url}/auth/verify", json=body)
        return status, response


async def initiate(base_url: str, user_id: str) -> dict[str, Any]:
    status, body, _ = await http_json("POST", f"{base_url}/auth/initiate", json={"userId": user_id})
    assert status == 201, body
    return body
