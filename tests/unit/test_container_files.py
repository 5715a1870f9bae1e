"""The container files, checked without a Docker engine: examples/docker-compose.yaml
parses and references only files that exist; the Dockerfile has the promised shape."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from etcdvisor.config import load

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
COMPOSE = EXAMPLES / "docker-compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_runs_etcd_and_three_members():
    services = compose()["services"]
    assert "etcd" in services
    members = [name for name, svc in services.items() if name != "etcd"]
    assert len(members) == 3
    ids = {services[m]["environment"]["ETCDVISOR_MEMBER_ID"] for m in members}
    assert len(ids) == 3, "each member needs its own id"
    for name in members:
        svc = services[name]
        assert svc["environment"]["ETCDVISOR_ENDPOINTS"] == "http://etcd:2379"
        assert svc["depends_on"]["etcd"]["condition"] == "service_healthy"


def test_compose_references_only_existing_files():
    doc = compose()
    for name, svc in doc["services"].items():
        build = svc.get("build")
        if build:
            context = (COMPOSE.parent / build["context"]).resolve()
            assert context.is_dir(), (name, context)
            assert (context / build.get("dockerfile", "Dockerfile")).is_file(), name
        mounted = {}
        for volume in svc.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith((".", "/")):
                host = (COMPOSE.parent / source).resolve()
                assert host.exists(), (name, volume)
                mounted[target] = host
        for arg in svc.get("command", []):
            if arg.startswith("/app/examples/"):
                assert arg in mounted, (name, arg, "config must be mounted")
                load(mounted[arg], {})  # and it is a valid etcdvisor config


def test_compose_config_roles_find_their_files():
    config = load(EXAMPLES / "compose-fleet.yaml", {})
    for role in config.roles.values():
        script = [a for a in role.command if a.endswith(".py")]
        for name in script:
            assert (EXAMPLES / name).is_file(), (role.name, name)


def test_dockerfile_shape():
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM\s", text, re.M)
    assert len(stages) >= 2, "multi-stage"
    deps_install = text.index("pip install --no-cache-dir --prefix=/install")
    assert deps_install < text.index("COPY src"), "dependencies are installed before the source is copied"
    assert "COPY src" not in text[:deps_install]
    user = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert user and not user[-1].startswith(("root", "0")), "runs as a non-root user"
    assert re.search(r"^ARG EMBEDDED=0", text, re.M) and "optional-dependencies']['embedded']" in text
    health = re.search(r"^HEALTHCHECK .*\n?.*CMD \[\"supervisor\", \"health\"", text, re.M)
    assert health, "HEALTHCHECK uses supervisor health"
    assert "tini" in text and "PID 1" in text and "subreaper" in text
    assert re.search(r'^ENTRYPOINT \["supervisor", "run"\]', text, re.M)
