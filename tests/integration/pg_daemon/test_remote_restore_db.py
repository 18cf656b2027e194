"""restore-db from another host: a client that reaches cairnd over TCP (TLS and a token file)
gets a data directory whose restore_command runs *its own* cairn with its --address, TLS and
token file, not the daemon's socket (which does not exist on the client's host), and
PostgreSQL recovers past the set through it while the daemon's socket is out of reach. A
token given on the command line cannot go into that command: refused before anything is
written."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cairnd_harness import CAIRN, env_for
from pgstack import ArchivingServer, Stack, make_pg_dir


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def remote() -> Iterator[tuple[Stack, list[str]]]:
    root = make_pg_dir("cairn-remote-")
    (root / "files").mkdir()
    (root / "files" / "page.html").write_text("<p>portal</p>\n")
    tls = root / "tls"
    tls.mkdir(mode=0o755)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=cairn test CA", cwd=tls)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=localhost", cwd=tls)
    (tls / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.pem", "-days", "2", "-extfile", "san.ext", cwd=tls)
    (tls / "token").write_text("remote-token\n")
    for name in ("ca.pem", "token"):  # what PostgreSQL's restore_command reads, as the postgres user
        os.chmod(tls / name, 0o644)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    st = Stack(root, {"app": {"paths": [str(root / "files")], "database": "appdb"}})
    text = Path(st.config).read_text().replace(
        'socket_group = "postgres"\n',
        f'socket_group = "postgres"\nlisten = "127.0.0.1:{port}"\ntls_cert = "{tls}/server.pem"\n'
        f'tls_key = "{tls}/server.key"\ntoken_file = "{tls}/token"\n', 1)
    Path(st.config).write_text(text)
    client = [CAIRN, "--address", f"127.0.0.1:{port}", "--tls-ca", str(tls / "ca.pem")]
    try:
        yield st.start(), client
    finally:
        st.close()


def test_a_remote_restore_db_fetches_wal_through_the_clients_own_connection(remote) -> None:
    stack, client = remote
    token_file = str(Path(client[-1]).parent / "token")
    stack.psql("CREATE TABLE notes (id int PRIMARY KEY, note text)")
    stack.psql("INSERT INTO notes VALUES (1, 'in the set')")
    s = stack.backup("app")
    stack.psql("INSERT INTO notes VALUES (2, 'after the set')")
    noted = stack.psql("SELECT clock_timestamp()")
    stack.psql("INSERT INTO notes VALUES (3, 'after the target')")
    stack.psql("SELECT pg_switch_wal()")
    stack.wait_archived()

    holder = make_pg_dir("cairn-remote-rdb-")
    target = holder / "data"
    r = subprocess.run([*client, "--token", "remote-token", "restore-db", s["id"], "--database", "appdb",
                        "--target", str(target), "--target-time", noted], capture_output=True, text=True,
                       timeout=120, env=env_for())
    assert r.returncode == 2 and "--token-file" in r.stderr and not target.exists(), (r.stdout, r.stderr)

    r = subprocess.run([*client, "--token-file", token_file, "restore-db", s["id"], "--database", "appdb",
                        "--target", str(target), "--target-time", noted], capture_output=True, text=True,
                       timeout=300, env=env_for())
    assert r.returncode == 0, (r.stdout, r.stderr)
    conf = (target / "postgresql.auto.conf").read_text()
    command = next(line for line in conf.splitlines() if line.startswith("restore_command"))
    assert "--address 127.0.0.1:" in command and f"--token-file {token_file}" in command, command
    assert "--socket" not in command and stack.sock not in command, command

    away = stack.sock + ".away"  # the daemon's socket is not on the client's host
    os.rename(stack.sock, away)
    srv = ArchivingServer(pgdata=target)
    stack.restored.append(srv)
    stack.holders.append(holder)
    try:
        srv.start(timeout=120)
        srv.wait_promoted()
        assert srv.psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM notes") == "1,2"
    finally:
        os.rename(away, stack.sock)
