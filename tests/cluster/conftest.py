"""Two real gateway processes sharing the session's redis-server (PROTOCOL §5)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support import ROOT, GatewayProcess, RedisServer, wait_for_port, wait_subscribed

ADMIN_TOKEN = "admin-token-for-cluster-tests-0123456789"


@pytest.fixture
def cluster_settings(redis_server: RedisServer, cluster_keys: dict[str, str]) -> dict[str, Any]:
    redis_server.flush()
    return {**cluster_keys, "redis_url": redis_server.url, "admin_token": ADMIN_TOKEN}


@pytest.fixture
async def two_nodes(
    cluster_settings: dict[str, Any], gateway_process: Callable[..., GatewayProcess]
) -> tuple[GatewayProcess, GatewayProcess]:
    """Nodes a and b, both listening and both subscribed to the fan-out channel."""
    nodes = (gateway_process(cluster_settings, name="a"), gateway_process(cluster_settings, name="b"))
    for node in nodes:  # start both before waiting: the interpreters boot in parallel
        node.start(wait=False)
    for node in nodes:
        assert node.proc is not None
        wait_for_port(node.port, proc=node.proc, timeout=20)
    await wait_subscribed(cluster_settings["redis_url"], len(nodes))
    return nodes


async def cli_token(config_file: Path, sub: str) -> str:
    """An access JWT minted by the real `python -m gateway token --config F --sub S`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TICKETGATE_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "token",
        "--config",
        str(config_file),
        "--sub",
        sub,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode == 0, err.decode(errors="replace")
    token = out.decode().strip()
    assert token.count(".") == 2, token
    return token
