"""Reading a catalog's TOML fields, each bad one turned into an error that names the file,
the field and the fix. Shared by the model and task parsers."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cascadeq.protocol.errors import ConfigError
from cascadeq.protocol.keys import InvalidName, check_name


class CatalogError(ConfigError, ValueError):
    """A catalog that cannot be used; the message says where and how to fix it."""

    def __init__(self, source: str, field_path: str, problem: str, fix: str) -> None:
        self.source, self.field_path, self.problem, self.fix = source, field_path, problem, fix
        super().__init__(f"{source}: {field_path}: {problem} (fix: {fix})")


class Fields:
    """Walks a TOML document for one catalog file."""

    def __init__(self, source: str, base: Path, check_files: bool) -> None:
        self.source, self.base, self.check_files = source, base, check_files

    def fail(self, where: str, problem: str, fix: str) -> CatalogError:
        return CatalogError(self.source, where, problem, fix)

    def table(
        self, doc: Mapping[str, Any], key: str, where: str, required: bool = True
    ) -> dict[str, Any]:
        value = doc.get(key)
        if value is None and not required:
            return {}
        if not isinstance(value, dict):
            raise self.fail(where, "must be a table", f"write it as [{where}]")
        return value

    def value(
        self,
        doc: Mapping[str, Any],
        key: str,
        where: str,
        kind: type | tuple[type, ...],
        default: Any = ...,
        fix: str = "",
    ) -> Any:
        if key not in doc:
            if default is ...:
                raise self.fail(f"{where}.{key}", "is missing", fix or f"add {key} = ...")
            return default
        value = doc[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            raise self.fail(f"{where}.{key}", f"must not be a boolean, got {value!r}", fix)
        if not isinstance(value, kinds):
            names = " or ".join(k.__name__ for k in kinds)
            raise self.fail(
                f"{where}.{key}",
                f"must be {names}, got {value!r}",
                fix or f"set {key} to a {names}",
            )
        return value

    def millis(self, doc: Mapping[str, Any], key: str, where: str, default: float) -> float:
        wait = float(self.value(doc, key, where, (int, float), default))
        if not (math.isfinite(wait) and 0 <= wait <= 60_000):
            raise self.fail(
                f"{where}.{key}",
                f"{wait} is out of range",
                "use a number of milliseconds from 0 to 60000",
            )
        return wait

    def positive(self, doc: Mapping[str, Any], key: str, where: str, default: int) -> int:
        value = self.value(doc, key, where, int, default)
        if value < 1:
            raise self.fail(
                f"{where}.{key}", f"must be 1 or more, got {value}", f"set {key} = 1 or more"
            )
        return int(value)

    def name(self, kind: str, name: str, where: str) -> None:
        try:
            check_name(kind, name)
        except InvalidName as exc:
            raise self.fail(where, str(exc), "rename it") from exc

    def no_unknown(self, doc: Mapping[str, Any], allowed: set[str], where: str) -> None:
        for key in doc:
            if key not in allowed:
                raise self.fail(
                    f"{where}.{key}",
                    "is not a known field",
                    f"remove it or use one of {sorted(allowed)}",
                )
