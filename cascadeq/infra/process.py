"""Process plumbing shared by the role commands: signals, threads, replicas, /metrics."""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from types import FrameType

import redis

from cascadeq.config.settings import Settings
from cascadeq.infra.connection import connect
from cascadeq.infra.log import get_logger

log = get_logger("cascadeq.infra.process")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
STOP_GRACE_S = 10.0  # a child that has not stopped this long after SIGTERM gets SIGKILL
PARENT_ENV = "CASCADEQ_PARENT_PID"  # set by a spawner for die_with_parent in the child
PR_SET_PDEATHSIG = 1


def consumer_name(role: str) -> str:
    """Unique per process, readable in XINFO CONSUMERS."""
    return f"{role}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


_SIGNAL_LINES: queue.SimpleQueue[tuple[str, str] | None] = queue.SimpleQueue()
_signal_logger: threading.Thread | None = None


def _write_signal_lines() -> None:
    while (line := _SIGNAL_LINES.get()) is not None:
        log.info(line[0], signal=line[1])


def _flush_signal_lines() -> None:
    """At exit: every line queued before is written (bounded: no log lock is held here)."""
    if _signal_logger is not None:
        _SIGNAL_LINES.put(None)
        _signal_logger.join(timeout=2.0)


def _start_signal_logger() -> None:
    """Started when handlers are installed, never in one: Thread.start takes threading's
    own lock, which the interrupted main thread may hold."""
    global _signal_logger  # noqa: PLW0603 - one logger thread per process
    if _signal_logger is None:
        _signal_logger = threading.Thread(
            target=_write_signal_lines, name="cq-signal-log", daemon=True
        )
        _signal_logger.start()
        atexit.register(_flush_signal_lines)


def log_from_handler(event: str, signum: int) -> None:
    """Log a signal's arrival from its handler without taking the log's write lock there.

    A handler runs in the main thread between two bytecodes, perhaps while that thread
    holds structlog's (non-reentrant) write lock; logging in the handler itself would then
    wait on that lock forever, and the process would hang until SIGKILLed. The line goes
    on a SimpleQueue instead (its put is reentrant, safe in a handler) for the logger
    thread to write once the interrupted write is done.
    """
    _SIGNAL_LINES.put((event, signal.Signals(signum).name))


def stop_on_signals(stop: threading.Event) -> None:
    """SIGTERM and SIGINT ask the loops to finish their batch and leave."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        stop.set()
        log_from_handler("stopping", signum)

    _start_signal_logger()
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    die_with_parent()


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


class _Interrupts:
    """What ``interruptible`` and ``uninterrupted`` share (main thread only)."""

    depth = 0  # nesting of uninterrupted blocks
    pending: int | None = None  # a signal that landed inside one, raised at its end
    raised = False  # a stop is under way: further signals are ignored


def _raise_stop(signum: int, _frame: FrameType | None) -> None:
    if _Interrupts.raised:
        log_from_handler("already_stopping", signum)
        return
    if _Interrupts.depth:
        _Interrupts.pending = signum
        return
    _Interrupts.raised = True
    log_from_handler("stopping", signum)
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """SIGTERM and SIGINT raise SystemExit(128 + signal), so ``finally`` blocks stop children.

    Python's default SIGTERM ends the process on the spot and leaves every child running.
    Once the stop is raised, further signals are ignored: the stop is bounded already
    (SIGKILL after STOP_GRACE_S), and a second Ctrl-C must not abandon it halfway.
    """
    if not _in_main_thread():  # signal handlers can only be set there
        yield
        return
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    _Interrupts.pending, _Interrupts.raised = None, False
    _start_signal_logger()
    for s in STOP_SIGNALS:
        signal.signal(s, _raise_stop)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _Interrupts.pending, _Interrupts.raised = None, False


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """A stop signal inside is raised at the end: a child started is always recorded."""
    if not _in_main_thread():
        yield
        return
    _Interrupts.depth += 1
    try:
        yield
    finally:
        _Interrupts.depth -= 1
        signum, _Interrupts.pending = _Interrupts.pending, None
        if signum is not None and not _Interrupts.depth:
            _raise_stop(signum, None)


def launch(cmd: Sequence[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Popen, naming this process in the child's environment for ``die_with_parent``.

    Only from the main thread: PR_SET_PDEATHSIG fires when the spawning *thread* ends.
    """
    child_env = dict(os.environ if env is None else env)
    child_env.pop(PARENT_ENV, None)
    if _in_main_thread():
        child_env[PARENT_ENV] = str(os.getpid())
    return subprocess.Popen(list(cmd), env=child_env)


def die_with_parent() -> None:
    """On Linux, SIGTERM this process when the cascadeq process that started it dies.

    Covers a parent that is SIGKILLed or crashes and so cannot stop its children; the
    signal then reaches the handler already installed, and the process stops cleanly.
    """
    expected = os.environ.pop(PARENT_ENV, "")
    if not expected.isdigit() or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        failed = libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0
    except (OSError, AttributeError):
        failed = True
    if failed:
        log.warning("no_parent_death_signal", error=os.strerror(ctypes.get_errno()))
    elif os.getppid() != int(expected):  # it died before the prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


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
        except (redis.RedisError, redis.exceptions.RedisClusterException) as exc:
            # RedisClusterException (no node of a cluster reachable) is not a RedisError
            log.warning("redis_unavailable", role=role, error=str(exc), retry_in=backoff)
            stop.wait(backoff)
            backoff = min(backoff * 2, 5.0)
            ready = False


CRASH_WINDOW_S = 5.0
CRASH_LIMIT = 3


def role_timeout(settings: Settings) -> float:
    """Socket timeout of a role: past the longest blocking read, so only a hung Redis trips it."""
    return settings.block_ms / 1000 + 10.0


def serve_metrics(settings: Settings, models: Iterable[str]) -> None:
    """/metrics on ``metrics_port``, with queue gauges read from Redis at scrape time."""
    if settings.metrics_port <= 0:
        return
    from cascadeq.infra import metrics  # noqa: PLC0415 - prometheus-client only where served

    r = connect(settings.require_redis_url(), name="cq-metrics", socket_timeout=5.0)
    metrics.serve(settings.metrics_port, metrics.QueueCollector(r, settings.keys(), models))


def run_replicas(
    argv: Sequence[str], replicas: int, settings: Settings, models: Iterable[str]
) -> int:
    """``replicas`` copies of ``cascadeq <argv>``; with metrics on, this process serves theirs.

    The copies write to one multiprocess directory and never serve /metrics themselves:
    ``--metrics-port 0`` overrides a $CASCADEQ_METRICS_PORT they would all try to bind.
    """
    copy = [*argv, "--metrics-port", "0"]
    if settings.metrics_port <= 0:
        return supervise(copy, replicas)
    from cascadeq.infra import metrics  # noqa: PLC0415 - prometheus-client only where served

    path, created = metrics.multiproc_dir()  # before the copies start: they inherit it
    serve_metrics(settings, models)
    try:
        return supervise(copy, replicas, metrics.replica_exited)
    finally:
        if created:
            shutil.rmtree(path, ignore_errors=True)


def supervise(
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
    die_with_parent()
    try:
        for _ in range(replicas):
            supervisor.start()
        log.info("replicas_started", replicas=replicas, pids=sorted(supervisor.children))
        return supervisor.watch()
    finally:
        supervisor.stop()  # after an exception; a no-op once every copy has exited


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
        """Pass the stop on; copies still running STOP_GRACE_S later are SIGKILLed."""
        if not self.stopping.is_set():
            self.stopping.set()
            timer = threading.Timer(STOP_GRACE_S, self._kill_all)
            timer.daemon = True
            timer.start()
        self._signal_all(signum)

    def _signal_all(self, signum: int) -> None:
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def _kill_all(self) -> None:
        if self.children:
            log.warning("replicas_killed", pids=sorted(self.children))
        self._signal_all(signal.SIGKILL)

    def stop(self) -> None:
        """Outside ``watch``: stop and reap whatever copies are left."""
        if not self.children:
            return
        self.forward(signal.SIGTERM)
        for child, _ in list(self.children.values()):
            child.wait()  # bounded: _kill_all fires after STOP_GRACE_S
        self.children.clear()

    def start(self) -> None:
        child = launch(self.cmd)
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
    """Child processes of a command, stopped gracefully (then firmly) together.

    The owner of everything a command starts besides its Redis: spawn them here inside
    ``interruptible`` and stop them in a ``finally`` (or use the group as a context).
    """

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, *argv: str) -> subprocess.Popen[bytes]:
        """A ``cascadeq`` subcommand."""
        return self.start([sys.executable, "-m", "cascadeq.cli", *argv])

    def start(self, cmd: Sequence[str]) -> subprocess.Popen[bytes]:
        with uninterrupted():  # a stop landing here still finds the child in procs
            proc = launch(cmd, self.env)
            self.procs.append(proc)
        return proc

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM all, wait up to ``timeout`` in all, then SIGKILL the rest.

        A stop signal landing meanwhile is raised only once all are stopped.
        """
        with uninterrupted():
            for proc in self.procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            for proc in self.procs:
                try:
                    proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            self.procs.clear()

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
