"""`cascadeq chaos`: open-loop load while workers, routers and Redis itself are SIGKILLed.

Its own redis-server (AOF on, ``appendfsync always``), routers and workers under their
``--replicas`` supervisors, a seeded kill plan, and a ledger of every submit. At the end
every accepted request must complete, each with one answer: the figures say whether.
"""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import redis

from cascadeq.bench.tally import ACKED, REFUSED, UNKNOWN, Answers, Ledger, Peaks
from cascadeq.config.catalog import Catalog
from cascadeq.config.settings import Settings
from cascadeq.infra.connection import connect
from cascadeq.infra.connection import pubsub as open_pubsub
from cascadeq.infra.embedded import EmbeddedRedis
from cascadeq.infra.process import CRASH_WINDOW_S, ProcessGroup, interruptible, uninterrupted
from cascadeq.protocol.clock import Every
from cascadeq.protocol.errors import ConfigError
from cascadeq.protocol.keys import Keys
from cascadeq.protocol.results import split_published

if TYPE_CHECKING:
    import psutil

    from cascadeq.producer import Producer, Request

ROLES = ("worker", "router", "redis")
TASK = "digits"
PREFIX = "cq"


def progress(line: str) -> None:
    print(f"[chaos] {line}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class ChaosConfig:
    seconds: float
    rate: float = 200.0  # requests per second, open loop
    seed: int = 0
    workers: int = 2  # worker processes (one --replicas supervisor)
    routers: int = 2  # router processes (another supervisor)
    submitters: int = 4  # threads calling submit; arrivals beyond their backlog are refused
    visibility_timeout_ms: int = 2000  # how soon a killed consumer's entries are reclaimed
    drain_timeout_s: float = 300.0  # how long the end waits for accepted requests


@dataclass(frozen=True)
class Report:
    submitted: int
    accepted: int
    rejected: int
    completed: int
    lost: int
    answered_twice_differently: int
    dead_lettered: int
    kills: dict[str, int]
    peak_rss_mb: dict[str, float]
    notes: dict[str, Any] = field(default_factory=dict)  # printed, not in the JSON line

    def json_line(self) -> str:
        doc = asdict(self)
        doc.pop("notes")
        return json.dumps(doc)


def kill_plan(seconds: float, seed: int) -> list[tuple[float, str]]:
    """Seeded (time, role) kills; every three kills cover each role once, in random order."""
    rng = random.Random(seed)
    mean = min(4.0, max(1.0, seconds / 6))
    plan: list[tuple[float, str]] = []
    roles: list[str] = []
    at = rng.uniform(0.5, 1.0) * mean
    while at < seconds - 0.5:
        if not roles:
            roles = rng.sample(ROLES, len(ROLES))
        plan.append((round(at, 3), roles.pop()))
        at += rng.uniform(0.5, 1.5) * mean
    return plan


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll a readiness condition (not a result) until it holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise ConfigError(f"timed out after {timeout:.0f}s waiting until {what}")
        threading.Event().wait(0.05)


class Cluster:
    """Redis with the AOF fsynced on every write, and the roles under their supervisors."""

    def __init__(self, catalog_path: Path, config: ChaosConfig) -> None:
        self.catalog_path, self.config = catalog_path, config
        self.server = EmbeddedRedis(appendfsync="always")
        self.group: ProcessGroup | None = None
        self.supervisors: dict[str, subprocess.Popen[bytes]] = {}
        self.lock = threading.Lock()  # the monkey's Redis restarts against the final stop
        self.stopped = False

    def start(self) -> str:
        with uninterrupted():  # a stop landing mid-start still finds the server's process
            url = self.server.start()
        env = {
            **os.environ,
            "REDIS_URL": url,
            "CASCADEQ_CATALOG": str(self.catalog_path),
            "CASCADEQ_PREFIX": PREFIX,
            "CASCADEQ_LOG_LEVEL": os.environ.get("CASCADEQ_LOG_LEVEL", "error"),
            "CASCADEQ_BLOCK_MS": "200",
            "CASCADEQ_VISIBILITY_TIMEOUT_MS": str(self.config.visibility_timeout_ms),
        }
        self.group = ProcessGroup(env)
        for role, n in (("router", self.config.routers), ("worker", self.config.workers)):
            self.supervisors[role] = self.group.spawn(role, "--replicas", str(n))
        return url

    def ready(self, r: redis.Redis) -> bool:
        """Every router and worker is parked in a blocking read: all joined their groups."""
        blocked = Counter(str(c["name"]) for c in r.client_list() if "b" in c["flags"])
        return (
            blocked["cq-router"] >= self.config.routers
            and blocked["cq-worker-digits-small"] >= self.config.workers
        )

    def replicas(self, role: str) -> list[psutil.Process]:
        import psutil  # noqa: PLC0415 - an optional dependency, only for this command

        try:
            children = psutil.Process(self.supervisors[role].pid).children()
        except psutil.Error:
            return []
        return [c for c in children if _alive(c)]

    def processes(self) -> Iterator[tuple[str, int]]:
        """(role, pid) of everything running now, for RSS sampling."""
        if self.server.proc is not None:
            yield "redis", self.server.proc.pid
        for role, sup in self.supervisors.items():
            yield "supervisor", sup.pid
            for child in self.replicas(role):
                yield role, child.pid

    def kill_replica(self, role: str, stop: threading.Event) -> bool:
        """SIGKILL the oldest copy, once it is old enough not to count as a crash loop.

        The supervisor gives up on copies that die within CRASH_WINDOW_S of starting;
        chaos means to test restarts, not that rule, so it waits until the copy is older.
        """
        copies = sorted(self.replicas(role), key=lambda p: p.create_time())
        if not copies:
            return False
        victim = copies[0]
        age = time.time() - victim.create_time()
        if age < CRASH_WINDOW_S + 0.5 and stop.wait(CRASH_WINDOW_S + 0.5 - age):
            return False
        os.kill(victim.pid, signal.SIGKILL)
        return True

    def kill_redis(self, downtime_s: float, stop: threading.Event) -> bool:
        """SIGKILL Redis, stay down a while, restart on the same port and data dir."""
        with self.lock:
            if self.stopped:
                return False
            self.server.kill()
        stop.wait(downtime_s)  # the outage; a stopping run restarts at once
        with self.lock:
            if not self.stopped:  # never a new server after the final stop
                self.server.restart()
        return True

    def stop(self) -> None:
        """Roles, then Redis; a stop signal landing meanwhile waits until both are down."""
        with uninterrupted():
            with self.lock:
                self.stopped = True
            if self.group is not None:
                self.group.stop()
            with self.lock:
                self.server.stop()


def _alive(proc: psutil.Process) -> bool:
    import psutil  # noqa: PLC0415

    try:
        return bool(proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


class Monkey(threading.Thread):
    """Carries out the kill plan; kills stop at the end of the load."""

    def __init__(self, cluster: Cluster, plan: list[tuple[float, str]], seed: int) -> None:
        super().__init__(name="chaos-monkey", daemon=True)
        self.cluster, self.plan = cluster, plan
        self.rng = random.Random(seed + 1)
        self.kills: Counter[str] = Counter(dict.fromkeys(ROLES, 0))
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        started = time.monotonic()
        try:
            for at, role in self.plan:
                if self.stop.wait(max(0.0, started + at - time.monotonic())):
                    return
                if role == "redis":
                    done = self.cluster.kill_redis(self.rng.uniform(0.2, 1.0), self.stop)
                else:
                    done = self.cluster.kill_replica(role, self.stop)
                self.kills[role] += int(done)
        except Exception as exc:  # noqa: BLE001 - re-raised by the run, not swallowed
            self.error = exc


class Load:
    """Open loop: arrivals at a fixed rate, handed to a few submitter threads.

    Arrivals never wait for answers. An arrival finding the submitters' backlog full
    (a long outage) is refused on the spot and counted as rejected.
    """

    def __init__(
        self,
        producer: Producer,
        make: Callable[[str], Request],
        ledger: Ledger,
        config: ChaosConfig,
    ) -> None:
        self.producer, self.make, self.ledger, self.config = producer, make, ledger, config
        self.backlog: queue.Queue[str | None] = queue.Queue(maxsize=max(50, int(5 * config.rate)))
        self.threads = [
            threading.Thread(target=self._submitter, name=f"chaos-submit-{i}", daemon=True)
            for i in range(config.submitters)
        ]
        self.submitted = 0

    def run(self, stop: threading.Event) -> None:
        """Pace arrivals for the configured seconds (or until ``stop``), then drain."""
        for t in self.threads:
            t.start()
        started = time.monotonic()
        total = int(self.config.seconds * self.config.rate)
        for n in range(total):
            if stop.wait(max(0.0, started + n / self.config.rate - time.monotonic())):
                break
            rid = f"c{n:08d}"
            self.submitted += 1
            try:
                self.backlog.put_nowait(rid)
            except queue.Full:
                self.ledger.note(rid, REFUSED, "client_backlog_full")
        for _ in self.threads:
            self.backlog.put(None)
        for t in self.threads:
            t.join()

    def _submitter(self) -> None:
        from cascadeq.producer import Rejected  # noqa: PLC0415 - the core imports roles lazily

        while (rid := self.backlog.get()) is not None:
            request = self.make(rid)
            try:
                self.producer.submit_many([request])
            except Rejected as exc:
                self.ledger.note(rid, REFUSED, f"rejected:{exc.code}")
            except Exception as exc:  # noqa: BLE001 - outcome unknown; checked at the end
                self.ledger.note(rid, UNKNOWN, f"unknown:{type(exc).__name__}")
            else:
                self.ledger.note(rid, ACKED)


class Observer(threading.Thread):
    """Records every published answer, re-reads stored ones, samples RSS, shows progress."""

    def __init__(
        self, url: str, cluster: Cluster, ledger: Ledger, answers: Answers, monkey: Monkey
    ) -> None:
        super().__init__(name="chaos-observer", daemon=True)
        self.url, self.cluster, self.ledger, self.answers = url, cluster, ledger, answers
        self.monkey = monkey
        self.keys = Keys(PREFIX)
        self.peaks = Peaks()
        self.stop = threading.Event()
        self.started = time.monotonic()
        self.rng = random.Random(0)

    def run(self) -> None:
        sample, reread, show = Every(0.25), Every(2.0), Every(2.0)
        r = connect(self.url, name="cq-chaos-observer", socket_timeout=5.0)
        pubsub: Any = None
        while not self.stop.is_set():
            try:
                if pubsub is None:
                    pubsub = open_pubsub(r)  # every batch's answers: as is (connection.py)
                    pubsub.psubscribe(f"{self.keys.prefix}:reply:*")
                msg = pubsub.get_message(timeout=0.25)  # blocks on the socket
                if msg is not None and msg["type"] == "pmessage":
                    for raw in split_published(msg["data"]):  # a batch's answers, or one
                        self.answers.add_raw(raw)
                if reread.due():
                    self._reread(r)
            except redis.RedisError:
                pubsub = None  # Redis went away: subscribe again once it is back
                self.stop.wait(0.2)
            if sample.due():
                self._sample()
            if show.due():
                self._show()
        r.close()

    def _reread(self, r: redis.Redis) -> None:
        """Stored answers read again later: a second, different write would show here."""
        acked = self.ledger.ids(ACKED)
        chosen = self.rng.sample(acked, min(len(acked), 2000))
        for raw in r.mget([self.keys.result(rid) for rid in chosen]) if chosen else []:
            self.answers.add_raw(raw)

    def _sample(self) -> None:
        import psutil  # noqa: PLC0415

        me = [("driver", os.getpid())]
        for role, pid in [*self.cluster.processes(), *me]:
            try:
                self.peaks.sample(role, psutil.Process(pid).memory_info().rss)
            except psutil.Error:
                continue  # died between listing and sampling: a kill did that

    def _show(self) -> None:
        counts = self.ledger.counts()
        kills = " ".join(f"{k}={v}" for k, v in self.monkey.kills.items())
        progress(
            f"{time.monotonic() - self.started:6.1f}s submitted {sum(counts.values())} "
            f"acked {counts[ACKED]} refused {counts[REFUSED]} unknown {counts[UNKNOWN]} "
            f"answered {self.answers.answered(self.ledger.ids(ACKED))} kills {kills}"
        )


def requests_for(models_dir: Path, seed: int) -> Callable[[str], Request]:
    """Seeded digits requests: mostly the cascade, some pinned to each model."""
    from cascadeq.producer import Request  # noqa: PLC0415

    x = np.load(models_dir / "digits_test.npz")["X"].astype(np.float32)
    rng = random.Random(seed)
    lock = threading.Lock()

    def make(rid: str) -> Request:
        with lock:
            row, pick = rng.randrange(len(x)), rng.random()
        inputs = {"input": x[row : row + 1]}
        if pick < 0.1:
            return Request(inputs, model="digits-small", id=rid)
        if pick < 0.2:
            return Request(inputs, model="digits-large", id=rid)
        return Request(inputs, task=TASK, id=rid)

    return make


def run(models_dir: Path, config: ChaosConfig) -> Report:
    """The whole run: start, load and kill, stop killing, wait for the accepted, count."""
    catalog_path = models_dir / "catalog.toml"
    catalog = Catalog.load(catalog_path)
    cluster = Cluster(catalog_path, config)
    with interruptible():  # SIGTERM and SIGINT, too, reach the finally below
        try:
            return _load_and_kill(cluster, models_dir, config, catalog)
        finally:
            cluster.stop()


def _load_and_kill(
    cluster: Cluster, models_dir: Path, config: ChaosConfig, catalog: Catalog
) -> Report:
    from cascadeq.producer import Producer  # noqa: PLC0415

    url = cluster.start()
    r = connect(url, name="cq-chaos")
    wait_until(lambda: cluster.ready(r), 120, "routers and workers wait for work")
    plan = kill_plan(config.seconds, config.seed)
    progress(f"redis {url} (appendfsync always); {len(plan)} kills planned over the load")
    settings = Settings(
        redis_url=url, prefix=PREFIX, visibility_timeout_ms=config.visibility_timeout_ms
    )
    ledger, answers = Ledger(), Answers()
    monkey = Monkey(cluster, plan, config.seed)
    observer = Observer(url, cluster, ledger, answers, monkey)
    with Producer(settings=settings, catalog=catalog) as producer:
        load = Load(producer, requests_for(models_dir, config.seed), ledger, config)
        observer.start()
        monkey.start()
        load.run(threading.Event())
        monkey.stop.set()
        monkey.join()
        if monkey.error is not None:
            raise monkey.error
        report = settle(r, producer, ledger, answers, config, load.submitted)
    observer.stop.set()
    observer.join()
    r.close()
    return replace(report, kills=dict(monkey.kills), peak_rss_mb=observer.peaks.snapshot())


def settle(
    r: redis.Redis,
    producer: Producer,
    ledger: Ledger,
    answers: Answers,
    config: ChaosConfig,
    submitted: int,
) -> Report:
    """Resolve unknown outcomes, wait for every accepted request, read every answer again."""
    from cascadeq.producer import Timeout  # noqa: PLC0415

    keys = Keys(PREFIX)
    late = ledger.resolve(lambda ids: [bool(n) for n in _exists(r, keys, ids)])
    accepted = ledger.ids(ACKED)
    progress(f"load over: {len(accepted)} accepted ({late} found after a failed call); waiting")
    try:
        delivered = producer.wait_many(accepted, timeout=config.drain_timeout_s)
    except Timeout as exc:
        delivered = list(exc.done.values())
    for result in delivered:
        answers.add(result)
    completed = 0
    for start in range(0, len(accepted), 1000):
        chunk = accepted[start : start + 1000]
        completed += sum(answers.add_raw(raw) for raw in r.mget([keys.result(i) for i in chunk]))
    counts = ledger.counts()
    dead: Any = r.xlen(keys.dead_letter)
    return Report(
        submitted=submitted,
        accepted=len(accepted),
        rejected=counts[REFUSED],
        completed=completed,
        lost=len(accepted) - completed,
        answered_twice_differently=answers.twice_differently(),
        dead_lettered=int(dead),
        kills={},
        peak_rss_mb={},
        notes={"found_after_failed_call": late, "refusals": dict(ledger.reasons)},
    )


def _exists(r: redis.Redis, keys: Keys, ids: list[str]) -> list[int]:
    pipe = r.pipeline(transaction=False)
    for rid in ids:
        pipe.exists(keys.result(rid))
    return [int(n) for n in pipe.execute()] if ids else []


def main(models_dir: Path, config: ChaosConfig, *, as_json: bool) -> int:
    """Prints the figures; exit 1 if anything accepted was lost or answered twice."""
    if not (models_dir / "catalog.toml").exists():
        print(f"no models in {models_dir}: run `cascadeq models build` first", file=sys.stderr)
        return 2
    report = run(models_dir, config)
    for name, value in asdict(report).items():
        print(f"{name}: {value}")
    if as_json:
        print(report.json_line())
    return 1 if report.lost or report.answered_twice_differently else 0
