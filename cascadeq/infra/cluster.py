"""A Redis Cluster on loopback, started by the suite and the benchmarks (never in production).

Each node is an ``EmbeddedRedis`` with ``--cluster-enabled yes``; the cluster is formed with
CLUSTER MEET, ADDSLOTS and REPLICATE sent through redis-py, so it needs no redis-cli and
works with the embedded 6.2 binary as with Redis 7. ``LocalCluster.url`` is a
``redis+cluster://`` URL (``cascadeq.infra.connection``) that every role accepts as REDIS_URL.
"""

from __future__ import annotations

import time
from types import TracebackType
from typing import Any

import redis

from cascadeq.infra.embedded import EmbeddedRedis, EmbeddedRedisError

SLOTS = 16384
FORM_TIMEOUT_S = 60.0


def _cmd(client: redis.Redis, *args: object) -> Any:
    return client.execute_command(*args)  # type: ignore[no-untyped-call]


class LocalCluster:
    """``masters`` masters owning equal slot ranges, each with ``replicas_per_master`` replicas."""

    def __init__(
        self,
        masters: int = 3,
        replicas_per_master: int = 0,
        *,
        node_timeout_ms: int = 2000,
        appendfsync: str | None = None,
        executable: str | None = None,
    ) -> None:
        self.masters, self.replicas_per_master = masters, replicas_per_master
        args = (
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(node_timeout_ms),
            # a replica whose master died long ago may still take over (tests kill masters)
            "--cluster-replica-validity-factor", "0",
        )  # fmt: skip
        count = masters * (1 + replicas_per_master)
        self.nodes = [
            EmbeddedRedis(executable=executable, extra_args=args, appendfsync=appendfsync)
            for _ in range(count)
        ]

    @property
    def url(self) -> str:
        """A ``redis+cluster://`` URL naming the first live node (the client finds the rest)."""
        for node in self.nodes:
            if node.proc is not None:
                return f"redis+cluster://127.0.0.1:{node.port}"
        raise EmbeddedRedisError("no node of the cluster is running")

    def client(self, index: int) -> redis.Redis:
        """A plain client of one node (CLUSTER commands, INFO, killing by hand)."""
        return redis.Redis(host="127.0.0.1", port=self.nodes[index].port)

    def start(self) -> str:
        for node in self.nodes:
            node.start()
        try:
            self._form()
        except Exception:
            self.stop()
            raise
        return self.url

    def _form(self) -> None:
        first = self.client(0)
        for node in self.nodes[1:]:
            _cmd(first, "CLUSTER", "MEET", "127.0.0.1", node.port)
        per = SLOTS // self.masters
        for m in range(self.masters):
            end = SLOTS if m == self.masters - 1 else (m + 1) * per
            _cmd(self.client(m), "CLUSTER", "ADDSLOTS", *range(m * per, end))
        self._wait(lambda: all(self._knows(i, len(self.nodes)) for i in range(len(self.nodes))))
        ids = [self.node_id(m) for m in range(self.masters)]
        for k in range(len(self.nodes) - self.masters):
            replica = self.client(self.masters + k)
            _cmd(replica, "CLUSTER", "REPLICATE", ids[k % self.masters])
        self._wait(self.healthy)

    def node_id(self, index: int) -> str:
        return str(_cmd(self.client(index), "CLUSTER", "MYID").decode())

    def _knows(self, index: int, count: int) -> bool:
        raw = _cmd(self.client(index), "CLUSTER", "NODES")
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        return len([ln for ln in text.splitlines() if "handshake" not in ln and ln]) == count

    def healthy(self) -> bool:
        """Every live node says the cluster is ok and every replica has synced."""
        for i, node in enumerate(self.nodes):
            if node.proc is None:
                continue
            info = _cmd(self.client(i), "CLUSTER", "INFO")
            text = info.decode() if isinstance(info, bytes) else str(info)
            if "cluster_state:ok" not in text:
                return False
            role = self.client(i).info("replication")
            if role.get("role") == "slave" and role.get("master_link_status") != "up":
                return False
        return True

    def _wait(self, ready: object, timeout: float = FORM_TIMEOUT_S) -> None:
        """Cluster formation has no event to block on: gossip converges in a second or two."""
        deadline = time.monotonic() + timeout
        while not ready():  # type: ignore[operator]
            if time.monotonic() > deadline:
                raise EmbeddedRedisError(f"the local cluster did not form in {timeout:.0f} s")
            time.sleep(0.1)

    def live(self) -> int:
        """The index of some running node."""
        return next(i for i, node in enumerate(self.nodes) if node.proc is not None)

    def master_of(self, key: str) -> int:
        """The index of the node that serves ``key``'s slot now."""
        c = self.client(self.live())
        slot = int(_cmd(c, "CLUSTER", "KEYSLOT", key))
        ports = {node.port: i for i, node in enumerate(self.nodes)}
        for start, end, master, *_ in _cmd(c, "CLUSTER", "SLOTS"):
            if int(start) <= slot <= int(end):
                return ports[int(master[1])]
        raise EmbeddedRedisError(f"no master serves slot {slot}")

    def replica_of(self, master: int) -> int:
        """The index of a live replica of node ``master``."""
        port = self.nodes[master].port
        for i, node in enumerate(self.nodes):
            if node.proc is None or i == master:
                continue
            if int(self.client(i).info("replication").get("master_port", 0)) == port:
                return i
        raise EmbeddedRedisError(f"node {master} has no live replica")

    def kill(self, index: int) -> None:
        """SIGKILL one node (a crash)."""
        self.nodes[index].kill()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_cluster(masters: int = 3, replicas_per_master: int = 0, **kwargs: object) -> LocalCluster:
    """Start and form a local cluster; the caller stops it (or uses it as a context manager)."""
    cluster = LocalCluster(masters, replicas_per_master, **kwargs)  # type: ignore[arg-type]
    cluster.start()
    return cluster
