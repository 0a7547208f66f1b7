"""Process plumbing shared by the role commands: signals, threads, replicas."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from types import FrameType

import redis

from cascadeq.log import get_logger

log = get_logger("cascadeq.process")


def consumer_name(role: str) -> str:
    """Unique per process, readable in XINFO CONSUMERS."""
    return f"{role}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def stop_on_signals(stop: threading.Event) -> None:
    """SIGTERM and SIGINT ask the loops to finish their batch and leave."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        log.info("stopping", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def run_threads(loops: Sequence[Callable[[threading.Event], None]], stop: threading.Event) -> None:
    """Run each loop in a thread; if one dies, stop them all and re-raise."""
    errors: list[BaseException] = []

    def guard(loop: Callable[[threading.Event], None]) -> None:
        try:
            loop(stop)
        except BaseException as exc:
            errors.append(exc)
            log.exception("loop_crashed")
            stop.set()

    threads = [threading.Thread(target=guard, args=(loop,), daemon=True) for loop in loops]
    for t in threads:
        t.start()
    for t in threads:
        t.join()  # interruptible: signal handlers still run in the main thread
    if errors:
        raise errors[0]


def serve(
    step: Callable[[], object], setup: Callable[[], None], stop: threading.Event, role: str
) -> None:
    """Run ``step`` until stopped; a Redis outage backs off and resumes, it does not kill."""
    backoff, ready = 0.1, False
    while not stop.is_set():
        try:
            if not ready:  # at start, and after an outage: streams and groups may be gone
                setup()
                ready = True
            step()
            backoff = 0.1
        except redis.RedisError as exc:
            log.warning("redis_unavailable", role=role, error=str(exc), retry_in=backoff)
            stop.wait(backoff)
            backoff = min(backoff * 2, 5.0)
            ready = False


CRASH_WINDOW_S = 5.0
CRASH_LIMIT = 3


def run_replicas(
    argv: Sequence[str], replicas: int, on_exit: Callable[[int], None] | None = None
) -> int:
    """Keep ``replicas`` copies of this command running (with --replicas 1) until a signal.

    A copy that dies is restarted; one that keeps dying within seconds of its start
    (a broken model file, say) stops the whole group, which exits with that copy's code.
    """
    supervisor = Supervisor([sys.executable, "-m", "cascadeq.cli", *argv, "--replicas", "1"])
    supervisor.on_exit = on_exit
    signal.signal(signal.SIGTERM, supervisor.forward)
    signal.signal(signal.SIGINT, supervisor.forward)
    for _ in range(replicas):
        supervisor.start()
    log.info("replicas_started", replicas=replicas, pids=sorted(supervisor.children))
    return supervisor.watch()


class Supervisor:
    """Children are reaped only by ``os.wait`` in ``watch``; signal handlers only signal.

    The Popen objects are kept so that subprocess never reaps a child behind our back.
    """

    def __init__(self, cmd: list[str]) -> None:
        self.cmd = cmd
        self.children: dict[int, tuple[subprocess.Popen[bytes], float]] = {}
        self.stopping = threading.Event()
        self.exit_code = 0
        self.quick_crashes = 0
        self.on_exit: Callable[[int], None] | None = None  # told each copy's pid as it exits

    def forward(self, signum: int, _frame: FrameType | None = None) -> None:
        self.stopping.set()
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def start(self) -> None:
        child = subprocess.Popen(self.cmd)
        self.children[child.pid] = (child, time.monotonic())
        if self.stopping.is_set():  # a signal landed while it was starting
            os.kill(child.pid, signal.SIGTERM)

    def watch(self) -> int:
        while self.children:
            try:
                pid, status = os.wait()  # blocks; resumes after a signal handler ran
            except ChildProcessError:
                break
            entry = self.children.pop(pid, None)
            if entry is not None:
                child, started = entry
                child.returncode = os.waitstatus_to_exitcode(status)
                self._exited(pid, child.returncode, started)
        return self.exit_code

    def _exited(self, pid: int, code: int, started: float) -> None:
        if self.on_exit is not None:
            self.on_exit(pid)
        if self.stopping.is_set():
            # A copy still starting dies of the forwarded signal itself: that is a stop too.
            stopped = code in (-signal.SIGTERM, -signal.SIGINT)
            self.exit_code = self.exit_code or (0 if stopped else abs(code))
            return
        quick = code != 0 and time.monotonic() - started < CRASH_WINDOW_S
        self.quick_crashes = self.quick_crashes + 1 if quick else 0
        giving_up = self.quick_crashes >= CRASH_LIMIT
        log.warning("replica_exited", pid=pid, code=code, restarting=not giving_up)
        if giving_up:
            self.exit_code = abs(code)
            self.forward(signal.SIGTERM)
        else:
            self.start()


class ProcessGroup:
    """Child processes of cascadeq roles, stopped gracefully (then firmly) together."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, *argv: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, "-m", "cascadeq.cli", *argv], env=self.env)
        self.procs.append(proc)
        return proc

    def stop(self, timeout: float = 20.0) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()
