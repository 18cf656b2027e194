"""A dump restored on a host that was never configured for its database (disaster recovery):
`restore-db SET --database NAME --target DIR` on a read-only daemon started with nothing but
the repository writes the dump's file as stored, byte for byte, and says what to feed it to;
`--target-dsn` there still refuses, since its restore command would come from a configuration
this daemon does not have, and what the daemon says to run for it (`ls`, the refusal's hint) is the
`--target DIR` route."""

from __future__ import annotations

import json
import os

from cairnd_harness import init_repo


def test_read_only_daemon_without_configuration_writes_a_dump_as_stored(start_daemon, rundir, tmp_path):
    repo = str(tmp_path / "repo")
    init_repo(repo)
    src = tmp_path / "app"
    src.mkdir()
    (src / "page.html").write_text("<p>portal</p>\n")
    dump_source = tmp_path / "notes.sql"
    dump_source.write_bytes(b"INSERT INTO notes VALUES (1, 'first');\n" + os.urandom(200_000))
    sock = os.path.join(rundir, "a.sock")
    cfg = tmp_path / "cairnd.toml"
    cfg.write_text(f'[repository]\npath = "{repo}"\n\n[daemon]\nsocket = "{sock}"\nstate_dir = "{tmp_path}/state"\n\n'
                   f'[[source]]\nname = "app"\npaths = ["{src}"]\ndatabase = "notes"\nwatch = false\n\n'
                   f'[[database]]\nname = "notes"\nkind = "command"\ndump = ["cat", "{dump_source}"]\n'
                   'restore = ["sh", "-c", "cat > /dev/null"]\n')
    configured = start_daemon("--config", str(cfg), socket_path=sock)
    s = json.loads(configured.ok("--json", "backup", "--level", "full"))
    configured.terminate(60)

    fresh = start_daemon("--repo", repo, "--read-only")  # a fresh host: no [[database]] table
    listing = fresh.ok("ls", "latest")
    assert (f"database notes  (db:notes, a dump of kind command: cairn restore-db {s['id'][:12]} --database notes "
            "--target DIR for its files, then its own restore tool; this daemon has no restore command for it)"
            ) in listing  # not --target-dsn, which this daemon refuses (below)
    dry = fresh.ok("restore", "latest", "--target", str(tmp_path / "all"), "--databases", "--dry-run")
    assert (f"would leave database 'notes' alone: it is a dump (kind command) this daemon has no restore command "
            f"for; write its files with cairn restore-db {s['id'][:12]} --database notes --target DIR") in dry, dry
    target = tmp_path / "recovered"
    out = fresh.ok("restore-db", "latest", "--database", "notes", "--target", str(target))
    written = [os.path.join(d, f) for d, _, files in os.walk(target) for f in files]
    assert len(written) == 1, written
    with open(written[0], "rb") as f:
        assert f.read() == dump_source.read_bytes()
    assert f"is a dump (kind 'command'), written as stored: {written[0]}" in out
    assert f"feed {written[0]} to the database's restore tool" in out
    assert "--database notes --target-dsn DSN" in out

    r = fresh.cli("restore-db", s["id"], "--database", "notes", "--target-dsn", "notes_restored")
    assert r.returncode == 1 and "is not configured here" in r.stderr
    assert f"hint: write its files with cairn restore-db {s['id'][:12]} --database notes --target DIR" in r.stderr
    r = fresh.cli("restore-db", s["id"], "--database", "nosuch", "--target", str(tmp_path / "none"))
    assert r.returncode == 3 and "holds no database 'nosuch'" in r.stderr
