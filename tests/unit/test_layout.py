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
