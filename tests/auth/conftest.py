"""A trusted external issuer: an RSA key whose public JWKS is a file on disk."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from jwcrypto import jwk

from tests.support import AUDIENCE, ISSUER


@dataclass
class Issuer:
    key: jwk.JWK
    jwks_file: Path

    @property
    def settings(self) -> dict[str, Any]:
        return {"iss": ISSUER, "jwks_file": str(self.jwks_file), "audience": AUDIENCE, "algorithms": ["RS256"]}

    def token(self, *, key: jwk.JWK | None = None, **claims: Any) -> str:
        signer = key or self.key
        now = int(time.time())
        payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": "ivy", "iat": now, "exp": now + 300, **claims}
        pem = signer.export_to_pem(private_key=True, password=None)
        return jwt.encode(payload, pem, algorithm="RS256", headers={"kid": signer["kid"]})


@pytest.fixture
def issuer(tmp_path: Path) -> Issuer:
    key = jwk.JWK.generate(kty="RSA", size=2048, kid="idp-key-1")
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [key.export_public(as_dict=True)]}))
    return Issuer(key=key, jwks_file=path)
