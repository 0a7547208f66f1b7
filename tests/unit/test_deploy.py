"""The deployment files agree with the code: commands parse, settings exist, names match.

There is no Docker engine or cluster here, so these checks are what catches a renamed
flag, setting or stream before a deployment crash-loops or KEDA watches an empty stream.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import yaml

from cascadeq.cli import build_parser
from cascadeq.config.settings import Settings
from cascadeq.protocol import keys as keynames

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
# The names `cascadeq models build` writes into the catalog baked into the image.
EXAMPLE_MODELS = {"digits-small", "digits-large"}
SETTING_NAMES = {f.name for f in fields(Settings)}
PREFIX = "CASCADEQ_"

Doc = dict[str, Any]


# --- loading -------------------------------------------------------------------------------


def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in {".yaml", ".yml"})


def load_all(path: Path) -> list[Doc]:
    with path.open(encoding="utf-8") as fh:
        return [d for d in yaml.safe_load_all(fh) if d is not None]


def k8s_docs() -> list[Doc]:
    return [d for p in sorted(K8S.glob("*.yaml")) for d in load_all(p)]


def of_kind(kind: str) -> list[Doc]:
    return [d for d in k8s_docs() if d.get("kind") == kind]


def compose_services() -> dict[str, Doc]:
    services: dict[str, Doc] = load_all(COMPOSE)[0]["services"]
    return services


def pod_containers(doc: Doc) -> list[Doc]:
    containers: list[Doc] = doc["spec"]["template"]["spec"]["containers"]
    return containers


def is_cascadeq_image(image: str) -> bool:
    """``cascadeq:tag`` or ``registry/path/cascadeq:tag``."""
    return image.rsplit("/", 1)[-1].split(":", 1)[0] == "cascadeq"


def cascadeq_compose_services() -> dict[str, Doc]:
    return {
        name: svc
        for name, svc in compose_services().items()
        if "build" in svc or is_cascadeq_image(svc.get("image", ""))
    }


def cascadeq_k8s_containers() -> list[tuple[Doc, Doc]]:
    """(workload, container) for every container running the cascadeq image."""
    return [
        (doc, c)
        for doc in of_kind("Deployment") + of_kind("StatefulSet")
        for c in pod_containers(doc)
        if is_cascadeq_image(c.get("image", ""))
    ]


def compose_argv(svc: Doc) -> list[str]:
    command = svc.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def compose_env(svc: Doc) -> dict[str, str]:
    """Compose accepts a mapping or a list of NAME=VALUE."""
    env = svc.get("environment") or {}
    if isinstance(env, list):
        return dict(str(item).partition("=")[::2] for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def configmaps() -> dict[str, dict[str, str]]:
    return {d["metadata"]["name"]: d.get("data") or {} for d in of_kind("ConfigMap")}


def secrets() -> dict[str, dict[str, str]]:
    return {
        d["metadata"]["name"]: {**(d.get("data") or {}), **(d.get("stringData") or {})}
        for d in of_kind("Secret")
    }


def container_env_names(container: Doc) -> set[str]:
    """Names set directly or through envFrom of a ConfigMap or Secret in deploy/k8s."""
    names = {e["name"] for e in container.get("env", [])}
    maps, secs = configmaps(), secrets()
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            names |= set(maps[source["configMapRef"]["name"]])
        if "secretRef" in source:
            names |= set(secs[source["secretRef"]["name"]])
    return names


def k8s_settings() -> Settings:
    """Settings as the pods see them: defaults overridden by the shared ConfigMap."""
    env: dict[str, str] = {}
    for data in configmaps().values():
        env.update(data)
    return Settings.from_env(env)


def worker_deployments() -> dict[str, tuple[Doc, Doc]]:
    """Deployment name -> (Deployment, its cascadeq container) for every worker."""
    found = {
        doc["metadata"]["name"]: (doc, c)
        for doc, c in cascadeq_k8s_containers()
        if doc["kind"] == "Deployment" and c.get("args", [None])[0] == "worker"
    }
    assert found, "no worker Deployment in deploy/k8s"
    return found


def worker_models(argv: list[str]) -> set[str]:
    args = build_parser().parse_args(argv)
    return {m.strip() for m in args.models.split(",") if m.strip()} or set(EXAMPLE_MODELS)


def subcommands() -> set[str]:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    raise AssertionError("cascadeq's parser has no subcommands")


def seconds(duration: str | int | float) -> float:
    """Compose durations: a number of seconds, or e.g. ``30s``, ``1m30s``, ``500ms``."""
    if isinstance(duration, int | float):
        return float(duration)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    assert parts, f"unreadable duration {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


# --- Dockerfile ----------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        instruction, _, rest = (pending + line).partition(" ")
        out.append((instruction.upper(), rest.strip()))
        pending = ""
    return out


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """Instructions per stage; global ARGs before the first FROM are in stage 0's FROM."""
    stages: list[list[tuple[str, str]]] = []
    args: dict[str, str] = {}
    for instruction, rest in dockerfile_instructions():
        if instruction == "FROM":
            image = rest
            for name, value in args.items():
                image = image.replace(f"${{{name}}}", value).replace(f"${name}", value)
            stages.append([(instruction, image)])
        elif not stages:
            if instruction == "ARG" and "=" in rest:
                name, _, value = rest.partition("=")
                args[name.strip()] = value.strip()
        else:
            stages[-1].append((instruction, rest))
    return stages


def packaged_dirs() -> list[str]:
    """Top-level packages setuptools installs, from pyproject's packages.find include."""
    with (ROOT / "pyproject.toml").open("rb") as fh:
        pyproject = tomllib.load(fh)
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    tops = {pattern.rstrip("*").rstrip(".") for pattern in include}
    # The role folders are packaged through symlinks inside the package (cascadeq/router ->
    # ../router): the image needs the folders they point to as well.
    linked = {
        link.resolve().relative_to(ROOT).parts[0]
        for top in tops
        for link in (ROOT / top).iterdir()
        if link.is_symlink()
    }
    return sorted(tops | linked)


# --- tests ---------------------------------------------------------------------------------


def test_every_yaml_file_parses() -> None:
    # Their shape is checked against the real schemas in test_deploy_validators.py.
    files = yaml_files()
    assert COMPOSE in files
    assert len([p for p in files if p.parent == K8S]) >= 4
    for path in files:
        assert load_all(path), f"{path} has no document"


def test_container_commands_parse_with_the_real_cli() -> None:
    argvs = [
        (f"compose service {n}", compose_argv(s)) for n, s in cascadeq_compose_services().items()
    ]
    argvs += [
        (f"{doc['kind']} {doc['metadata']['name']}", [str(a) for a in c.get("args", [])])
        for doc, c in cascadeq_k8s_containers()
    ]
    roles = {argv[0] for _, argv in argvs if argv}
    assert {"router", "worker"} <= roles, f"expected router and worker containers, got {roles}"
    known = subcommands()
    for where, argv in argvs:
        assert argv, f"{where}: no command; the image's default only prints --help"
        assert argv[0] in known, f"{where}: {argv[0]!r} is not a cascadeq subcommand ({known})"
        try:
            build_parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"{where}: `cascadeq {shlex.join(argv)}` does not parse")
        if argv[0] == "worker":
            assert worker_models(argv) <= EXAMPLE_MODELS, f"{where}: unknown model in {argv}"


def test_k8s_containers_keep_the_cascadeq_entrypoint() -> None:
    # `command` would replace the image's ENTRYPOINT, so `router` would run as a program.
    for doc, c in cascadeq_k8s_containers():
        assert "command" not in c, f"{doc['metadata']['name']}: use args, not command"


def test_cascadeq_env_vars_are_real_settings() -> None:
    names: set[str] = set()
    for svc in compose_services().values():
        env = compose_env(svc)
        names |= set(env)
        Settings.from_env(env)  # values of the right type, or SettingsError
    for _, c in cascadeq_k8s_containers():
        names |= container_env_names(c)
    for data in [*configmaps().values(), *secrets().values()]:
        names |= set(data)
    k8s_settings()
    for instruction, rest in dockerfile_instructions():
        if instruction == "ENV":
            names |= set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", rest))
    ours = sorted(n for n in names if n.startswith(PREFIX))
    assert "CASCADEQ_CATALOG" in ours
    for name in ours:
        field = name.removeprefix(PREFIX).lower()
        assert field in SETTING_NAMES, f"{name} is not a Settings field ({sorted(SETTING_NAMES)})"


def test_every_cascadeq_container_gets_redis_url() -> None:
    for name, svc in cascadeq_compose_services().items():
        assert compose_env(svc).get("REDIS_URL", "").startswith("redis"), name
    for doc, c in cascadeq_k8s_containers():
        assert "REDIS_URL" in container_env_names(c), doc["metadata"]["name"]


def test_catalog_setting_points_into_the_image() -> None:
    for name, svc in cascadeq_compose_services().items():
        assert compose_env(svc).get("CASCADEQ_CATALOG") == "/models/catalog.toml", name
    assert k8s_settings().catalog == "/models/catalog.toml"


def test_keda_scales_each_model_deployment_on_its_own_stream() -> None:
    keys = keynames.Keys(k8s_settings().prefix)
    workers = worker_deployments()
    scaled = of_kind("ScaledObject")
    auths = {d["metadata"]["name"]: d for d in of_kind("TriggerAuthentication")}
    secs = secrets()
    targets = {obj["spec"]["scaleTargetRef"]["name"]: obj for obj in scaled}
    assert len(targets) == len(scaled), "two ScaledObjects target one Deployment"
    assert set(targets) == set(workers), "every worker Deployment has its ScaledObject"
    served: set[str] = set()
    for name, (_, container) in workers.items():
        (model,) = worker_models([str(a) for a in container["args"]])  # one model each
        served.add(model)
        spec = targets[name]["spec"]
        assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        (trigger,) = spec["triggers"]  # one stream per ScaledObject
        assert trigger["type"] == "redis-cluster-streams"
        meta = trigger["metadata"]
        assert meta["stream"] == keys.model_stream(model)
        assert meta["consumerGroup"] == keynames.WORKER_GROUP
        assert int(meta["lagCount"]) > 0
        # addressesFromEnv is read from the scale target's env: host:port, comma-separated.
        env_name = meta["addressesFromEnv"]
        assert env_name in container_env_names(container)
        addresses = next(d[env_name] for d in configmaps().values() if env_name in d)
        for address in addresses.split(","):
            assert re.fullmatch(r"[A-Za-z0-9.-]+:\d+", address), address
        auth = auths[trigger["authenticationRef"]["name"]]
        for ref in auth["spec"]["secretTargetRef"]:
            assert ref["parameter"] in {"password", "username"}
            assert ref["key"] in secs[ref["name"]], ref
    assert served == EXAMPLE_MODELS


def test_the_prefix_keeps_every_key_in_one_cluster_slot() -> None:
    # The multi-key scripts (submit, commit, replay) need their keys in one slot.
    prefix = k8s_settings().prefix
    assert re.fullmatch(r"\{[^{}]+\}", prefix), prefix
    assert all(s["REDIS_URL"].startswith("redis+cluster://") for s in secrets().values())


def test_grace_periods_outlast_the_blocking_read() -> None:
    # SIGTERM lets a role finish its batch; the kill must not come before one blocking read.
    block_s = k8s_settings().block_ms / 1000
    for doc, _ in worker_deployments().values():
        assert doc["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > (
            Settings().block_ms / 1000
        )
    for doc, _ in cascadeq_k8s_containers():
        grace = doc["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
        assert grace > block_s, doc["metadata"]["name"]
    for name, svc in cascadeq_compose_services().items():
        compose_block_s = Settings.from_env(compose_env(svc)).block_ms / 1000
        assert seconds(svc.get("stop_grace_period", "10s")) > compose_block_s, name


def test_redis_is_7_or_newer_with_an_aof() -> None:
    # lagCount needs Redis 7; the AOF keeps accepted requests across a Redis restart.
    redis_svc = compose_services()["redis"]
    redis_pods = [
        c
        for d in of_kind("StatefulSet")
        for c in pod_containers(d)
        if c["image"].split(":")[0] == "redis"
    ]
    assert redis_pods, "no Redis StatefulSet in deploy/k8s"
    for image, argv in [(redis_svc["image"], compose_argv(redis_svc))] + [
        (c["image"], [str(a) for a in c.get("args", [])]) for c in redis_pods
    ]:
        major = re.match(r"redis:(\d+)", image)
        assert major, image
        assert int(major.group(1)) >= 7, image
        joined = " ".join(argv)
        assert "--appendonly yes" in joined, argv
        assert "--appendfsync everysec" in joined, argv
        assert "--maxmemory-policy noeviction" in joined, argv
    assert "healthcheck" in redis_svc
    for name in ("router", "worker"):
        deps = compose_services()[name]["depends_on"]
        assert deps["redis"]["condition"] == "service_healthy"


def test_dockerfile_runtime_stage() -> None:
    stages = dockerfile_stages()
    first_from = stages[0][0][1].split()[0]
    assert first_from == "python:3.11-slim"
    final = stages[-1]
    assert final[0][1].split()[0] == "python:3.11-slim"
    entrypoints = [rest for instruction, rest in final if instruction == "ENTRYPOINT"]
    assert entrypoints, "the runtime stage has no ENTRYPOINT"
    assert json.loads(entrypoints[-1]) == ["cascadeq"]
    users = [rest for instruction, rest in final if instruction == "USER"]
    assert users, "the runtime stage runs as root"
    assert users[-1].split(":")[0] not in {"root", "0"}


def test_dockerfile_copies_every_package() -> None:
    # A package added to pyproject but not copied would be missing from the image.
    copied = " ".join(rest for stage in dockerfile_stages() for i, rest in stage if i == "COPY")
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text(encoding="utf-8").splitlines()
    for package in packaged_dirs():
        assert re.search(rf"(^|\s){package}(/|\s)", copied), f"Dockerfile never copies {package}"
        assert f"!{package}/" in ignore, f"Dockerfile.dockerignore excludes {package}"


# --- observability ---------------------------------------------------------------------------

GRAFANA = DEPLOY / "grafana" / "cascadeq.json"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
SAMPLE_SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")


def dashboard_exprs() -> list[str]:
    doc = json.loads(GRAFANA.read_text(encoding="utf-8"))
    return [t["expr"] for panel in doc["panels"] for t in panel["targets"]]


def family_of(sample: str) -> str:
    for suffix in SAMPLE_SUFFIXES:
        if sample.endswith(suffix):
            return sample.removesuffix(suffix)
    return sample


def test_dashboard_uses_only_real_metrics_and_shows_every_family() -> None:
    from cascadeq.infra.metrics import family_names

    families = family_names()
    used = {
        family_of(name) for expr in dashboard_exprs() for name in re.findall(r"cascadeq_\w+", expr)
    }
    assert used, "the dashboard queries nothing"
    assert used <= families, f"not in cascadeq/infra/metrics.py: {sorted(used - families)}"
    assert families <= used, f"families without a panel: {sorted(families - used)}"


def test_prometheus_scrapes_the_port_the_roles_serve() -> None:
    (doc,) = load_all(PROMETHEUS)
    jobs = {job["job_name"]: job for job in doc["scrape_configs"]}
    assert set(jobs) == {"cascadeq-router", "cascadeq-worker"}
    services = cascadeq_compose_services()
    for job in jobs.values():
        (sd,) = job["dns_sd_configs"]
        for name in sd["names"]:
            port = Settings.from_env(compose_env(services[name])).metrics_port
            assert sd["port"] == port > 0, f"{job['job_name']} scrapes {sd['port']}, serves {port}"


def test_k8s_redis_is_a_cluster_of_three_masters_with_a_replica_each() -> None:
    (sts,) = [d for d in of_kind("StatefulSet") if d["metadata"]["name"].startswith("redis")]
    (container,) = pod_containers(sts)
    joined = " ".join(str(a) for a in container["args"])
    assert "--cluster-enabled yes" in joined
    assert "--cluster-preferred-endpoint-type hostname" in joined  # pod IPs change
    (job,) = of_kind("Job")
    create = " ".join(pod_containers(job)[0]["args"])
    nodes = re.findall(r"\S+:6379", create)
    assert "--cluster-replicas 1" in create
    assert len(nodes) == sts["spec"]["replicas"] == 6, nodes
    service = sts["spec"]["serviceName"]
    assert all(n.split(".")[1].split(":")[0] == service for n in nodes), nodes
    url_host = secrets()["cascadeq-redis"]["REDIS_URL"].rsplit("@", 1)[1].split(":")[0]
    assert url_host == service  # the headless Service: every node's address
    seeds = next(d["REDIS_ADDRESSES"] for d in configmaps().values() if "REDIS_ADDRESSES" in d)
    assert set(seeds.split(",")) <= set(nodes)
