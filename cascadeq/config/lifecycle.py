"""A model's lifecycle fields in the catalog: its versions (path and checksum each), the
active one, a canary taking a share of its traffic, and the ONNX Runtime execution
providers it asks for. The single-path form (``path``, ``version``) stays valid: one
implicit version."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cascadeq.config.fields import Fields

LIFECYCLE_FIELDS = (
    "sha256",
    "versions",
    "active",
    "canary",
    "providers",
    "provider_options",
    "strict",
)
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class VersionSpec:
    """One file a model can serve; ``sha256`` (lowercase hex), when given, is checked at load."""

    name: str
    path: Path
    sha256: str | None = None


@dataclass(frozen=True)
class Canary:
    """A version that answers ``share`` of the model's requests (by a hash of the id)."""

    version: str
    share: float


@dataclass(frozen=True)
class Providers:
    """The ONNX Runtime execution providers a model asks for, best first; one that is not
    available is skipped with a warning, or refused when ``strict``."""

    names: tuple[str, ...] = ("CPUExecutionProvider",)
    options: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()  # name -> key/values
    strict: bool = False

    def options_of(self, name: str) -> dict[str, str]:
        return dict(next((kv for n, kv in self.options if n == name), ()))


class LifecycleFields(Fields):
    """Parses a model's versions, active version, canary and providers."""

    def versions(self, doc: Mapping[str, Any], where: str) -> tuple[dict[str, VersionSpec], str]:
        """``versions = { "1" = { path, sha256 } }`` with ``active``, or the single-path form
        (``path``, ``version``, ``sha256``): one implicit version."""
        if "versions" not in doc:
            for key in ("active", "canary"):
                if key in doc:
                    raise self.fail(
                        f"{where}.{key}", "needs a versions table", 'add versions = { "1" = ... }'
                    )
            name = str(self.value(doc, "version", where, (str, int), "1"))
            one = self.version_file(doc, where, name)
            return {name: one}, name
        for key in ("path", "version", "sha256"):
            if key in doc:
                raise self.fail(
                    f"{where}.{key}",
                    "is given beside versions",
                    f'move it into a version (versions."N".{key}) and set active = "N"',
                )
        table = self.table(doc, "versions", f"{where}.versions")
        if not table:
            raise self.fail(f"{where}.versions", "is empty", "list at least one version")
        versions = {}
        for name, item in table.items():
            at = f"{where}.versions.{name}"
            self.name("version", name, at)
            if not isinstance(item, dict):
                raise self.fail(at, "must be a table", '{ path = "model.onnx", sha256 = "..." }')
            self.no_unknown(item, {"path", "sha256"}, at)
            versions[name] = self.version_file(item, at, name)
        active = str(self.value(doc, "active", where, (str, int), fix='add active = "1"'))
        if active not in versions:
            raise self.fail(
                f"{where}.active", f"{active!r} is not a version", f"use one of {sorted(versions)}"
            )
        return versions, active

    def version_file(self, doc: Mapping[str, Any], where: str, name: str) -> VersionSpec:
        path = self.base / self.value(doc, "path", where, str, fix='add path = "model.onnx"')
        if self.check_files and not path.is_file():
            raise self.fail(
                f"{where}.path",
                f"file {path} does not exist",
                "build it (`cascadeq models build`) or correct the path",
            )
        sha = self.value(doc, "sha256", where, str, None)
        if sha is not None and not _SHA256.fullmatch(sha):
            raise self.fail(
                f"{where}.sha256",
                f"{sha!r} is not a sha256 checksum",
                "write the file's 64 lowercase hex digits (`sha256sum FILE`)",
            )
        return VersionSpec(name, path, sha)

    def canary(
        self, doc: Mapping[str, Any], where: str, versions: Mapping[str, VersionSpec], active: str
    ) -> Canary | None:
        raw = self.value(doc, "canary", where, dict, None)
        if raw is None:
            return None
        at = f"{where}.canary"
        self.no_unknown(raw, {"version", "share"}, at)
        version = str(self.value(raw, "version", at, (str, int)))
        if version not in versions or version == active:
            raise self.fail(
                f"{at}.version",
                f"{version!r} is not a version other than the active {active!r}",
                f"use one of {sorted(set(versions) - {active})}",
            )
        share = float(self.value(raw, "share", at, (int, float)))
        if not 0.0 < share < 1.0:
            raise self.fail(
                f"{at}.share", f"{share} is not between 0 and 1", "use a fraction, e.g. 0.1"
            )
        return Canary(version, share)

    def providers(self, doc: Mapping[str, Any], where: str) -> Providers:
        names = self.value(doc, "providers", where, list, ["CPUExecutionProvider"])
        if not names or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
            raise self.fail(
                f"{where}.providers",
                f"{names!r} is not a list of distinct provider names",
                'e.g. providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]',
            )
        raw = self.value(doc, "provider_options", where, dict, {})
        options = []
        for name, kv in raw.items():
            if name not in names or not isinstance(kv, dict):
                raise self.fail(
                    f"{where}.provider_options.{name}",
                    "is not a table of a listed provider",
                    f"give options of one of {names}, e.g. {{ device_id = 0 }}",
                )
            options.append((name, tuple((str(k), str(v)) for k, v in kv.items())))
        strict = self.value(doc, "strict", where, bool, False)
        return Providers(tuple(names), tuple(options), strict)
