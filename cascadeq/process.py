"""Process plumbing shared by the role commands: signals, threads, replicas."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Sequence
from types import FrameType

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


def run_replicas(argv: Sequence[str], replicas: int) -> int:
    """Start ``replicas`` copies of this command with --replicas 1; forward signals."""
    cmd = [sys.executable, "-m", "cascadeq.cli", *argv, "--replicas", "1"]
    children = [subprocess.Popen(cmd) for _ in range(replicas)]
    log.info("replicas_started", replicas=replicas, pids=[c.pid for c in children])

    def forward(signum: int, _frame: FrameType | None) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes = [child.wait() for child in children]
    return max(codes, key=abs)


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
