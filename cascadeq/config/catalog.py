"""The catalog: models, tasks (cascades) and their limits, from one TOML file.

Validation happens once, at start, and every error names the file, the field and
the fix, because a typo in a catalog should not surface as a stack trace at 3 a.m.
Models are parsed in models.py, tasks in tasks.py, both on the field reader of fields.py.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cascadeq.config.fields import CatalogError
from cascadeq.config.lifecycle import Canary, Providers, VersionSpec
from cascadeq.config.models import (
    BATCH_MODES,
    OUTPUT_KINDS,
    Batching,
    InputError,
    InputSpec,
    ModelFields,
    ModelSpec,
    check_fallbacks,
)
from cascadeq.config.tasks import Stage, TaskSpec, parse_task
from cascadeq.config.tenants import Tenants, TenantSpec, parse_tenants

__all__ = [
    "BATCH_MODES",
    "Canary",
    "Providers",
    "VersionSpec",
    "OUTPUT_KINDS",
    "Batching",
    "Catalog",
    "CatalogError",
    "InputError",
    "InputSpec",
    "ModelSpec",
    "Stage",
    "TaskSpec",
    "TenantSpec",
    "Tenants",
]


@dataclass(frozen=True)
class Catalog:
    source: str
    models: Mapping[str, ModelSpec]
    tasks: Mapping[str, TaskSpec]
    text: str = ""  # the TOML it came from, so it can be published to Redis
    tenants: Tenants = field(default_factory=Tenants)  # [tenants.*]: limits and weights

    @classmethod
    def load(cls, path: str | Path, *, check_files: bool = True) -> Catalog:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise CatalogError(
                str(path),
                "(file)",
                f"cannot be read: {exc.strerror}",
                "pass an existing catalog with --catalog or CASCADEQ_CATALOG; "
                "`cascadeq models build` writes an example",
            ) from exc
        return cls.loads(text, source=str(path), check_files=check_files)

    @classmethod
    def loads(cls, text: str, *, source: str = "<catalog>", check_files: bool = True) -> Catalog:
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise CatalogError(source, "(syntax)", str(exc), "correct the TOML syntax") from exc
        base = Path(source).parent
        parser = _Parser(source, base, check_files)
        return parser.catalog(doc, text)

    def model(self, name: str) -> ModelSpec:
        return self.models[name]

    def first_model(self, task: str) -> str:
        return self.tasks[task].cascade[0].model


class _Parser(ModelFields):
    """The whole document: its sections, then each model and task."""

    def catalog(self, doc: dict[str, Any], text: str) -> Catalog:
        known = {"models", "tasks", "tenants"}
        for key in doc:
            if key not in known:
                raise self.fail(key, "is not a catalog section", f"use one of {sorted(known)}")
        models_doc = self.table(doc, "models", "models")
        if not models_doc:
            raise self.fail("models", "declares no model", "add a [models.NAME] table")
        models = {
            name: self.model(name, self.table(models_doc, name, f"models.{name}"))
            for name in models_doc
        }
        check_fallbacks(self, models)
        tasks_doc = self.table(doc, "tasks", "tasks", required=False)
        tasks = {
            name: parse_task(self, name, self.table(tasks_doc, name, f"tasks.{name}"), models)
            for name in tasks_doc
        }
        tenants = parse_tenants(self, self.table(doc, "tenants", "tenants", required=False))
        return Catalog(self.source, models, tasks, text, tenants)
