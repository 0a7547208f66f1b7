"""Shared fixtures: a private redis-server for the session, the digits models, isolation.

Each test gets its own key prefix, so tests share one server without seeing each other.
The server is cascadeq.infra.embedded's choice (``CASCADEQ_REDIS_SERVER`` overrides it); tests
that meet a redis-server get the ``redis`` marker, so `make test` reruns just those on
the embedded 6.2 (``-m redis``), and the summary names the server version the run met.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from subprocess import CompletedProcess

import pytest
import redis
from hypothesis import settings as hypothesis_settings

from cascadeq.config.catalog import Catalog
from cascadeq.config.settings import Settings
from cascadeq.infra import embedded
from cascadeq.infra.embedded import EmbeddedRedis
from cascadeq.infra.process import ProcessGroup

# This machine's speed varies up to 3x: no property test may fail for taking long.
hypothesis_settings.register_profile("cascadeq", deadline=None)
hypothesis_settings.load_profile("cascadeq")

REDIS_MARKER = "redis: meets a real redis-server (rerun by `make test` on the embedded 6.2)"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", REDIS_MARKER)
    config.addinivalue_line("markers", "cluster: starts a local Redis Cluster (`-m cluster`)")


def meets_redis(item: pytest.Item) -> bool:
    """Uses the session server (any fixture over redis_url) or starts servers of its own."""
    if "redis_url" in getattr(item, "fixturenames", ()):
        return True
    module = getattr(item, "module", None)
    return getattr(module, "EmbeddedRedis", None) is EmbeddedRedis


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if meets_redis(item):
            item.add_marker(pytest.mark.redis)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Which redis-server the run met, shown under -q too (the 6.2 rerun must say so)."""
    try:
        exe = embedded.find_redis_server()
        text = f"redis-server {embedded.server_version(exe)} ({exe})"
    except embedded.EmbeddedRedisError as exc:
        text = f"no redis-server: {exc}"
    terminalreporter.write_line(text)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with EmbeddedRedis() as server:
        yield server.url


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cascadeq.examples import digits

    cached = os.environ.get("CASCADEQ_TEST_MODELS")  # reuse a build across local runs
    out = Path(cached) if cached else tmp_path_factory.mktemp("digits")
    digits.ensure_built(out, log=lambda _line: None)
    return out


@pytest.fixture(scope="session")
def seq_dir(digits_dir: Path) -> Path:
    """The variable-length example, built next to the digits (as `cascadeq models build` does)."""
    from cascadeq.examples import seqdigits

    out = digits_dir / seqdigits.SUBDIR
    seqdigits.ensure_built(out, log=lambda _line: None)
    return out


@pytest.fixture(scope="session")
def catalog(digits_dir: Path) -> Catalog:
    return Catalog.load(digits_dir / "catalog.toml")


@pytest.fixture
def settings(redis_url: str) -> Settings:
    return Settings(
        redis_url=redis_url,
        prefix=f"t{uuid.uuid4().hex[:10]}",
        block_ms=50,
        visibility_timeout_ms=30_000,
    )


TOY_CATALOG = """
[models.toy-small]
path = "toy_small.onnx"
output = "probabilities"
cost = 1.0
inputs = [{ name = "input", dtype = "float32", shape = [-1, 4] }]

[models.toy-large]
path = "toy_large.onnx"
output = "probabilities"
cost = 10.0
inputs = [{ name = "input", dtype = "float32", shape = [-1, 4] }]

[tasks.toy]
cascade = [{ model = "toy-small", threshold = 0.9 }, { model = "toy-large" }]
"""


@pytest.fixture
def toy_catalog() -> Catalog:
    """A catalog for roles that never open the model files (producer, router)."""
    return Catalog.loads(TOY_CATALOG, source="toy/catalog.toml", check_files=False)


@pytest.fixture
def env(settings: Settings, digits_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "REDIS_URL": str(settings.redis_url),
        "CASCADEQ_CATALOG": str(digits_dir / "catalog.toml"),
        "CASCADEQ_PREFIX": settings.prefix,
        "CASCADEQ_LOG_LEVEL": "warning",
        "CASCADEQ_BLOCK_MS": "200",
    }


@pytest.fixture
def group(env: dict[str, str]) -> Iterator[ProcessGroup]:
    procs = ProcessGroup(env)
    yield procs
    procs.stop()


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """A readiness probe (a process joined its group, say), not a stand-in for a result."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting until {what}")
        time.sleep(0.02)


def run_cli(env: dict[str, str], *args: str, timeout: float = 240) -> CompletedProcess[str]:
    """`cascadeq ARGS` as a person runs it: a fresh process, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "cascadeq.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
