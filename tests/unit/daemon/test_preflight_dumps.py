"""The start-up database check connects only to base-backup (kind postgres) databases: a dump's
DSN is not a cluster cairnd reads files of, and must not be judged by its data directory."""

from __future__ import annotations

from types import SimpleNamespace

from cairn.daemon.runtime import preflight


def test_dumps_are_not_checked_like_base_backups(monkeypatch) -> None:
    asked: list[str] = []
    monkeypatch.setattr(preflight, "database_problem", lambda db: asked.append(db.name) or f"{db.name}: down")
    config = SimpleNamespace(
        daemon=SimpleNamespace(read_only=False),
        sources=[SimpleNamespace(database="pg"), SimpleNamespace(database="dumped"), SimpleNamespace(database="cmd")],
        databases=[SimpleNamespace(name="pg", kind="postgres"), SimpleNamespace(name="dumped", kind="pg_dump"),
                   SimpleNamespace(name="cmd", kind="command")])
    assert preflight.warn_unreachable_databases(config) == ["pg: down"]
    assert asked == ["pg"]
