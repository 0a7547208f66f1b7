"""Connecting with credentials: AUTH in the URL, and an ACL user confined to the prefix."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import redis

from cascadeq.config.catalog import Catalog
from cascadeq.config.settings import Settings
from cascadeq.infra.connection import connect
from cascadeq.infra.embedded import EmbeddedRedis
from cascadeq.infra.process import ProcessGroup
from cascadeq.producer import Producer, Request

# resetchannels before &pattern: Redis 6.2 starts users on allchannels and refuses both.
ACL_USER = ("--user", "cq", "on", ">pw", "~cq:*", "resetchannels", "&cq:*", "+@all")


def test_password_in_the_url_authenticates_and_a_wrong_one_is_refused() -> None:
    with EmbeddedRedis(extra_args=("--requirepass", "s3cret")) as server:
        assert connect(f"redis://:s3cret@127.0.0.1:{server.port}/0").ping()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis.from_url(f"redis://:wrong@127.0.0.1:{server.port}/0").ping()


def test_the_pipeline_runs_as_an_acl_user_who_can_reach_only_its_prefix(
    digits_dir: Path, catalog: Catalog
) -> None:
    with EmbeddedRedis(extra_args=("--requirepass", "admin", *ACL_USER)) as server:
        url = f"redis://cq:pw@127.0.0.1:{server.port}/0"
        with pytest.raises(redis.ResponseError, match="no permissions"):
            connect(url).set("elsewhere", 1)  # the user really is confined
        env = {
            **os.environ,
            "REDIS_URL": url,
            "CASCADEQ_LOG_LEVEL": "warning",
            "CASCADEQ_CATALOG": str(digits_dir / "catalog.toml"),
        }
        group = ProcessGroup(env)
        try:
            group.spawn("router")
            group.spawn("worker")
            x = np.load(digits_dir / "digits_test.npz")["X"][:20]
            with Producer(settings=Settings(redis_url=url), catalog=catalog) as client:
                ids = client.submit_many(
                    [Request({"input": row[None]}, task="digits") for row in x]
                )
                assert all(r.ok for r in client.wait_many(ids, timeout=60))
        finally:
            group.stop()
