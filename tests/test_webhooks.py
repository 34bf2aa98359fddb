"""The [[webhooks]] settings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway.config import WebhookConfig, load_config
from gateway.errors import ConfigError
from tests.support import write_toml

SECRET = "whsec-for-the-tests-0123456789"
OTHER_SECRET = "another-whsec-for-the-tests-42"
EVERY_EVENT = ["user.online", "user.offline", "room.occupied", "room.vacated", "user.joined", "user.left"]


# --- settings -----------------------------------------------------------------


def test_webhook_settings_from_toml_and_env(tmp_path: Path) -> None:
    config = load_config(environ={})
    assert (config.webhooks, config.webhook_max_attempts) == ((), 8)

    file = tmp_path / "hooks.toml"
    file.write_text(
        "webhook_max_attempts = 3\n"
        "[[webhooks]]\n"
        'url = "https://backend.example.com/events?token=x"\n'
        f'secret = "{SECRET}"\n'
        'events = ["user.online", "user.offline", "user.online"]\n'
        "[[webhooks]]\n"
        'url = "http://127.0.0.1:9000/hook"\n'
        f'secret = "{OTHER_SECRET}"\n'
        f"events = {json.dumps(EVERY_EVENT)}\n"
    )
    config = load_config(file=file, environ={})
    assert config.webhook_max_attempts == 3
    first, second = config.webhooks
    assert first == WebhookConfig(
        url="https://backend.example.com/events?token=x", secret=SECRET, events=("user.online", "user.offline")
    )
    assert second.events == tuple(EVERY_EVENT)
    assert SECRET not in repr(config) and OTHER_SECRET not in repr(first) + repr(second)

    env = {
        "TICKETGATE_WEBHOOKS": json.dumps(
            [{"url": "https://b.example/h", "secret": SECRET, "events": ["room.vacated"]}]
        ),
        "TICKETGATE_WEBHOOK_MAX_ATTEMPTS": "12",
    }
    config = load_config(file=file, environ=env)  # the environment replaces the file's list whole
    assert [(h.url, h.events) for h in config.webhooks] == [("https://b.example/h", ("room.vacated",))]
    assert config.webhook_max_attempts == 12
    assert load_config(environ={"TICKETGATE_WEBHOOKS": ""}).webhooks == ()
    via_toml = write_toml(tmp_path / "none.toml", {"webhook_max_attempts": 1})
    assert load_config(file=via_toml, environ={}).webhook_max_attempts == 1


@pytest.mark.parametrize(
    ("settings", "names"),
    [
        ({"webhooks": [{"url": "ftp://b.example/h", "secret": SECRET, "events": ["user.online"]}]}, "webhooks.0.url"),
        ({"webhooks": [{"url": "not a url", "secret": SECRET, "events": ["user.online"]}]}, "webhooks.0.url"),
        ({"webhooks": [{"url": "https://b.example/h", "secret": "short-secret", "events": ["user.online"]}]}, "secret"),
        ({"webhooks": [{"url": "https://b.example/h", "events": ["user.online"]}]}, "webhooks.0.secret"),
        ({"webhooks": [{"secret": SECRET, "events": ["user.online"]}]}, "webhooks.0.url"),
        ({"webhooks": [{"url": "https://b.example/h", "secret": SECRET, "events": []}]}, "webhooks.0.events"),
        ({"webhooks": [{"url": "https://b.example/h", "secret": SECRET}]}, "webhooks.0.events"),
        ({"webhooks": [{"url": "https://b.example/h", "secret": SECRET, "events": ["user.typing"]}]}, "events"),
        ({"webhooks": [{"url": "https://b.example/h", "secret": SECRET, "events": ["user.online"], "x": 1}]}, "x"),
        (
            {"webhooks": [{"url": "https://b.example/h", "secret": 1234567890123456789, "events": ["user.online"]}]},
            "secret",
        ),
        ({"webhook_max_attempts": 0}, "webhook_max_attempts"),
        ({"webhook_max_attempts": "many"}, "webhook_max_attempts"),
    ],
)
def test_bad_webhook_settings_are_refused_without_echoing_secrets(settings: dict[str, Any], names: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_config(environ={}, flags=settings)
    message = str(refused.value)
    assert message.startswith("webhooks") or message.startswith("webhook_max_attempts")
    assert names in message
    assert SECRET not in message and "short-secret" not in message


def test_webhooks_from_env_must_be_a_json_array_of_objects() -> None:
    for value in ("https://b.example/h", '[{"url": "https://b.example/h", "secret": "x"'):
        with pytest.raises(ConfigError) as refused:
            load_config(environ={"TICKETGATE_WEBHOOKS": value})
        assert "webhooks" in str(refused.value).lower()
