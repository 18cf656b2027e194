"""A write-only host backs up a database: a real PostgreSQL 15 server archiving through
`cairn wal-push %p` into a real cairnd opened with a write-only key takes a full and an
incremental set of files plus database; the write-only daemon refuses restore-db; a daemon
opened with the full key restores the incremental set's database, which a server recovers."""

from __future__ import annotations

import base64
import os
import subprocess
from pathlib import Path

from cairn.store.content.crypto import Secret
from cairn.store.repository import Repository
from pgstack import Stack, make_pg_dir


class KeyedStack(Stack):
    """A Stack whose [repository] names a secret (`secret_line`)."""

    secret_line = ""

    def write_config(self) -> None:
        super().write_config()
        text = Path(self.config).read_text().replace("\n[daemon]", f"{self.secret_line}\n\n[daemon]", 1)
        Path(self.config).write_text(text)


def test_write_only_host_backs_up_a_database_and_a_full_key_restores_it(tmp_path) -> None:
    root = make_pg_dir("cairn-wodb-")
    (root / "files").mkdir()
    (root / "files" / "a.txt").write_text("a\n")
    st = KeyedStack(root, {"app": {"paths": [str(root / "files")], "database": "appdb"}})
    try:
        full_pw = root / "full.pass"
        full_pw.write_text("the full passphrase\n")
        repo = Repository.init_local(st.repo, secret=Secret.from_passphrase_file(str(full_pw)))
        wo = os.urandom(32)
        repo.add_key(Secret("keyfile", wo), write_only=True)
        repo.close()
        wo_file = root / "wo.key"
        wo_file.write_bytes(base64.b64encode(wo) + b"\n")
        os.chmod(wo_file, 0o600)
        st.secret_line = f'key_file = "{wo_file}"'
        st.write_config()
        st.start()
        assert "opened with a write-only key" in st.daemon.log()
        st.psql("CREATE TABLE t (id int PRIMARY KEY, note text)")
        st.psql("INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 2000) g")
        first = st.backup("app", "full")
        st.psql("INSERT INTO t SELECT g, 'later ' || g FROM generate_series(2001, 2500) g")
        st.wait_archived()
        second = st.backup("app", "incremental")
        assert second["level"] == "incremental" and second["base"] == first["id"]
        r = st.cli("restore-db", second["id"], "--database", "appdb", "--target", str(root / "nope"))
        assert r.returncode == 1 and "write-only" in r.stderr, r.stderr
        assert not (root / "nope").exists()
        assert st.daemon.terminate(30)[0] == 0

        st.secret_line = f'passphrase_file = "{full_pw}"'  # the same repository, a full key
        st.write_config()
        st.start_daemon()
        srv = st.restore_db(second["id"])
        assert srv.psql("SELECT count(*), max(id) FROM t") == "2500|2500"
    finally:
        st.close()
        subprocess.run(["rm", "-rf", str(root)], check=False)
