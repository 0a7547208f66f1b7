"""A person's mistakes and a missing Redis get one line on stderr and a documented exit
code, never a traceback; the clients raise ConnectionFailed, not redis-py's errors."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from cascadeq.config.settings import Settings
from cascadeq.infra.embedded import free_port
from cascadeq.producer import AsyncProducer, CascadeqError, ConnectionFailed, Producer
from cascadeq.protocol.errors import EXIT_NO_REDIS, EXIT_USAGE, ConfigError


def one_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.fixture
def down_url() -> str:
    """A loopback port nothing listens on: Redis is down."""
    return f"redis://127.0.0.1:{free_port()}/0"


@pytest.fixture
def x_file(tmp_path: Path) -> Path:
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((1, 64), dtype=np.float32))
    return path


def test_submit_a_missing_file(env: dict[str, str], tmp_path: Path) -> None:
    done = run_cli(env, "submit", "--task", "digits", "--input", f"input={tmp_path / 'no.npy'}")
    assert done.returncode == EXIT_USAGE
    line = one_line(done.stderr)
    assert "no.npy: cannot be read" in line
    assert "pass an existing .npy file" in line


def test_submit_an_object_array(env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "obj.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    done = run_cli(env, "submit", "--task", "digits", "--input", f"input={path}")
    assert done.returncode == EXIT_USAGE
    assert "not a plain numeric .npy" in one_line(done.stderr)


def test_submit_and_result_without_redis_url(x_file: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    submitted = run_cli(env, "submit", "--task", "digits", "--input", f"input={x_file}")
    assert submitted.returncode == EXIT_USAGE
    assert "REDIS_URL is not set" in one_line(submitted.stderr)
    result = run_cli(env, "result", "some-id")
    assert result.returncode == EXIT_USAGE
    assert "REDIS_URL is not set" in one_line(result.stderr)


def test_submit_and_stats_while_redis_is_down(
    env: dict[str, str], down_url: str, x_file: Path
) -> None:
    env = {**env, "REDIS_URL": down_url}
    submitted = run_cli(env, "submit", "--task", "digits", "--input", f"input={x_file}")
    assert submitted.returncode == EXIT_NO_REDIS
    line = one_line(submitted.stderr)
    assert f"cannot reach Redis at {down_url}" in line
    assert "start Redis, or point REDIS_URL" in line
    stats = run_cli(env, "stats")
    assert stats.returncode == EXIT_NO_REDIS
    assert f"cannot reach Redis at {down_url}" in one_line(stats.stderr)


def test_the_password_stays_out_of_the_message(env: dict[str, str], x_file: Path) -> None:
    url = f"redis://me:s3cret@127.0.0.1:{free_port()}/0"
    done = run_cli({**env, "REDIS_URL": url}, "stats")
    assert done.returncode == EXIT_NO_REDIS
    assert "s3cret" not in done.stderr
    assert "redis://me:***@127.0.0.1" in done.stderr


def test_calibrate_refuses_a_negative_escalation(env: dict[str, str]) -> None:
    done = run_cli(env, "calibrate", "--task", "digits", "--max-escalation", "-1", "--dry-run")
    assert done.returncode == EXIT_USAGE
    assert "Traceback" not in done.stderr
    assert "--max-escalation: -1 is not between 0 and 1" in done.stderr


def test_roles_without_redis_url_say_so_once(digits_dir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    catalog = str(digits_dir / "catalog.toml")
    for role in ("router", "worker"):
        done = run_cli(env, role, "--catalog", catalog, "--replicas", "2", timeout=60)
        assert done.returncode == EXIT_USAGE
        assert "REDIS_URL is not set" in one_line(done.stderr)


def test_settings_without_a_url_refuse_instead_of_embedding() -> None:
    with pytest.raises(ConfigError, match="REDIS_URL is not set"):
        Settings().require_redis_url()


def test_the_sync_client_raises_connection_failed(down_url: str) -> None:
    x = np.zeros((1, 4), dtype=np.float32)
    with Producer(down_url) as client:
        with pytest.raises(ConnectionFailed, match="cannot reach Redis") as raised:
            client.submit(model="m", inputs={"input": x})
        with pytest.raises(ConnectionFailed):
            client.result("some-id")
    assert isinstance(raised.value, CascadeqError)


def test_the_async_client_raises_connection_failed(down_url: str) -> None:
    async def main() -> None:
        async with AsyncProducer(down_url) as client:
            with pytest.raises(ConnectionFailed, match="cannot reach Redis"):
                await client.result("some-id")
            with pytest.raises(ConnectionFailed):
                await client.wait_many(["some-id"], timeout=1)

    asyncio.run(main())
