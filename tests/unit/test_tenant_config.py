"""Tenant parsing and validation, the header field, key names and the fair-share split."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from cascadeq.config.catalog import Catalog, CatalogError
from cascadeq.config.settings import Settings
from cascadeq.producer import Producer, Rejected
from cascadeq.producer.requests import Preparer, Request, drain_rate, retry_after
from cascadeq.protocol import bundle
from cascadeq.protocol.bundle import Header
from cascadeq.protocol.keys import Keys, stream_model, stream_tenant
from cascadeq.workers.fairshare import allocate, requests_in

BASE = """
[models.m]
path = "m.onnx"
output = "probabilities"
inputs = [{ name = "input", dtype = "float32", shape = [-1, 4] }]
"""


def parse(tenants: str) -> Catalog:
    return Catalog.loads(tenants + BASE, source="t/catalog.toml", check_files=False)


def test_tenant_tables_parse_with_their_defaults() -> None:
    cat = parse("[tenants.acme]\nrate = 50\nmax_in_flight = 10\n[tenants.b]\nweight = 3\n")
    acme, b = cat.tenants.specs["acme"], cat.tenants.specs["b"]
    assert (acme.rate, acme.bucket, acme.max_in_flight, acme.weight) == (50.0, 50.0, 10, 1.0)
    assert (b.limited, b.weight) == (False, 3.0)
    assert cat.tenants.limited("b") is None
    assert cat.tenants.limited("acme") is acme
    assert not parse("").tenants  # nothing declared: the single-tenant path


@pytest.mark.parametrize(
    ("table", "field", "says"),
    [
        ("[tenants.a]\nrate = 0\n", "tenants.a.rate", "must be a positive number"),
        ("[tenants.a]\nrate = -1\n", "tenants.a.rate", "must be a positive number"),
        ("[tenants.a]\nburst = 5\n", "tenants.a.burst", "needs a rate"),
        ("[tenants.a]\nrate = 5\nburst = 0.5\n", "tenants.a.burst", "below one request"),
        ("[tenants.a]\nmax_in_flight = 2.5\n", "tenants.a.max_in_flight", "whole number"),
        ("[tenants.a]\nweight = true\n", "tenants.a.weight", "must not be a boolean"),
        ("[tenants.a]\nquota = 1\n", "tenants.a.quota", "is not a tenant field"),
        ('[tenants."A:b"]\nrate = 1\n', "tenants.A:b", "tenant name 'A:b' is invalid"),
        ("tenants = 3\n", "tenants", "must be a table"),
    ],
)
def test_a_bad_tenant_table_names_the_field(table: str, field: str, says: str) -> None:
    with pytest.raises(CatalogError) as err:
        parse(table)
    assert err.value.field_path == field
    assert says in str(err.value)


def test_the_default_tenant_costs_nothing_on_the_wire() -> None:
    plain = Header("r1", model="m")
    assert b"tenant" not in plain.dumps()
    named = Header("r1", model="m", tenant="acme")
    assert Header.loads(named.dumps()).tenant == "acme"
    assert Header.loads(plain.dumps()).tenant == "default"


def test_a_forged_tenant_name_fails_its_header_alone() -> None:
    docs = [{"id": "r0", "model": "m", "tenant": "x:y"}, {"id": "r1", "model": "m"}]
    _headers, bad, route = bundle._headers(msgpack.packb(docs))
    assert [b.index for b in bad] == [0]
    assert "tenant name 'x:y' is invalid" in bad[0].message
    assert route is None


def test_tenant_sub_streams_and_keys() -> None:
    keys = Keys("cq")
    cat = parse("[tenants.acme]\nweight = 2\n[tenants.default]\nweight = 3\n")
    assert cat.tenants.lane_streams(keys, "m", "default") == [
        ("cq:q:m:default", 3.0),
        ("cq:q:m:default:acme", 2.0),
    ]
    assert cat.tenants.own_stream("acme") == "acme"
    assert cat.tenants.own_stream("default") is None
    assert cat.tenants.own_stream("undeclared") is None
    assert keys.owns_stream("cq:q:m:default:acme")
    assert not keys.owns_stream("cq:q:m:a:b:c")
    assert stream_model("cq:q:m:default:acme") == stream_model("cq:q:m:default") == "m"
    assert stream_tenant("cq:q:m:default:acme") == "acme"
    assert stream_tenant("cq:q:m:default") is None
    assert keys.tenant_in_flight("acme").startswith("cq:n:")  # the producer's ACL covers n:*
    assert keys.tenant_bucket("acme").startswith("cq:n:")


def test_the_client_refuses_a_bad_tenant_name_before_sending() -> None:
    with pytest.raises(Rejected, match="tenant name 'Bad Name' is invalid"):
        Producer("redis://127.0.0.1:1/0", catalog=parse(""), tenant="Bad Name")
    prepare = Preparer(parse(""), Settings(), None, "acme")
    x = {"input": np.zeros((1, 4), np.float32)}
    assert prepare(Request(x, model="m")).group[4] == "acme"  # the client's tenant
    assert prepare(Request(x, model="m", tenant="other")).group[4] == "other"
    with pytest.raises(Rejected, match="tenant name 'no:colons' is invalid") as err:
        prepare(Request(x, model="m", tenant="no:colons"))
    assert err.value.code == "bad_request"


def test_fair_split_is_weighted_and_work_conserving() -> None:
    inf = float("inf")
    assert allocate(64, [1.0, 1.0], [inf, inf]) == [32.0, 32.0]
    assert allocate(60, [2.0, 1.0], [inf, inf]) == [40.0, 20.0]
    assert allocate(64, [1.0, 1.0], [inf, 4.0]) == [60.0, 4.0]  # the idle share goes on
    assert allocate(64, [1.0, 1.0], [10.0, 4.0]) == [10.0, 4.0]  # nobody gets past demand
    assert allocate(64, [1.0, 1.0, 1.0], [inf, 0.0, inf]) == [32.0, 0.0, 32.0]


def test_requests_in_an_entry_are_read_from_the_header_array() -> None:
    assert requests_in({b"h": b"", b"x": b""}) == 1
    for n in (1, 15, 16, 300, 70000):
        assert requests_in({b"H": msgpack.packb([0] * n)}) == n


def test_retry_after_follows_the_drain_rate() -> None:
    assert drain_rate([b"20", b"10"]) == 500.0  # 10 samples per 20 ms
    assert drain_rate([None, None]) is None
    assert retry_after(4, 500.0) == pytest.approx(0.008)
    assert retry_after(0, 500.0) == pytest.approx(0.002)  # always at least one request
    assert retry_after(4, None) == 1.0  # no worker has published its speed
