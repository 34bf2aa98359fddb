"""Bad input on every HTTP door: the documented status and error code, and the
process still healthy afterwards (PROTOCOL §2 error shape)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest

from gateway.auth.tokens import GATEWAY_ISSUER
from tests.conftest import Gateway, MakeGateway
from tests.support import http_json


async def expect_error(gateway: Gateway, method: str, path: str, status: int, code: str, **kwargs: object) -> dict:
    got, body, headers = await http_json(method, f"{gateway.url}{path}", **kwargs)  # type: ignore[arg-type]
    assert got == status, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert set(body) == {"error"}
    health, _, _ = await http_json("GET", f"{gateway.url}/healthz")
    assert health == 200
    return headers


def b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def test_malformed_json(gateway: Gateway) -> None:
    await expect_error(
        gateway,
        "POST",
        "/api/publish",
        400,
        "invalid_request",
        token=gateway.config.admin_token,
        data=b'{"room": ',
        headers={"Content-Type": "application/json"},
    )


async def test_body_that_is_not_an_object(gateway: Gateway) -> None:
    await expect_error(
        gateway, "POST", "/api/publish", 400, "invalid_request", token=gateway.config.admin_token, json=[1]
    )


async def test_unknown_field_is_named(gateway: Gateway) -> None:
    status, body, _ = await http_json(
        "POST",
        f"{gateway.url}/api/publish",
        token=gateway.config.admin_token,
        json={"room": "user:a", "event": "e", "colour": "red"},
    )
    assert status == 400
    assert body["error"]["code"] == "invalid_request"
    assert "colour" in body["error"]["message"]


async def test_unknown_field_on_ticket_request(gateway: Gateway) -> None:
    await expect_error(
        gateway, "POST", "/ws/ticket", 400, "invalid_request", token=gateway.mint(), json={"sub": "root"}
    )


@pytest.mark.parametrize(
    "body",
    [
        {"room": "nobody", "event": "e"},
        {"room": "user:a", "event": "connect"},
        {"room": "user:a", "event": ""},
        {"room": "user:a"},
        {"room": 5, "event": "e"},
    ],
)
async def test_publish_validation(gateway: Gateway, body: dict) -> None:
    await expect_error(
        gateway, "POST", "/api/publish", 400, "invalid_request", token=gateway.config.admin_token, json=body
    )


async def test_two_megabyte_body(gateway: Gateway) -> None:
    payload = json.dumps({"room": "user:a", "event": "e", "data": "x" * (2 * 1024 * 1024)}).encode()
    await expect_error(
        gateway, "POST", "/api/publish", 413, "payload_too_large", token=gateway.config.admin_token, data=payload
    )


async def test_missing_bearer(gateway: Gateway) -> None:
    headers = await expect_error(gateway, "POST", "/ws/ticket", 401, "missing_credentials")
    assert headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("header", ["Bearer", "Basic dXNlcjpwYXNz", "Bearer garbage", "Bearer a.b.c"])
async def test_garbage_bearer(gateway: Gateway, header: str) -> None:
    await expect_error(gateway, "POST", "/ws/ticket", 401, "invalid_token", headers={"Authorization": header})


async def test_wrong_admin_token(gateway: Gateway) -> None:
    await expect_error(
        gateway, "POST", "/api/publish", 401, "invalid_token", token="x" * 32, json={"room": "user:a", "event": "e"}
    )


async def test_an_access_token_is_not_an_admin_token(gateway: Gateway) -> None:
    await expect_error(
        gateway,
        "POST",
        "/api/publish",
        401,
        "invalid_token",
        token=gateway.mint(),
        json={"room": "user:a", "event": "e"},
    )


async def test_admin_api_off_without_admin_token(make_gateway: MakeGateway) -> None:
    gateway = await make_gateway(admin_token=None)
    await expect_error(
        gateway, "POST", "/api/publish", 403, "forbidden", token="x" * 32, json={"room": "user:a", "event": "e"}
    )


async def test_alg_none(gateway: Gateway) -> None:
    now = int(time.time())
    token = b64({"alg": "none", "typ": "JWT", "kid": gateway.jwks()["keys"][0]["kid"]})
    token += "." + b64({"iss": GATEWAY_ISSUER, "sub": "mallory", "iat": now, "exp": now + 60}) + "."
    await expect_error(gateway, "POST", "/ws/ticket", 401, "invalid_token", token=token)


async def test_hs256_maced_with_the_gateways_public_key(gateway: Gateway) -> None:
    """The classic algorithm confusion: HMAC keyed with the public key's PEM."""
    from jwcrypto import jwk

    public = jwk.JWK(**gateway.jwks()["keys"][0])
    pem = public.export_to_pem()
    now = int(time.time())
    claims = {"iss": GATEWAY_ISSUER, "sub": "mallory", "iat": now, "exp": now + 60}
    header = b64({"alg": "HS256", "typ": "JWT", "kid": public["kid"]})
    body = b64(claims)
    sig = base64.urlsafe_b64encode(hmac.new(pem, f"{header}.{body}".encode(), hashlib.sha256).digest()).rstrip(b"=")
    await expect_error(gateway, "POST", "/ws/ticket", 401, "invalid_token", token=f"{header}.{body}.{sig.decode()}")


async def test_token_signed_by_another_key_with_our_kid(gateway: Gateway) -> None:
    from jwcrypto import jwk

    other = jwk.JWK.generate(kty="EC", crv="P-256")
    now = int(time.time())
    token = jwt.encode(
        {"iss": GATEWAY_ISSUER, "sub": "mallory", "iat": now, "exp": now + 60},
        other.export_to_pem(private_key=True, password=None),
        algorithm="ES256",
        headers={"kid": gateway.jwks()["keys"][0]["kid"]},
    )
    await expect_error(gateway, "POST", "/ws/ticket", 401, "invalid_token", token=token)


async def test_expired_token(gateway: Gateway) -> None:
    token = gateway.mint("erin", ttl=10, now=time.time() - 3600)
    await expect_error(gateway, "POST", "/ws/ticket", 401, "token_expired", token=token)


async def test_token_from_an_unknown_issuer(gateway: Gateway) -> None:
    from jwcrypto import jwk

    key = jwk.JWK.generate(kty="EC", crv="P-256", kid="k")
    now = int(time.time())
    token = jwt.encode(
        {"iss": "https://evil.example", "sub": "m", "iat": now, "exp": now + 60},
        key.export_to_pem(private_key=True, password=None),
        algorithm="ES256",
        headers={"kid": "k"},
    )
    await expect_error(gateway, "POST", "/ws/ticket", 401, "invalid_token", token=token)


async def test_token_over_8kb_is_refused_without_decoding(gateway: Gateway) -> None:
    token = gateway.mint("alice", claims={"pad": "x" * 9000})
    assert 8 * 1024 < len(token) < 16 * 1024
    await expect_error(gateway, "POST", "/ws/ticket", 401, "invalid_token", token=token)


async def test_one_megabyte_token_is_refused_by_the_http_parser(gateway: Gateway) -> None:
    """A 1 MB header never reaches the app: aiohttp's parser answers 4xx, the process lives on."""
    status, _, _ = await http_json("POST", f"{gateway.url}/ws/ticket", token="a" * (1024 * 1024))
    assert status in (400, 431)
    health, _, _ = await http_json("GET", f"{gateway.url}/healthz")
    assert health == 200


async def test_what_the_http_parser_refuses_uses_the_error_shape(gateway: Gateway) -> None:
    """Oversized header field (> 16 KB) and request line (> 8190 bytes): 431 and 414, as JSON."""
    await expect_error(gateway, "POST", "/ws/ticket", 431, "headers_too_large", token="a" * (20 * 1024))
    await expect_error(gateway, "GET", "/healthz?pad=" + "p" * 9000, 414, "uri_too_long")


async def test_unknown_route_and_method_use_the_error_shape(gateway: Gateway) -> None:
    await expect_error(gateway, "GET", "/nope", 404, "not_found")
    await expect_error(gateway, "GET", "/ws/ticket", 405, "method_not_allowed")
