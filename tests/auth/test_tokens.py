"""gateway/auth/tokens.py: minting, verification, trusted issuers and their JWKS."""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import logging
import secrets
import string
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from jwcrypto import jwk

from gateway.auth.tokens import GATEWAY_ISSUER, JWKS_REFETCH_INTERVAL, TokenService
from gateway.config import load_config
from gateway.errors import InvalidToken, TokenExpired
from tests.auth.conftest import Issuer
from tests.support import AUDIENCE, ISSUER, Clock, JwksServer


def service(**settings: Any) -> TokenService:
    return TokenService(config=load_config(environ={}, flags=settings))


async def test_minted_token_has_the_protocol_shape() -> None:
    tokens = service()
    token, exp = tokens.mint("alice", claims={"rooms": ["room:a*"], "iss": "forged"})
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "ES256" and header["kid"] == tokens.kid
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["iss"] == GATEWAY_ISSUER  # reserved claims cannot be overridden
    assert claims["sub"] == "alice" and claims["exp"] == exp and claims["rooms"] == ["room:a*"]
    assert claims["exp"] == int(claims["iat"] + 3600) and claims["jti"]
    principal = await tokens.verify(token)
    assert principal.sub == "alice" and principal.exp == exp


async def test_jwks_publishes_only_the_public_key() -> None:
    tokens = service()
    (key,) = tokens.jwks["keys"]
    assert key["kty"] == "EC" and key["crv"] == "P-256" and key["alg"] == "ES256" and key["use"] == "sig"
    assert "d" not in key and key["kid"] == tokens.kid


async def test_leeway_applies_to_exp() -> None:
    tokens = service(leeway=5)
    token, _ = tokens.mint("a", ttl=10, now=time.time() - 12)  # expired 2 s ago, within the leeway
    assert (await tokens.verify(token)).sub == "a"
    token, _ = tokens.mint("a", ttl=10, now=time.time() - 20)
    with pytest.raises(TokenExpired):
        await tokens.verify(token)


async def test_token_of_another_gateway_key_is_refused() -> None:
    ours, theirs = service(), service()
    token, _ = theirs.mint("a")
    with pytest.raises(InvalidToken, match="unknown signing key"):
        await ours.verify(token)


@pytest.mark.parametrize("value", [None, 5, "", "a.b", "x" * 9000])
async def test_garbage_is_invalid_token(value: object) -> None:
    with pytest.raises(InvalidToken):
        await service().verify(value)


async def test_jku_and_jwk_headers_are_ignored() -> None:
    """A token that brings its own key (jwk/jku header) is still checked against our keys only."""
    tokens = service()
    attacker = jwk.JWK.generate(kty="EC", crv="P-256", kid=tokens.kid)
    now = int(time.time())
    token = jwt.encode(
        {"iss": GATEWAY_ISSUER, "sub": "mallory", "iat": now, "exp": now + 60},
        attacker.export_to_pem(private_key=True, password=None),
        algorithm="ES256",
        headers={"kid": tokens.kid, "jwk": attacker.export_public(as_dict=True), "jku": "http://127.0.0.1:1/k"},
    )
    with pytest.raises(InvalidToken):
        await tokens.verify(token)


async def test_trusted_issuer_from_jwks_file(issuer: Issuer) -> None:
    tokens = service(issuers=[issuer.settings])
    principal = await tokens.verify(issuer.token(sub="ivy", rooms=["room:x"]))
    assert principal.sub == "ivy" and principal.claims["rooms"] == ["room:x"]


async def test_jwks_file_is_loaded_once_at_start(issuer: Issuer) -> None:
    tokens = service(issuers=[issuer.settings])
    await tokens.load_key_files()
    issuer.jwks_file.unlink()  # the keys read at start serve the tokens
    assert (await tokens.verify(issuer.token(sub="ivy"))).sub == "ivy"
    assert tokens.source(ISSUER).fetches == 1


@pytest.mark.parametrize(
    "claims",
    [
        {"aud": "someone-else"},
        {"iss": "https://other.example"},
        {"exp": int(time.time()) - 3600},
        {"nbf": int(time.time()) + 3600},
        {"sub": ""},
    ],
)
async def test_issuer_claims_are_checked(issuer: Issuer, claims: dict[str, Any]) -> None:
    tokens = service(issuers=[issuer.settings])
    with pytest.raises(InvalidToken):
        await tokens.verify(issuer.token(**claims))


async def test_issuer_token_signed_by_another_key_with_its_kid(issuer: Issuer) -> None:
    tokens = service(issuers=[issuer.settings])
    impostor = jwk.JWK.generate(kty="RSA", size=2048, kid=issuer.key["kid"])
    with pytest.raises(InvalidToken):
        await tokens.verify(issuer.token(key=impostor))


async def test_hs256_with_the_issuers_public_key_as_secret(issuer: Issuer) -> None:
    tokens = service(issuers=[issuer.settings])
    pem = issuer.key.export_to_pem()

    def b64(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    now = int(time.time())
    signing_input = (
        b64({"alg": "HS256", "kid": issuer.key["kid"]})
        + "."
        + b64({"iss": ISSUER, "aud": AUDIENCE, "sub": "m", "exp": now + 60})
    )
    mac = base64.urlsafe_b64encode(hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()).rstrip(b"=")
    with pytest.raises(InvalidToken):
        await tokens.verify(signing_input + "." + mac.decode())


async def test_algorithm_outside_the_issuers_allowlist(issuer: Issuer) -> None:
    settings = {**issuer.settings, "algorithms": ["ES256"]}
    tokens = service(issuers=[settings])
    with pytest.raises(InvalidToken):
        await tokens.verify(issuer.token())


def trusting(jwks_server: JwksServer, session: aiohttp.ClientSession, clock: Clock) -> TokenService:
    """A TokenService that trusts ``jwks_server``'s issuer, fetching its JWKS over
    ``session``, with ``clock`` timing the refetch interval."""
    issuer = {"iss": ISSUER, "jwks_uri": jwks_server.uri, "audience": AUDIENCE, "algorithms": ["ES256"]}
    return TokenService(config=load_config(environ={}, flags={"issuers": [issuer]}), http=lambda: session, clock=clock)


async def test_jwks_uri_rotation_and_refetch_rate_limit(jwks_server: JwksServer) -> None:
    clock = Clock()
    async with aiohttp.ClientSession() as session:
        tokens = trusting(jwks_server, session, clock)
        first = jwks_server.keys[0]
        assert (await tokens.verify(jwks_server.token(first))).sub == "ivy"
        assert jwks_server.fetches == 1
        for _ in range(5):  # cached: no further fetch
            await tokens.verify(jwks_server.token(first))
        assert jwks_server.fetches == 1

        # 30 tokens with random unknown kids within one interval: no extra fetch at all.
        for _ in range(30):
            with pytest.raises(InvalidToken):
                await tokens.verify(jwks_server.token(first, kid=secrets.token_hex(8)))
        assert jwks_server.fetches == 1

        # The issuer rotates; once the interval has passed, an unknown kid triggers one refetch.
        second = jwks_server.rotate("k2")
        clock.now += JWKS_REFETCH_INTERVAL
        assert (await tokens.verify(jwks_server.token(second))).sub == "ivy"
        assert jwks_server.fetches == 2
        for _ in range(30):
            with pytest.raises(InvalidToken):
                await tokens.verify(jwks_server.token(second, kid=secrets.token_hex(8)))
        assert jwks_server.fetches == 2
        # The rotated-out key is gone with the refetch.
        with pytest.raises(InvalidToken):
            await tokens.verify(jwks_server.token(first))


async def test_jwks_fetch_failure_keeps_old_keys(jwks_server: JwksServer) -> None:
    clock = Clock()
    async with aiohttp.ClientSession() as session:
        tokens = trusting(jwks_server, session, clock)
        key = jwks_server.keys[0]
        await tokens.verify(jwks_server.token(key))
        await jwks_server.close()  # the issuer goes down
        clock.now += JWKS_REFETCH_INTERVAL
        with pytest.raises(InvalidToken):
            await tokens.verify(jwks_server.token(key, kid="unknown"))
        assert (await tokens.verify(jwks_server.token(key))).sub == "ivy"


@pytest.mark.parametrize("claim", ["nbf", "iat"])
async def test_leeway_applies_to_nbf_and_iat(issuer: Issuer, claim: str) -> None:
    """PROTOCOL §6.15: a claim in the future by less than the leeway is accepted; beyond
    it the token is refused as invalid (PyJWT's ImmatureSignatureError), not as expired."""
    tokens = service(leeway=5, issuers=[issuer.settings])
    now = int(time.time())
    assert (await tokens.verify(issuer.token(**{claim: now + 3}))).sub == "ivy"
    with pytest.raises(InvalidToken) as refused:
        await tokens.verify(issuer.token(**{claim: now + 20}))
    assert type(refused.value) is InvalidToken and refused.value.reason == "invalid_token"
    strict = service(leeway=0, issuers=[issuer.settings])  # the leeway is what admitted +3 s
    with pytest.raises(InvalidToken):
        await strict.verify(issuer.token(**{claim: now + 3}))


async def test_leeway_applies_to_the_iat_of_gateway_tokens() -> None:
    tokens = service(leeway=5)
    token, _ = tokens.mint("a", now=time.time() + 3)  # minted by a node whose clock is 3 s ahead
    assert (await tokens.verify(token)).sub == "a"
    token, _ = tokens.mint("a", now=time.time() + 20)
    with pytest.raises(InvalidToken) as refused:
        await tokens.verify(token)
    assert type(refused.value) is InvalidToken


# -- the token's alg must fit the key its kid names ------------------------------------

MIXED_ALGORITHMS = ["RS256", "PS256", "ES256", "ES384", "EdDSA"]
# Which key of the mixed issuer each algorithm is really meant for.
FITTING = {"RS256": "rsa", "PS256": "rsa", "ES256": "p256", "ES384": "p384", "EdDSA": "ed25519"}


@pytest.fixture
def mixed_keys(tmp_path: Path) -> dict[str, jwk.JWK]:
    return {
        "rsa": jwk.JWK.generate(kty="RSA", size=2048, kid="rsa"),
        "p256": jwk.JWK.generate(kty="EC", crv="P-256", kid="p256"),
        "p384": jwk.JWK.generate(kty="EC", crv="P-384", kid="p384"),
        "ed25519": jwk.JWK.generate(kty="OKP", crv="Ed25519", kid="ed25519"),
    }


def jwks_file_issuer(tmp_path: Path, keys: list[dict[str, Any]], algorithms: list[str]) -> dict[str, Any]:
    """The settings of a trusted issuer whose JWKS file holds ``keys`` as given."""
    path = tmp_path / "issuer.jwks.json"
    path.write_text(json.dumps({"keys": keys}))
    return {"iss": ISSUER, "jwks_file": str(path), "audience": AUDIENCE, "algorithms": algorithms}


def mixed_service(tmp_path: Path, keys: dict[str, jwk.JWK]) -> TokenService:
    public = [key.export_public(as_dict=True) for key in keys.values()]
    return service(issuers=[jwks_file_issuer(tmp_path, public, MIXED_ALGORITHMS)])


def signed(key: jwk.JWK, alg: str, *, kid: str | None = None, **claims: Any) -> str:
    """An issuer token signed with ``key`` under ``alg``, naming ``kid`` (default: the key's own)."""
    now = int(time.time())
    payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": "ivy", "iat": now, "exp": now + 300, **claims}
    pem = key.export_to_pem(private_key=True, password=None)
    return jwt.encode(payload, pem, algorithm=alg, headers={"kid": kid or key["kid"]})


@pytest.mark.parametrize("alg", MIXED_ALGORITHMS)
async def test_each_alg_verifies_with_the_key_it_fits(tmp_path: Path, mixed_keys: dict[str, jwk.JWK], alg: str) -> None:
    tokens = mixed_service(tmp_path, mixed_keys)
    assert (await tokens.verify(signed(mixed_keys[FITTING[alg]], alg))).sub == "ivy"


@pytest.mark.parametrize(
    ("alg", "kid"),
    [(alg, kid) for alg in MIXED_ALGORITHMS for kid in ("rsa", "p256", "p384", "ed25519") if kid != FITTING[alg]],
)
async def test_alg_that_does_not_fit_the_named_key_is_invalid_token(
    tmp_path: Path, mixed_keys: dict[str, jwk.JWK], alg: str, kid: str
) -> None:
    """An issuer allowing several algorithms: a token whose header names an alg of
    another key type (ES256 with the kid of an RSA key, RS256 with an EC kid, ...)
    or another curve (ES384 with a P-256 kid) is refused as invalid_token. PyJWT
    raised TypeError for the cross-type cases (an HTTP 500, a silent connect)."""
    tokens = mixed_service(tmp_path, mixed_keys)
    token = signed(mixed_keys[FITTING[alg]], alg, kid=kid)
    with pytest.raises(InvalidToken) as refused:
        await tokens.verify(token)
    assert type(refused.value) is InvalidToken and refused.value.reason == "invalid_token"


async def test_unexpected_failure_inside_pyjwt_is_invalid_token(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An issuer whose JWKS (wrongly) publishes an RSA private key: the key fits
    RS256, but PyJWT's RSA verification expects a public key and raises
    AttributeError. Whatever PyJWT raises, the token is refused as
    invalid_token, and the log names the failure without the token."""
    leaked = jwk.JWK.generate(kty="RSA", size=2048, kid="leaked")
    issuer = jwks_file_issuer(tmp_path, [leaked.export(private_key=True, as_dict=True)], ["RS256"])
    tokens = service(issuers=[issuer])
    token = signed(leaked, "RS256")
    with caplog.at_level(logging.WARNING, logger="gateway.auth.tokens"), pytest.raises(InvalidToken) as refused:
        await tokens.verify(token)
    assert type(refused.value) is InvalidToken and refused.value.reason == "invalid_token"
    assert "AttributeError" in caplog.text
    assert all(part not in caplog.text for part in token.split("."))


# -- time claims: finite numbers the gateway can represent ------------------------------

LAST_SECOND = 253402300799  # 9999-12-31T23:59:59Z, the last time PROTOCOL §6.1 can write


@pytest.mark.parametrize("claim", ["exp", "iat", "nbf"])
@pytest.mark.parametrize(
    "value",
    [1e20, 10**20, LAST_SECOND + 1, float("inf"), float("-inf"), float("nan"), -1, "1700000000", True, None, [1], {}],
    ids=["1e20", "10**20", "year-10000", "Infinity", "-Infinity", "NaN", "negative", "string", "true", "null", "list",
         "object"],
)  # fmt: skip
async def test_time_claim_must_be_a_representable_number(claim: str, value: object) -> None:
    """exp/iat/nbf must be JSON numbers between 1970 and 9999-12-31T23:59:59Z: a far-
    future exp crashed the `authenticated` payload (OverflowError), a string exp was
    read as a number by PyJWT. Refused as invalid_token, not token_expired."""
    tokens = service()
    now = time.time()
    token, _ = tokens.mint("a", now=now)
    claims = jwt.decode(token, options={"verify_signature": False})
    claims[claim] = value
    forged = jwt.encode(claims, tokens._signer.key, algorithm="ES256", headers={"kid": tokens.kid})
    with pytest.raises(InvalidToken) as refused:
        await tokens.verify(forged)
    assert type(refused.value) is InvalidToken and refused.value.reason == "invalid_token"


@pytest.mark.parametrize("literal", ["1e400", "Infinity", "-Infinity", "NaN"])
async def test_time_claim_json_literals_beyond_numbers(issuer: Issuer, literal: str) -> None:
    """Python's json module reads these (1e400 as inf), JSON does not have them."""
    tokens = service(issuers=[issuer.settings])
    now = int(time.time())
    payload = f'{{"iss": "{ISSUER}", "aud": "{AUDIENCE}", "sub": "ivy", "iat": {now}, "exp": {literal}}}'
    pem = issuer.key.export_to_pem(private_key=True, password=None)
    token = jwt.api_jws.encode(payload.encode(), pem, algorithm="RS256", headers={"kid": issuer.key["kid"]})
    with pytest.raises(InvalidToken) as refused:
        await tokens.verify(token)
    assert type(refused.value) is InvalidToken


async def test_time_claims_up_to_the_last_representable_second(issuer: Issuer) -> None:
    tokens = service(issuers=[issuer.settings])
    principal = await tokens.verify(issuer.token(exp=LAST_SECOND, iat=0, nbf=0.5))
    assert principal.exp == LAST_SECOND and principal.iat == 0


# -- one spelling per token: canonical base64url ------------------------------------------


def _every_segment_has_spare_bits(issuer: Issuer) -> str:
    """A valid issuer token whose three segments all end in a character with unused
    low bits (length 2 or 3 mod 4), and whose signature has - or _ in it."""
    pem = issuer.key.export_to_pem(private_key=True, password=None)
    now = int(time.time())
    for _ in range(20):
        for header_pad, claim_pad in itertools.product(range(4), range(4)):
            payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": "ivy", "exp": now + 300, "pad": "p" * claim_pad}
            headers = {"kid": issuer.key["kid"], "x": "y" * header_pad}
            token = jwt.encode(payload, pem, algorithm="RS256", headers=headers)
            segments = token.split(".")
            if all(len(s) % 4 in (2, 3) for s in segments) and set("-_") & set(segments[2]):
                return token
        now += 1  # another signature
    raise AssertionError("no such token")


_ALPHABET = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"


def _spare_bits_set(segment: str) -> str:
    """The same bytes spelled with the unused low bits of the last character set."""
    spare = 0b1111 if len(segment) % 4 == 2 else 0b11
    return segment[:-1] + _ALPHABET[_ALPHABET.index(segment[-1]) | spare]


def _respell(token: str, how: str) -> str:
    header, payload, signature = token.split(".")
    spellings = {
        "padding on the signature": f"{header}.{payload}.{signature}==",
        "one = on the signature": f"{header}.{payload}.{signature}=",
        "padding on the header": f"{header}{'=' * (-len(header) % 4)}.{payload}.{signature}",
        "padding on the payload": f"{header}.{payload}{'=' * (-len(payload) % 4)}.{signature}",
        "spare bits in the header": f"{_spare_bits_set(header)}.{payload}.{signature}",
        "spare bits in the payload": f"{header}.{_spare_bits_set(payload)}.{signature}",
        "spare bits in the signature": f"{header}.{payload}.{_spare_bits_set(signature)}",
        "standard base64 alphabet": f"{header}.{payload}.{signature.replace('-', '+').replace('_', '/')}",
        "a length of 1 mod 4": f"{header}.{payload}.{signature}AAA",
        "a trailing newline": f"{token}\n",
        "a leading space": f" {token}",
        "a space inside": f"{header}.{payload}.{signature[:10]} {signature[10:]}",
        "a fourth segment": f"{token}.",
    }
    respelled = spellings[how]
    assert respelled != token
    return respelled


@pytest.mark.parametrize(
    "how",
    [
        "padding on the signature",
        "one = on the signature",
        "padding on the header",
        "padding on the payload",
        "spare bits in the header",
        "spare bits in the payload",
        "spare bits in the signature",
        "standard base64 alphabet",
        "a length of 1 mod 4",
        "a trailing newline",
        "a leading space",
        "a space inside",
        "a fourth segment",
    ],
)
async def test_another_spelling_of_a_valid_token_is_invalid_token(issuer: Issuer, how: str) -> None:
    """A JWT has one spelling: base64url without padding, no other characters, the
    unused bits of the last character zero. PyJWT accepted, for one, the token
    with == after its signature, which made two different strings of one token."""
    tokens = service(issuers=[issuer.settings])
    token = _every_segment_has_spare_bits(issuer)
    assert (await tokens.verify(token)).sub == "ivy"
    with pytest.raises(InvalidToken) as refused:
        await tokens.verify(_respell(token, how))
    assert type(refused.value) is InvalidToken and refused.value.reason == "invalid_token"


# -- the key set of a jwks_uri issuer has a lifetime --------------------------------------


@pytest.mark.parametrize(
    ("cache_control", "interval"),
    [
        (None, 600),  # no header: 10 min
        ("public, max-age=120", 120),
        ('max-age="300"', 300),
        ("max-age=1", 60),  # at least 60 s
        ("max-age=0", 60),
        ("no-store", 60),
        ("no-cache", 60),
        ("max-age=999999", 86400),  # at most 24 h
        ("max-age=soon", 600),  # unreadable: as if absent
        ("s-maxage=120", 600),  # for shared caches, not for us
    ],
)
async def test_key_set_refresh_follows_cache_control(
    jwks_server: JwksServer, cache_control: str | None, interval: float
) -> None:
    jwks_server.cache_control = cache_control
    clock = Clock()
    async with aiohttp.ClientSession() as session:
        tokens = trusting(jwks_server, session, clock)
        source = tokens.source(ISSUER)
        assert source.next_refresh is None  # fetched on first need, not before
        await tokens.verify(jwks_server.token())
        assert source.next_refresh == clock.now + interval


async def test_failed_refreshes_back_off_and_keep_the_keys(
    jwks_server: JwksServer, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    async with aiohttp.ClientSession() as session:
        tokens = trusting(jwks_server, session, clock)
        source = tokens.source(ISSUER)
        await tokens.verify(jwks_server.token())
        jwks_server.failing = True
        delays = []
        with caplog.at_level(logging.WARNING, logger="gateway.auth.tokens"):
            for _ in range(6):
                assert source.next_refresh is not None
                clock.now = source.next_refresh
                await source.refresh()
                delays.append(source.next_refresh - clock.now)
        assert delays == [60, 120, 240, 480, 600, 600]  # doubling from the lower bound, capped at 10 min
        assert caplog.text.count(f"jwks fetch for {ISSUER} failed") == 6
        assert (await tokens.verify(jwks_server.token())).sub == "ivy"  # the old keys still serve
        jwks_server.failing = False
        clock.now = source.next_refresh
        await source.refresh()
        assert source.next_refresh == clock.now + 600 and jwks_server.fetches == 8


async def test_the_lower_bound_of_the_refresh_interval_is_a_parameter(jwks_server: JwksServer) -> None:
    jwks_server.cache_control = "max-age=1"
    clock = Clock()
    issuer = {"iss": ISSUER, "jwks_uri": jwks_server.uri, "audience": AUDIENCE, "algorithms": ["ES256"]}
    config = load_config(environ={}, flags={"issuers": [issuer]})
    async with aiohttp.ClientSession() as session:
        tokens = TokenService(config=config, http=lambda: session, clock=clock, jwks_min_refresh=0.5)
        await tokens.verify(jwks_server.token())
        assert tokens.source(ISSUER).next_refresh == clock.now + 1


async def test_without_an_http_client_only_fetching_a_jwks_uri_fails(jwks_server: JwksServer) -> None:
    """`ticketgate token` builds a TokenService without an HTTP client: minting needs
    only the signing key, so only a fetch of an issuer's jwks_uri is refused."""
    issuer = {"iss": ISSUER, "jwks_uri": jwks_server.uri, "audience": AUDIENCE, "algorithms": ["ES256"]}
    tokens = TokenService(config=load_config(environ={}, flags={"issuers": [issuer]}))
    token, _ = tokens.mint("alice")
    assert (await tokens.verify(token)).sub == "alice"
    with pytest.raises(RuntimeError, match=f"issuer {ISSUER}: no HTTP client to fetch its jwks_uri"):
        await tokens.source(ISSUER).fetch()
    with pytest.raises(InvalidToken, match="unknown signing key"):
        await tokens.verify(jwks_server.token())
    assert jwks_server.fetches == 0
