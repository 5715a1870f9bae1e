"""Architecture rules that are easy to break by accident."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "etcdvisor"


def imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_only_the_etcd_backend_imports_the_etcd_client_and_grpc():
    offenders = [str(p.relative_to(SRC)) for p in SRC.rglob("*.py")
                 if {"grpc", "etcd3"} & imports(p) and "coord/etcd/" not in p.as_posix()]
    assert offenders == []


def test_no_sleeping_in_library_or_runtime_code():
    """Periodic waits are Event.wait(timeout), so shutdown is prompt (GUIDE)."""
    offenders = [str(p.relative_to(SRC)) for p in SRC.rglob("*.py")
                 if "time.sleep(" in p.read_text() and "testing/" not in p.as_posix()]
    assert offenders == []


# Layers, lowest first. A module may import only from units of its own layer or of
# lower layers. coord sits below config because config checks endpoint URLs
# with coord's own URL parser (one grammar per concept); testing (fixtures for users'
# tests) may use anything below runtime.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("timing", "events", "etcd_server"),
    ("coord",),
    ("config",),
    ("recipes",),
    ("kv_watch",),
    ("kv",),
    ("process",),
    ("logs",),
    ("roles",),
    ("runtime",),
    ("status",),
    ("cli", "dashboard"),  # the dashboard's actions use the verbs' checks; `run` installs it
    ("__main__",),
)
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}
TESTING_MAY_IMPORT_BELOW = RANK["runtime"]


def unit_of(path: Path) -> str:
    """``coord/etcd/backend.py`` -> ``coord``; ``timing.py`` -> ``timing``."""
    parts = path.relative_to(SRC).parts
    return parts[0] if len(parts) > 1 else parts[0].removesuffix(".py")


def package_imports(path: Path, text: str | None = None) -> set[str]:
    """The etcdvisor units ``path`` (or ``text`` placed there) imports: relative and
    absolute imports, at any depth (function-level ones too)."""
    package = list(path.relative_to(SRC).parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text() if text is None else text)):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)]
            target = base + (node.module.split(".") if node.module else [])
            found.update([target[0]] if target else [alias.name for alias in node.names])
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "etcdvisor":
            parts = node.module.split(".")
            found.update([parts[1]] if len(parts) > 1 else [alias.name for alias in node.names])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("etcdvisor."))
    return found


def test_every_unit_has_a_layer():
    units = {unit_of(p) for p in SRC.rglob("*.py")} - {"__init__", "testing"}
    assert units <= set(RANK), f"add to LAYERS: {sorted(units - set(RANK))}"


def test_lower_layers_never_import_higher_ones():
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        unit = unit_of(path)
        for target in package_imports(path) - {unit, "__init__", "__version__"}:
            if target == "testing":
                offenders.append(f"{path.relative_to(SRC)} imports testing (only tests may)")
            elif unit == "testing":
                if RANK.get(target, 99) >= TESTING_MAY_IMPORT_BELOW:
                    offenders.append(f"{path.relative_to(SRC)} (testing) imports {target}")
            elif unit != "__init__" and RANK.get(target, 99) > RANK[unit]:
                offenders.append(f"{path.relative_to(SRC)} ({unit}) imports {target}")
    assert offenders == [], "\n".join(offenders)


def test_layer_check_sees_relative_and_function_level_imports():
    """The checker itself: upward imports hidden in a function are still found."""
    text = "def f():\n    from ..runtime import supervisor\n    import etcdvisor.roles.cron\n" \
           "    from . import types\n    from etcdvisor import status\n"
    assert package_imports(SRC / "coord" / "probe.py", text) == {"runtime", "roles", "coord", "status"}
