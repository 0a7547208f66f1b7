"""The catalog's lifecycle fields, version choice per request, providers, pinned versions."""

from __future__ import annotations

import numpy as np
import pytest

from cascadeq.config.catalog import Catalog, CatalogError
from cascadeq.config.settings import Settings
from cascadeq.producer import Request
from cascadeq.producer.errors import Rejected
from cascadeq.producer.requests import Preparer
from cascadeq.protocol.bundle import Header
from cascadeq.workers.runner import ModelLoadError, choose_providers
from cascadeq.workers.versions import Versions, canary_point

INPUTS = 'output = "p"\ninputs = [{ name = "input", dtype = "float32", shape = [-1, 4] }]\n'
SHA = "ab" * 32
PROVIDERS = 'providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]\n'
VERSIONS = (
    f'[models.m.versions.1]\npath = "one.onnx"\nsha256 = "{SHA}"\n'
    '[models.m.versions.2]\npath = "two.onnx"\n'
)


def load(text: str) -> Catalog:
    return Catalog.loads(text, source="/cat/catalog.toml", check_files=False)


def test_the_single_path_form_is_one_implicit_version() -> None:
    spec = load(f'[models.m]\npath = "m.onnx"\nversion = "7"\nsha256 = "{SHA}"\n{INPUTS}').models[
        "m"
    ]
    assert (spec.version, spec.version_names(), spec.sha256) == ("7", ("7",), SHA)
    assert spec.canary is None
    assert spec.providers.names == ("CPUExecutionProvider",)


def test_versions_an_active_one_and_a_canary() -> None:
    text = f'[models.m]\nactive = "2"\ncanary = {{ version = "1", share = 0.25 }}\n{INPUTS}'
    spec = load(text + VERSIONS).models["m"]
    assert spec.version == "2"
    assert str(spec.path) == "/cat/two.onnx"
    assert spec.version_names() == ("1", "2")
    assert spec.canary is not None
    assert (spec.canary.version, spec.canary.share) == ("1", 0.25)
    one = spec.at("1")
    assert (one.version, str(one.path), one.sha256) == ("1", "/cat/one.onnx", SHA)
    assert spec.at("2") is spec


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ('active = "3"\n', "models.m.active"),
        ('active = "1"\npath = "x.onnx"\n', "models.m.path"),
        ('active = "1"\ncanary = { version = "1", share = 0.1 }\n', "models.m.canary.version"),
        ('active = "1"\ncanary = { version = "2", share = 1.5 }\n', "models.m.canary.share"),
        ('active = "1"\nproviders = []\n', "models.m.providers"),
        ('active = "1"\nprovider_options = { Foo = { a = 1 } }\n', "models.m.provider_options.Foo"),
    ],
)
def test_a_bad_lifecycle_field_names_itself(fields: str, where: str) -> None:
    with pytest.raises(CatalogError) as err:
        load(f"[models.m]\n{fields}{INPUTS}{VERSIONS}")
    assert err.value.field_path == where


def test_a_checksum_must_be_one() -> None:
    with pytest.raises(CatalogError, match=r"models.m.sha256: 'abc' is not a sha256"):
        load(f'[models.m]\npath = "m.onnx"\nsha256 = "abc"\n{INPUTS}')


def test_a_canary_takes_its_share_of_ids_by_a_deterministic_hash() -> None:
    ids = [f"req-{i}" for i in range(20_000)]
    share = sum(canary_point(i) < 0.1 for i in ids) / len(ids)
    assert abs(share - 0.1) < 0.01
    assert [canary_point(i) for i in ids[:5]] == [canary_point(i) for i in ids[:5]]


def test_the_version_of_a_request_pinned_canary_or_active() -> None:
    text = f'[models.m]\nactive = "2"\ncanary = {{ version = "1", share = 0.5 }}\n{INPUTS}'
    versions = Versions(load(text + VERSIONS).models["m"])
    assert versions.serving() == ["2", "1"]
    assert versions.version_of(Header(id="a", model="m", version="1")) == "1"
    ids = [f"r{i}" for i in range(100)]
    chosen = {i: versions.version_of(Header(id=i, model="m")) for i in ids}
    assert {v for i, v in chosen.items() if canary_point(i) < 0.5} == {"1"}
    assert {v for i, v in chosen.items() if canary_point(i) >= 0.5} == {"2"}


def test_a_pinned_version_is_checked_at_submit() -> None:
    cat = load(
        f'[models.m]\nactive = "1"\n{INPUTS}{VERSIONS}[tasks.t]\ncascade = [{{ model = "m" }}]\n'
    )
    prepare = Preparer(cat, Settings(), None)
    x = {"input": np.zeros((1, 4), np.float32)}
    assert prepare(Request(x, model="m", version="2")).header.version == "2"
    with pytest.raises(Rejected, match=r"model m has no version '9'; it has \['1', '2'\]"):
        prepare(Request(x, model="m", version="9"))
    with pytest.raises(Rejected, match="submit with model=, not task="):
        prepare(Request(x, task="t", version="1"))
    assert b"version" not in prepare(Request(x, model="m")).header.dumps()  # omitted


def test_a_missing_provider_falls_back_unless_strict() -> None:
    text = f'[models.m]\npath = "m.onnx"\n{PROVIDERS}'
    spec = load(text + INPUTS).models["m"]
    assert choose_providers(spec, ["CPUExecutionProvider"]) == (["CPUExecutionProvider"], [{}])
    assert choose_providers(spec, ["CUDAExecutionProvider", "CPUExecutionProvider"])[0] == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    strict = load(text + "strict = true\n" + INPUTS).models["m"]
    with pytest.raises(ModelLoadError, match=r"model m version 1: providers: \['CUDAExecution"):
        choose_providers(strict, ["CPUExecutionProvider"])


def test_provider_options_go_to_their_provider() -> None:
    text = (
        f'[models.m]\npath = "m.onnx"\n{PROVIDERS}'
        "provider_options = { CUDAExecutionProvider = { device_id = 1 } }\n"
    )
    spec = load(text + INPUTS).models["m"]
    have = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(spec, have)[1] == [{"device_id": "1"}, {}]
