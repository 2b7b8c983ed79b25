from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from services.core.clients import ClientRegistry
from services.demo.processes import PrivateRedis
from tests.utils.stack import Server, start_server

os.environ.setdefault("MODELCUSTODY_ENV", "test")


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stack")


@pytest.fixture(scope="session")
def redis_server(session_dir: Path) -> Iterator[PrivateRedis]:
    """A private real Redis for the session (isolated from the machine's shared one)."""
    with PrivateRedis(session_dir / "redis", appendonly=False) as server:
        yield server


@pytest.fixture()
def redis_url(redis_server: PrivateRedis) -> Iterator[str]:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    yield redis_server.url
    client.close()


@pytest.fixture()
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def model_server(session_dir: Path) -> Iterator[Server]:
    server = start_server("services.demo.model_server.app:create_app", {}, session_dir / "logs", "model")
    yield server
    server.stop()


@pytest.fixture()
def start_gateway(tmp_path: Path, redis_url: str, model_server: Server) -> Iterator[Callable[..., Server]]:
    started: list[Server] = []

    def _start(**overrides: str) -> Server:
        env = {
            "MODELCUSTODY_ENV": "test",
            "MODELCUSTODY_REDIS_URL": redis_url,
            "MODELCUSTODY_DATA_DIR": str(tmp_path / "data"),
            "MODELCUSTODY_GATEWAY_UPSTREAM_URL": model_server.url,
            "MODELCUSTODY_GATEWAY_INSTANCE_ID": "gw-test",
            "MODELCUSTODY_GATEWAY_CLIENT_REFRESH_S": "0.2",
            **overrides,
        }
        server = start_server("services.gateway.app:create_app", env, tmp_path / "logs", "gateway")
        started.append(server)
        return server

    yield _start
    for server in started:
        server.stop()


@pytest.fixture()
def add_client(redis_url: str) -> Callable[[str], str]:
    def _add(name: str) -> str:
        return ClientRegistry(redis.Redis.from_url(redis_url)).add(name)[1]

    return _add


@pytest.fixture(scope="session")
def detector_baseline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved digits-mlp detector baseline, fitted once per session (the detector and monitoring e2e share it)."""
    from services.demo.baseline import fit_demo_engine, save_demo_engine

    out = tmp_path_factory.mktemp("baseline")
    save_demo_engine(fit_demo_engine("digits-mlp", n_sim_clients=100), out / "digits-mlp", "digits-mlp")
    return out
