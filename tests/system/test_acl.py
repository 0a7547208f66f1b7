"""The minimal ACL rule per role (docs/architecture.md, Security), tested as documented.

Producer, router and worker each connect as their own user, limited to the commands,
keys and channels the docs list; the pipeline must run end to end and Redis's ACL log
must show no refusal, so the lists are complete, and spot checks show they confine.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
from conftest import wait_for

from cascadeq.config.catalog import Catalog
from cascadeq.config.settings import Settings
from cascadeq.infra.connection import connect
from cascadeq.infra.embedded import EmbeddedRedis
from cascadeq.infra.process import ProcessGroup
from cascadeq.producer import Producer, Request

ARCHITECTURE = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"
ROLES = ("producer", "router", "worker", "operator")


def documented_rules() -> dict[str, str]:
    """The rule per role exactly as docs/architecture.md's Security table prints it."""
    rules: dict[str, str] = {}
    for line in ARCHITECTURE.read_text().splitlines():
        cells = [c.strip() for c in line.replace("\\|", "\0").split("|")]
        if len(cells) == 4 and cells[1].split(" ")[0] in ROLES and cells[2].startswith("`"):
            rules[cells[1].split(" ")[0]] = cells[2].strip("`").replace("\0", "|")
    assert set(rules) == set(ROLES), f"the Security table lists {sorted(rules)}"
    return rules


RULES = documented_rules()
IGNORED = {"client|setinfo"}  # redis-py sends it on connect and ignores a refusal


def user_args() -> tuple[str, ...]:
    args: list[str] = ["--requirepass", "admin"]
    for role, rules in RULES.items():
        args += ["--user", f"cq-{role}", "on", f">{role}-pw", *rules.split()]
    return tuple(args)


@pytest.fixture(scope="module")
def acl_server() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(extra_args=user_args()) as server:
        yield server


def url(server: EmbeddedRedis, role: str) -> str:
    return f"redis://cq-{role}:{role}-pw@127.0.0.1:{server.port}/0"


def admin(server: EmbeddedRedis) -> redis.Redis:
    return redis.Redis.from_url(f"redis://:admin@127.0.0.1:{server.port}/0")


def ignored(r: redis.Redis) -> set[str]:
    """Redis 6.2's ACL log names the command alone ("client"), not CLIENT SETINFO.

    So there a refused CLIENT subcommand cannot be told from redis-py's SETINFO; the run on
    Redis 7 (`make test` runs both) keeps the check strict.
    """
    major = int(str(r.info("server")["redis_version"]).split(".")[0])
    return IGNORED if major >= 7 else IGNORED | {"client"}


def refusals(server: EmbeddedRedis) -> list[str]:
    with admin(server) as r:
        log, skip = r.acl_log(), ignored(r)
    return [f"{e['username']}: {e['object']}" for e in log if e["object"] not in skip]


def test_each_role_runs_the_pipeline_under_its_own_minimal_acl_user(
    acl_server: EmbeddedRedis, digits_dir: Path, catalog: Catalog
) -> None:
    base = {
        **os.environ,
        "CASCADEQ_LOG_LEVEL": "warning",
        "CASCADEQ_CATALOG": str(digits_dir / "catalog.toml"),
        "CASCADEQ_BLOCK_MS": "200",
    }
    routers = ProcessGroup({**base, "REDIS_URL": url(acl_server, "router")})
    workers = ProcessGroup({**base, "REDIS_URL": url(acl_server, "worker")})
    x = np.load(digits_dir / "digits_test.npz")["X"][:30]
    try:
        routers.spawn("router")
        workers.spawn("worker")
        with admin(acl_server) as r:
            wait_for(lambda: bool(r.exists("cq:catalog")), 60, "the router published the catalog")
        settings = Settings(redis_url=url(acl_server, "producer"))
        with Producer(settings=settings) as client:  # the catalog as the router published it
            ids = client.submit_many([Request({"input": row[None]}, task="digits") for row in x])
            got = client.wait_many(ids, timeout=60)
            assert all(r.ok for r in got)
            assert {r.model for r in got} <= {"digits-small", "digits-large"}
            assert client.result(ids[0]) is not None
    finally:
        routers.stop()
        workers.stop()
    assert refusals(acl_server) == []


@pytest.mark.parametrize(
    ("role", "command"),
    [
        ("producer", ("XREADGROUP", "GROUP", "routers", "c", "STREAMS", "cq:ingress", ">")),
        ("producer", ("SET", "elsewhere", "1")),
        ("producer", ("FLUSHALL",)),
        ("worker", ("XADD", "cq:ingress", "*", "h", "x")),
        ("worker", ("LRANGE", "cq:catalog:history", "0", "-1")),  # reads the catalog, not its past
        ("router", ("DEL", "cq:ingress")),
        ("router", ("CONFIG", "GET", "*")),
        ("producer", ("PUBLISH", "elsewhere", "x")),  # channels too: resetchannels holds
        ("worker", ("PUBLISH", "cq:ingress", "x")),
        ("operator", ("GET", "cq:catalog")),  # the operator rule loads and confines too
    ],
)
def test_a_role_cannot_step_outside_its_rule(
    acl_server: EmbeddedRedis, role: str, command: tuple[str, ...]
) -> None:
    with pytest.raises(redis.exceptions.NoPermissionError):
        connect(url(acl_server, role)).execute_command(*command)
