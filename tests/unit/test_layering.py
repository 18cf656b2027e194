"""The dependency direction of the packages holds: store and fsio never reach up, the client
never opens a repository, and outside libraries live in their one adapter module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = {"store": "cairn.store", "daemon": "cairn.daemon", "client": "cairn.client", "fsio": "cairn.fsio",
           "cairn_pkg": "cairn"}

# package -> import prefixes it must never use
FORBIDDEN = {
    "cairn.fsio": ("cairn.store", "cairn.daemon", "cairn.client", "cairn.proto", "grpc", "watchdog", "psycopg2"),
    "cairn.store": ("cairn.daemon", "cairn.client", "cairn.proto", "grpc", "watchdog", "psycopg2"),
    "cairn.client": ("cairn.store", "cairn.daemon", "watchdog", "psycopg2"),
    "cairn.daemon": ("cairn.client",),
    "cairn": ("cairn.store", "cairn.daemon", "cairn.client", "cairn.fsio"),
}
# outside library -> the only daemon modules allowed to import it
ADAPTERS = {"watchdog": {"changes/watcher.py"}, "psycopg2": {"databases/postgres/connection.py"}}


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def modules():
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            yield package, path


@pytest.mark.parametrize("package,path", list(modules()), ids=lambda v: str(v).replace(str(ROOT) + "/", ""))
def test_module_respects_the_layering(package: str, path: Path) -> None:
    used = imports(path)
    bad = sorted(m for m in used for p in FORBIDDEN[package] if m == p or m.startswith(p + "."))
    assert not bad, f"{path.relative_to(ROOT)} ({package}) imports {bad}"
    for lib, allowed in ADAPTERS.items():
        if any(m == lib or m.startswith(lib + ".") for m in used):
            assert package == "cairn.daemon" and path.relative_to(ROOT / "daemon").as_posix() in allowed, \
                f"{path.relative_to(ROOT)} imports {lib}, which only {sorted(allowed)} may"


def test_the_check_sees_imports() -> None:
    """Guard against a check that passes because it reads nothing."""
    assert "watchdog.observers.inotify" in imports(ROOT / "daemon" / "changes" / "watcher.py") or \
        any(m.startswith("watchdog") for m in imports(ROOT / "daemon" / "changes" / "watcher.py"))
    assert any(m.startswith("cairn.store") for m in imports(ROOT / "daemon" / "operations" / "service.py"))
