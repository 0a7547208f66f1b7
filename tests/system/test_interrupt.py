"""A command told to stop (SIGTERM, SIGINT) stops every process it started.

Each command runs in a session of its own; only its own pid is signalled (as a service
manager or `kill PID` does, not the terminal's whole group). Afterwards no process may
be left in its process group: a leaked supervisor, worker or redis-server shows there.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import psutil
import pytest
import redis
from conftest import wait_for

from cascadeq.config.settings import Settings
from cascadeq.infra.process import interruptible, uninterrupted

STARTED = re.compile(r"redis at (\S+), keys under (\S+):;")


@contextmanager
def command(env: dict[str, str], log: Path, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """`cascadeq ARGS` as the leader of a new process group; the group is SIGKILLed after."""
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cascadeq.cli", *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def left_in_group(pgid: int) -> list[str]:
    """Live processes (not zombies) of the group, as "pid cmdline"."""
    found = []
    for p in psutil.process_iter(["pid", "status", "cmdline"]):
        with suppress(ProcessLookupError, psutil.Error):
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(f"{p.pid} {' '.join(p.info['cmdline'] or [])[:120]}")
    return found


def descendants(proc: subprocess.Popen[bytes]) -> list[psutil.Process]:
    try:
        return psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        return []


def spawned(proc: subprocess.Popen[bytes], role: str) -> bool:
    """A process of the command runs ``cascadeq ROLE``."""
    for p in descendants(proc):
        with suppress(psutil.Error):
            if role in p.cmdline():
                return True
    return False


def blocked(url: str, name: str) -> int:
    """Connections named ``name`` parked in a blocking read: that role waits for work."""
    client = redis.Redis.from_url(url)
    try:
        return sum(1 for c in client.client_list() if c["name"] == name and "b" in c["flags"])
    finally:
        client.close()


def role_connections(url: str) -> list[tuple[str, str, str]]:
    """(name, flags, last command) of the roles' connections, for a failure's message."""
    client = redis.Redis.from_url(url)
    try:
        found = [(c["name"], c["flags"], c["cmd"]) for c in client.client_list()]
        return sorted(f for f in found if f[0].startswith("cq-"))
    finally:
        client.close()


def roles_ready(url: str, routers: int, workers: int) -> bool:
    """Routers and workers are in their loops: their signal handlers are set."""
    return (
        blocked(url, "cq-router") >= routers and blocked(url, "cq-worker-digits-small") >= workers
    )


def started_system(log: Path) -> tuple[str, str] | None:
    """The Redis URL and key prefix a live system reports once it has started roles."""
    found = STARTED.search(log.read_text(errors="replace"))
    return (found.group(1), found.group(2)) if found else None


def stop_and_check(proc: subprocess.Popen[bytes], log: Path, signum: int) -> None:
    """Signal the command alone; it must exit as stopped, leaving its group empty."""
    assert proc.poll() is None, log.read_text()[-3000:]  # still running: really interrupted
    started = len(descendants(proc))
    os.kill(proc.pid, signum)
    code = proc.wait(timeout=40)
    assert started > 0
    assert left_in_group(proc.pid) == [], log.read_text()[-3000:]
    assert code == 128 + signum, (code, log.read_text()[-3000:])  # stopped, not killed


def without_redis_url() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "REDIS_URL"}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_chaos_on_its_own_redis_stops_everything(
    digits_dir: Path, tmp_path: Path, signum: int
) -> None:
    log = tmp_path / "chaos.log"
    args = ("chaos", "--seconds", "60", "--rate", "50", "--models-dir", str(digits_dir))
    with command(without_redis_url(), log, *args) as proc:
        wait_for(lambda: "kills planned" in log.read_text(), 60, "the cluster is up")
        assert len(descendants(proc)) >= 7  # redis, 2 supervisors, 2 routers, 2 workers
        stop_and_check(proc, log, signum)


def test_demo_on_its_own_redis_stops_everything(digits_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "demo.log"
    with command(without_redis_url(), log, "demo", "--models-dir", str(digits_dir)) as proc:
        wait_for(lambda: started_system(log) is not None, 60, "the demo starts its roles")
        # the line comes before the roles are spawned: pause the demo only once they are
        wait_for(lambda: spawned(proc, "worker"), 60, "the demo spawns its workers")
        url, _ = started_system(log) or ("", "")
        # paused, the demo sends nothing, so its roles reach their blocking reads and stay
        # there (a demo of batches of 256 may otherwise finish before they are seen idle)
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            wait_for(lambda: roles_ready(url, 1, 2), 60, "router and workers are up")
        except AssertionError as exc:  # say what the roles were doing instead
            doing = f"{role_connections(url)}\n{log.read_text()[-2000:]}"
            raise AssertionError(f"{exc}: {doing}") from exc
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        stop_and_check(proc, log, signal.SIGTERM)


def test_bench_rq_stops_its_roles_and_the_rq_worker(
    env: dict[str, str], digits_dir: Path, tmp_path: Path
) -> None:
    log = tmp_path / "bench.log"
    with command(env, log, "bench", "rq", "--quick", "--models-dir", str(digits_dir)) as proc:

        def rq_worker_up() -> bool:
            return any(
                "cascadeq.bench.rqjob" in " ".join(p.cmdline())
                for p in descendants(proc)
                if p.is_running()
            )

        wait_for(lambda: started_system(log) is not None, 60, "the bench starts its roles")
        wait_for(rq_worker_up, 120, "the rq worker is started")
        stop_and_check(proc, log, signal.SIGTERM)


@pytest.mark.parametrize(
    ("role", "signum"), [("worker", signal.SIGTERM), ("router", signal.SIGINT)]
)
def test_replicas_supervisor_stops_its_copies(
    env: dict[str, str], settings: Settings, tmp_path: Path, role: str, signum: int
) -> None:
    log = tmp_path / f"{role}.log"
    url = str(settings.redis_url)
    with command(env, log, role, "--replicas", "2") as proc:
        routers, workers = (2, 0) if role == "router" else (0, 2)
        wait_for(lambda: roles_ready(url, routers, workers), 60, f"both {role}s are up")
        os.kill(proc.pid, signum)
        assert proc.wait(timeout=30) == 0, log.read_text()[-3000:]
        assert left_in_group(proc.pid) == []


def test_copies_stop_when_their_supervisor_is_killed(
    env: dict[str, str], settings: Settings, tmp_path: Path
) -> None:
    """SIGKILL leaves the supervisor no chance to stop them: the parent-death signal does."""
    log = tmp_path / "worker.log"
    with command(env, log, "worker", "--replicas", "2") as proc:
        wait_for(lambda: roles_ready(str(settings.redis_url), 0, 2), 60, "copies up")
        copies = descendants(proc)
        assert len(copies) == 2
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        _, alive = psutil.wait_procs(copies, timeout=20)
        assert alive == [], [p.pid for p in alive]


def signalled_in_a_shielded_block(steps: list[str]) -> None:
    with interruptible():
        with uninterrupted():
            os.kill(os.getpid(), signal.SIGTERM)  # the handler runs as kill returns
            steps.append("the block finished")
        steps.append("not reached")


def signalled_twice(steps: list[str]) -> None:
    with interruptible():
        try:
            os.kill(os.getpid(), signal.SIGINT)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)  # stopping already: ignored
            steps.append("the cleanup finished")


def test_a_stop_waits_for_the_uninterrupted_block_and_a_second_signal_is_ignored() -> None:
    """A signal while a child starts or while children stop must not abandon them."""
    before = signal.getsignal(signal.SIGTERM)
    steps: list[str] = []
    with pytest.raises(SystemExit) as stopped:
        signalled_in_a_shielded_block(steps)
    assert steps == ["the block finished"]
    assert stopped.value.code == 128 + signal.SIGTERM
    with pytest.raises(SystemExit) as stopped:
        signalled_twice(steps)
    assert steps[-1] == "the cleanup finished"
    assert stopped.value.code == 128 + signal.SIGINT
    assert signal.getsignal(signal.SIGTERM) == before


MID_WRITE = """
import os, signal, sys, threading
import structlog
from cascadeq.infra import log
from cascadeq.infra.process import interruptible, stop_on_signals

log.configure(fmt="json")
logger = log.get_logger("t")
logger.info("warm")  # the logger exists: its write lock is the one held below
lock = structlog._output._get_lock_for_file(sys.stderr)
stop = threading.Event()
stop_on_signals(stop)
with lock:  # the main thread mid-write, as the signal lands
    os.kill(os.getpid(), signal.SIGTERM)
print("stopped" if stop.is_set() else "not stopped", flush=True)
try:
    with interruptible(), lock:
        os.kill(os.getpid(), signal.SIGINT)
except SystemExit as exc:
    print("raised", exc.code, flush=True)
"""


def test_a_stop_signal_landing_mid_log_write_does_not_hang_the_process() -> None:
    """The handlers log from a thread: structlog's write lock is not reentrant, so a
    handler that logged while its main thread held it would wait forever (a replica then
    outlived its supervisor's grace and was SIGKILLed)."""
    env = {k: v for k, v in os.environ.items() if k != "CASCADEQ_PARENT_PID"}
    out = subprocess.run(
        [sys.executable, "-c", MID_WRITE],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.stdout.split() == ["stopped", "raised", str(128 + signal.SIGINT)], out.stderr
    lines = [json.loads(line) for line in out.stderr.splitlines()]
    stops = sorted(line["signal"] for line in lines if line["event"] == "stopping")
    assert stops == ["SIGINT", "SIGTERM"]  # logged all the same, once the write was done
