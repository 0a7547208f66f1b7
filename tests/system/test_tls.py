"""The whole pipeline over rediss:// against a TLS-only redis-server, with client certificates.

Certificates come from the openssl CLI: a throwaway CA, a server certificate for
127.0.0.1, and a client certificate (the server requires one: mutual TLS).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
import redis

from cascadeq.config.catalog import Catalog
from cascadeq.config.settings import Settings
from cascadeq.infra.connection import connect
from cascadeq.infra.embedded import EmbeddedRedis, EmbeddedRedisError, TlsConfig
from cascadeq.infra.process import ProcessGroup
from cascadeq.producer import AsyncProducer, Producer, Request

EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclass(frozen=True)
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def openssl(cwd: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def issue(cwd: Path, name: str, extensions: str) -> None:
    """A key and a certificate signed by the test CA, valid for a day."""
    (cwd / f"{name}.ext").write_text(
        extensions + "\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
    )
    openssl(cwd, "req", *EC_KEY, "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN=cascadeq test {name}")  # fmt: skip
    openssl(cwd, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "1", "-out", f"{name}.crt",
            "-extfile", f"{name}.ext")  # fmt: skip


def make_certs(cwd: Path) -> Certs:
    openssl(cwd, "req", "-x509", *EC_KEY, "-keyout", "ca.key", "-out", "ca.crt", "-days", "1",
            "-subj", "/CN=cascadeq test CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    issue(cwd, "server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth")
    issue(cwd, "client", "extendedKeyUsage=clientAuth")
    return Certs(
        cwd / "ca.crt",
        cwd / "server.crt",
        cwd / "server.key",
        cwd / "client.crt",
        cwd / "client.key",
    )


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmbeddedRedis, Certs]]:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl CLI is needed to make the test certificates")
    certs = make_certs(tmp_path_factory.mktemp("tls"))
    tls = TlsConfig(certs.server_cert, certs.server_key, certs.ca, auth_clients=True)
    server = EmbeddedRedis(tls=tls)
    try:
        server.start()
    except EmbeddedRedisError as exc:
        if "tls" in str(exc).lower():
            pytest.skip(f"this redis-server was built without TLS support: {str(exc)[-200:]}")
        raise
    yield server, certs
    server.stop()


def client_url(server: EmbeddedRedis, certs: Certs) -> str:
    """The documented URL form: the CA to verify the server, a certificate to show it."""
    return (
        f"{server.url}&ssl_certfile={quote(str(certs.client_cert))}"
        f"&ssl_keyfile={quote(str(certs.client_key))}"
    )


def test_only_verified_tls_clients_with_a_certificate_get_in(
    tls_server: tuple[EmbeddedRedis, Certs],
) -> None:
    server, certs = tls_server
    assert server.url.startswith("rediss://127.0.0.1:")
    assert connect(client_url(server, certs)).ping()
    with pytest.raises(redis.ConnectionError):  # no client certificate
        redis.Redis.from_url(server.url, socket_timeout=5).ping()
    with pytest.raises(redis.ConnectionError):  # plain text to a TLS port
        redis.Redis.from_url(f"redis://127.0.0.1:{server.port}/0", socket_timeout=5).ping()
    untrusted = f"rediss://127.0.0.1:{server.port}/0?ssl_certfile={quote(str(certs.client_cert))}"
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        redis.Redis.from_url(f"{untrusted}&ssl_keyfile={quote(str(certs.client_key))}").ping()


def test_producer_router_and_worker_run_end_to_end_over_tls(
    tls_server: tuple[EmbeddedRedis, Certs], digits_dir: Path, catalog: Catalog
) -> None:
    server, certs = tls_server
    url = client_url(server, certs)
    env = {
        **os.environ,
        "REDIS_URL": url,
        "CASCADEQ_LOG_LEVEL": "warning",
        "CASCADEQ_CATALOG": str(digits_dir / "catalog.toml"),
    }
    x = np.load(digits_dir / "digits_test.npz")["X"][:20]
    group = ProcessGroup(env)
    try:
        group.spawn("router")
        group.spawn("worker")
        with Producer(settings=Settings(redis_url=url), catalog=catalog) as client:
            ids = client.submit_many([Request({"input": row[None]}, task="digits") for row in x])
            assert all(r.ok for r in client.wait_many(ids, timeout=60))

        async def from_asyncio() -> bool:
            async with AsyncProducer(settings=Settings(redis_url=url), catalog=catalog) as aio:
                rid = await aio.submit(task="digits", inputs={"input": x[:1]})
                return (await aio.wait(rid, timeout=60)).ok

        assert asyncio.run(from_asyncio())
    finally:
        group.stop()
