"""gateway/config.py and the CLI: precedence, validation, one clear line and exit 2."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

import jwt
import pytest

from gateway.config import IssuerConfig, load_config
from gateway.errors import ConfigError
from tests.support import ROOT, keygen, write_toml


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
    )


def test_defaults_match_the_protocol() -> None:
    config = load_config(environ={})
    assert (config.host, config.port, config.redis_url, config.engine) == ("127.0.0.1", 8080, None, "memory")
    assert (config.ticket_ttl, config.session_ttl, config.access_token_ttl) == (30, 60, 3600)
    assert (config.otp_mask, config.otp_window, config.max_attempts) == (2, 1, 3)
    assert (config.deferred_auth, config.auth_timeout, config.on_expiry) == (True, 10, "reauth")
    assert (config.expiry_warning, config.reauth_grace, config.refresh_tokens) == (30, 30, True)
    assert (config.refresh_ttl, config.per_message_auth, config.max_pending_per_ip) == (86400, False, 100)
    assert (config.leeway, config.redis_channel, config.issuers, config.allowed_origins) == (5, "socketio", (), ())
    assert config.admin_token is None
    assert {"signing_key", "secret"} <= config.generated  # ephemeral, and the CLI warns


def test_precedence_flag_over_env_over_file(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text("port = 1111\nticket_ttl = 11\nauth_timeout = 3\n")
    env = {"TICKETGATE_PORT": "2222", "TICKETGATE_TICKET_TTL": "22"}
    config = load_config(file=file, environ=env, flags={"port": 3333})
    assert (config.port, config.ticket_ttl, config.auth_timeout) == (3333, 22, 3)


def test_env_lists(tmp_path: Path) -> None:
    config = load_config(environ={"TICKETGATE_ALLOWED_ORIGINS": "https://a.example, https://b.example"})
    assert config.allowed_origins == ("https://a.example", "https://b.example")
    config = load_config(environ={"TICKETGATE_ALLOWED_ORIGINS": '["https://c.example"]'})
    assert config.allowed_origins == ("https://c.example",)


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"colour": "red"}, "colour"),
        ({"port": "eighty"}, "port"),
        ({"on_expiry": "explode"}, "on_expiry"),
        ({"leeway": 60}, "leeway"),
        ({"secret": "c2hvcnQ"}, "secret"),
        ({"signing_key": '{"kty": "oct", "k": "AAAA"}'}, "signing_key"),
        ({"allowed_origins": ["*"]}, "allowed_origins"),
        ({"redis_url": "redis://127.0.0.1:1/0"}, "signing_key"),
        ({"issuers": [{"iss": "x"}]}, "issuers"),
        ({"keepalive_timeout": 0}, "keepalive_timeout"),
        ({"header_timeout": -1}, "header_timeout"),
        ({"body_timeout": "soon"}, "body_timeout"),
        ({"workers": 0}, "workers"),
        ({"workers": 2}, "redis_url"),
        ({"workers": 2, "redis_url": "redis://127.0.0.1:1/0", "port": 0}, "port"),
        ({"workers": 2, "redis_url": "redis://127.0.0.1:1/0", "node_name": "gw1"}, "node_name"),
        ({"node_name": "gw1\r\nX-Forged: 1"}, "node_name"),
        ({"node_name": "gw 1"}, "node_name"),
        ({"recovery_window": -1}, "recovery_window"),
        ({"recovery_window": 3601}, "recovery_window"),
        ({"redis_cluster": True, "redis_url": "unix:///tmp/r.sock"}, "redis_cluster"),
    ],
)
def test_bad_settings_name_the_problem(settings: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_config(environ={}, flags=settings)


def test_slow_client_limits_default_and_come_from_env_and_file(tmp_path: Path) -> None:
    config = load_config(environ={})
    assert (config.keepalive_timeout, config.header_timeout, config.body_timeout) == (75, 10, 15)
    file = tmp_path / "c.toml"
    file.write_text("keepalive_timeout = 30\nheader_timeout = 2.5\nbody_timeout = 4\n")
    config = load_config(file=file, environ={"TICKETGATE_BODY_TIMEOUT": "6.5"})
    assert (config.keepalive_timeout, config.header_timeout, config.body_timeout) == (30, 2.5, 6.5)


def test_unknown_env_setting() -> None:
    with pytest.raises(ConfigError, match="TICKETGATE_COLOUR"):
        load_config(environ={"TICKETGATE_COLOUR": "red"})


def test_star_origin_allowed_with_demo() -> None:
    config = load_config(environ={}, flags={"allowed_origins": ["*"], "demo": True})
    assert config.allowed_origins == ("*",) and config.admin_token and "admin_token" in config.generated


@pytest.mark.parametrize(
    ("content", "named"),
    [
        ("port = 'x'\n", "port"),
        ("not toml at all [\n", "not valid TOML"),
        ("mystery = 1\n", "mystery"),
        ("redis_url = 'redis://127.0.0.1:6399/0'\n", "signing_key"),
    ],
)
def test_cli_bad_config_prints_one_line_and_exits_2(tmp_path: Path, content: str, named: str) -> None:
    file = tmp_path / "bad.toml"
    file.write_text(content)
    result = run_cli("serve", "--config", str(file), timeout=15)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ticketgate: config error:") and named in lines[0]
    assert "Traceback" not in result.stderr


def one_line_exit_2(result: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a CLI run that refused to start with status 2."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda path: path.mkdir(), "cannot read config file {path}: Is a directory"),
        (lambda path: None, "cannot read config file {path}: No such file or directory"),
        (lambda path: path.write_bytes(b"port = 8080\n\xff\xfe\n"), "config file {path} is not UTF-8 text"),
    ],
    ids=["directory", "missing", "not-utf8"],
)
def test_cli_unreadable_config_file(tmp_path: Path, make: Callable[[Path], object], says: str) -> None:
    path = tmp_path / "ticketgate.toml"
    make(path)
    line = one_line_exit_2(run_cli("serve", "--config", str(path), timeout=15))
    assert line == "ticketgate: config error: " + says.format(path=path)


def test_cli_port_in_use(tmp_path: Path) -> None:
    """The bind fails after the app has started: its resources are closed
    quietly and the error is still the only line."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = one_line_exit_2(run_cli("serve", "--port", str(port), timeout=15))
    assert line == f"ticketgate: cannot listen on 127.0.0.1:{port}: address already in use"


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (None, "cannot read jwks_file {path}: No such file or directory"),
        ('{"keys": [', "jwks_file {path} is not a JWKS: Expecting value: line 1 column 11 (char 10)"),
        ("[1, 2]", 'jwks_file {path} is not a JWKS: expected a JSON object with a "keys" array'),
        ('{"keys": [{"kty": "nope"}]}', "jwks_file {path} has no usable signing key"),
    ],
    ids=["missing", "not-json", "not-a-jwks", "no-usable-key"],
)
def test_cli_bad_jwks_file_stops_the_start(tmp_path: Path, content: str | None, says: str) -> None:
    """A [[issuers]] jwks_file is loaded once at start: a bad one stops the
    gateway then, with one line naming the file, not at the issuer's first token."""
    jwks = tmp_path / "partner.jwks.json"
    if content is not None:
        jwks.write_text(content)
    issuer = {"iss": "https://partner.example", "jwks_file": str(jwks)}
    file = write_toml(tmp_path / "issuers.toml", {"issuers": [issuer]})
    line = one_line_exit_2(run_cli("serve", "--config", str(file), "--port", "0", timeout=15))
    assert line == "ticketgate: config error: issuer https://partner.example: " + says.format(path=jwks)


def test_cli_bad_env_exits_2() -> None:
    result = run_cli("serve", env={"TICKETGATE_MAX_ATTEMPTS": "0"})
    assert result.returncode == 2 and "max_attempts" in result.stderr and "Traceback" not in result.stderr


def test_keygen_output_is_a_loadable_toml_snippet(tmp_path: Path) -> None:
    values = keygen()
    file = tmp_path / "keys.toml"
    file.write_text(run_cli("keygen").stdout + "\nport = 9999\n")
    config = load_config(file=file, environ={})
    assert config.port == 9999 and not config.generated
    assert config.signing_key is not None and config.signing_key["crv"] == "P-256" and config.signing_key["kid"]
    assert len(config.secret or b"") == 32
    assert set(values) == {"signing_key", "secret"}


def test_token_command_mints_a_verifiable_token(tmp_path: Path) -> None:
    file = tmp_path / "keys.toml"
    file.write_text(run_cli("keygen").stdout)
    result = run_cli(
        "token", "--config", str(file), "--sub", "alice", "--ttl", "120", "--claims", '{"rooms": ["room:*"]}'
    )
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    key = dict(load_config(file=file, environ={}).signing_key or {})
    public = jwt.PyJWK({k: v for k, v in key.items() if k != "d"})
    claims = jwt.decode(token, public.key, algorithms=["ES256"])
    assert claims["sub"] == "alice" and claims["rooms"] == ["room:*"] and claims["exp"] == int(claims["iat"] + 120)
    assert jwt.get_unverified_header(token)["kid"] == key["kid"]


def test_token_command_refuses_a_config_without_key(tmp_path: Path) -> None:
    file = tmp_path / "empty.toml"
    file.write_text("")
    result = run_cli("token", "--config", str(file), "--sub", "alice")
    assert result.returncode == 2 and "signing_key" in result.stderr


def test_token_command_refuses_bad_claims(tmp_path: Path) -> None:
    file = tmp_path / "keys.toml"
    file.write_text(run_cli("keygen").stdout)
    result = run_cli("token", "--config", str(file), "--sub", "a", "--claims", "[1]")
    assert result.returncode == 2 and "--claims" in result.stderr


def test_token_command_with_a_jwks_uri_issuer(tmp_path: Path) -> None:
    """Minting needs only the signing key: an issuer with a jwks_uri (never fetched
    here) used to crash the command with a traceback."""
    file = tmp_path / "keys.toml"
    issuer = '[[issuers]]\niss = "https://idp.example"\njwks_uri = "https://idp.example/.well-known/jwks.json"\n'
    file.write_text(run_cli("keygen").stdout + "\n" + issuer)
    result = run_cli("token", "--config", str(file), "--sub", "alice", "--ttl", "60")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    key = dict(load_config(file=file, environ={}).signing_key or {})
    public = jwt.PyJWK({k: v for k, v in key.items() if k != "d"})
    assert jwt.decode(result.stdout.strip(), public.key, algorithms=["ES256"])["sub"] == "alice"


def test_signing_key_from_a_file_path(tmp_path: Path) -> None:
    from gateway.config import generate_signing_key

    path = tmp_path / "key.jwk"
    key = generate_signing_key()
    path.write_text(json.dumps(key))
    config = load_config(environ={}, flags={"signing_key": str(path)})
    assert config.signing_key is not None and config.signing_key["kid"] == key["kid"]


@pytest.mark.parametrize(("present", "missing"), [("signing_key", "secret"), ("secret", "signing_key")])
def test_cli_redis_engine_refuses_a_half_configured_key_pair(
    tmp_path: Path, cluster_keys: dict[str, str], present: str, missing: str
) -> None:
    """PROTOCOL §1: the redis engine refuses to start without the signing key *and*
    the secret, naming what to configure. Nothing listens on the Redis port: the
    refusal comes before any connection (a gateway that started would time out)."""
    file = write_toml(tmp_path / "half.toml", {"redis_url": "redis://127.0.0.1:1/0", present: cluster_keys[present]})
    result = run_cli("serve", "--config", str(file), timeout=15)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ticketgate: config error:"), result.stderr
    assert missing in lines[0] and present not in lines[0], lines[0]
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_issuers_as_a_toml_array_of_tables(tmp_path: Path) -> None:
    """PROTOCOL §1: `issuers` is a TOML array of tables `[[issuers]]`."""
    jwks = tmp_path / "partner.jwks.json"
    jwks.write_text('{"keys": []}')
    file = tmp_path / "issuers.toml"
    file.write_text(
        "port = 9000\n\n"
        "[[issuers]]\n"
        'iss = "https://partner.example"\n'
        f"jwks_file = {json.dumps(str(jwks))}\n"
        'audience = "ticketgate"\n'
        'algorithms = ["ES256", "RS384"]\n\n'
        "[[issuers]]\n"
        'iss = "https://idp.example"\n'
        'jwks_uri = "https://idp.example/.well-known/jwks.json"\n'
    )
    config = load_config(file=file, environ={})
    assert config.port == 9000
    assert config.issuers == (
        IssuerConfig(
            iss="https://partner.example", jwks_file=str(jwks), audience="ticketgate", algorithms=("ES256", "RS384")
        ),
        IssuerConfig(iss="https://idp.example", jwks_uri="https://idp.example/.well-known/jwks.json"),
    )
    first = config.issuers[0]
    assert (first.iss, first.jwks_uri, first.jwks_file) == ("https://partner.example", None, str(jwks))
    assert (first.audience, first.algorithms) == ("ticketgate", ("ES256", "RS384"))
    assert config.issuers[1].algorithms == ("RS256", "ES256") and config.issuers[1].audience is None


def test_leeway_is_at_most_30_seconds(tmp_path: Path) -> None:
    """PROTOCOL §6.15: leeway on exp/nbf/iat is at most 30 s."""
    assert load_config(file=write_toml(tmp_path / "ok.toml", {"leeway": 30}), environ={}).leeway == 30
    assert load_config(environ={"TICKETGATE_LEEWAY": "30"}).leeway == 30
    for value in (31, 30.5):
        with pytest.raises(ConfigError, match=r"^leeway: "):
            load_config(file=write_toml(tmp_path / "bad.toml", {"leeway": value}), environ={})
    with pytest.raises(ConfigError, match=r"^leeway: "):
        load_config(environ={"TICKETGATE_LEEWAY": "31"})


@pytest.mark.parametrize("loop", ["asyncio", "uvloop", "auto"])
def test_serve_runs_on_the_chosen_event_loop(tmp_path: Path, loop: str) -> None:
    """`--loop`: uvloop where installed (auto, the default) or asyncio's own loop;
    the gateway says which it runs on."""
    from tests.support import GatewayProcess, write_toml

    node = GatewayProcess(
        config_file=write_toml(tmp_path / "c.toml", {}), log_file=tmp_path / "n.log", extra_args=("--loop", loop)
    )
    node.start()
    try:
        with urllib.request.urlopen(f"{node.url}/healthz", timeout=10) as health:
            assert json.loads(health.read()) == {"status": "ok"}
    finally:
        assert node.terminate() == 0
    expected = "asyncio" if loop == "asyncio" else "uvloop"
    assert f"event loop: {expected}" in node.log(), node.log()[-500:]


def test_loop_setting_is_validated() -> None:
    with pytest.raises(ConfigError, match="loop"):
        load_config(environ={"TICKETGATE_LOOP": "tornado"})
    assert load_config(environ={}).loop == "auto"


ADMIN_UI_TOKEN = "admin-token-for-tests-0123456789"


def test_admin_ui_is_off_by_default_on_with_demo_and_set_by_env_or_flag() -> None:
    assert load_config(environ={}).admin_ui is False
    assert load_config(environ={}, flags={"demo": True}).admin_ui is True
    assert load_config(environ={"TICKETGATE_DEMO": "true", "TICKETGATE_ADMIN_UI": "false"}).admin_ui is False
    assert load_config(environ={"TICKETGATE_ADMIN_UI": "true", "TICKETGATE_ADMIN_TOKEN": ADMIN_UI_TOKEN}).admin_ui
    assert load_config(environ={}, flags={"admin_ui": True, "admin_token": ADMIN_UI_TOKEN}).admin_ui is True
    assert load_config(environ={}, flags={"demo": True, "admin_ui": False}).admin_ui is False  # --no-admin-ui


def test_admin_ui_without_an_admin_token_is_one_config_error() -> None:
    with pytest.raises(ConfigError) as refused:
        load_config(environ={"TICKETGATE_ADMIN_UI": "1"})
    assert str(refused.value) == "admin_ui needs an admin_token: the operator UI logs in with it"
    with pytest.raises(ConfigError, match=r"^admin_ui: Not a valid boolean\.$"):
        load_config(environ={"TICKETGATE_ADMIN_UI": "maybe", "TICKETGATE_ADMIN_TOKEN": ADMIN_UI_TOKEN})
