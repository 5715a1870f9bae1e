"""Start-up imports (issue 18, item 2): every e2e supervisor and every quick verb pays
for what its process imports, so a process imports only what its verb needs.

Checked by module names in a fresh interpreter (no timing: the CI machine is shared).
"""

import json
import subprocess
import sys
from pathlib import Path

FLEET = Path(__file__).resolve().parents[2] / "examples" / "fleet.yaml"

HEAVY_FOR_QUICK_VERBS = ("yaml", "jsonschema", "grpc", "etcd3", "prometheus_client", "psutil",
                         "etcdvisor.config", "etcdvisor.coord", "etcdvisor.runtime", "etcdvisor.status")


def imported_after(code: str) -> set[str]:
    probe = f"import sys, json\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    return set(json.loads(done.stdout.splitlines()[-1]))


def loaded(modules: set[str], name: str) -> bool:
    return any(m == name or m.startswith(name + ".") for m in modules)


def test_building_the_command_line_imports_no_verb_machinery():
    """``supervisor --help`` (and parsing any verb) loads argparse and the verb tables only."""
    modules = imported_after("from etcdvisor.cli import build_parser\nbuild_parser()")
    assert [name for name in HEAVY_FOR_QUICK_VERBS if loaded(modules, name)] == []


def test_the_supervisor_process_never_imports_the_schema_machinery_or_yaml():
    """PID 1 gets its config from a check child (config/isolated.py): no YAML reader, no
    JSON Schema, no HTTP client (only an embedded etcd or an http probe needs one)."""
    modules = imported_after("import etcdvisor.cli\nimport etcdvisor.runtime.supervisor")
    assert [name for name in ("yaml", "jsonschema", "urllib.request", "etcdvisor.config.semantic",
                              "etcdvisor.config.schema", "etcdvisor.config.source", "etcdvisor.dashboard")
            if loaded(modules, name)] == []


def test_validate_needs_no_etcd_client():
    modules = imported_after(f"from etcdvisor.config import load\nload({str(FLEET)!r}, {{}})")
    assert [name for name in ("grpc", "etcd3", "prometheus_client", "etcdvisor.runtime")
            if loaded(modules, name)] == []


def test_no_silent_import_fallback():
    """An optional module is checked for (importlib.util.find_spec, yaml.__with_libyaml__), never
    swallowed by ``except ImportError`` (issue 18: a missing module must not go unnoticed)."""
    src = Path(__file__).resolve().parents[2] / "src" / "etcdvisor"
    offenders = [str(p.relative_to(src)) for p in src.rglob("*.py")
                 if "except ImportError" in p.read_text() or "except ModuleNotFoundError" in p.read_text()]
    assert offenders == []
