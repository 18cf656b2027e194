"""`--host H` naming a host the repository does not know, through the real daemon and client.

A misspelt host used to list "no sets" (exit 0), prune and unlock nothing, and check the whole
repository: in the disaster-recovery runbook the mistake surfaced one step later. Every command
that takes --host now stops with one line, "unknown host 'H'", exit 3, naming the hosts the
repository knows (ten, then how many more), also in --json mode. Known: this daemon's own host,
every host with a set in the repository, every host holding a lock (a host that is gone still
holds one until it is unlocked); a host whose sets were all forgotten is known no more. A known
host with no set that matches the other filters still lists none, exit 0.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import time

from cairn.store.model import BackupRequest
from cairn.store.repository import Repository

OWN = socket.gethostname()


def _lock(repo: str, host: str) -> None:
    """A lock object as a host running a backup writes it (its process elsewhere, refreshed now)."""
    name = host.encode().hex().ljust(32, "0")[:32]
    with open(os.path.join(repo, "locks", name), "w", encoding="utf-8") as f:
        json.dump({"host": host, "daemon_host": host, "pid": 4242, "pid_space": "elsewhere", "exclusive": False,
                   "purpose": "backup of source 'app'", "time": time.time()}, f)


def _shown(hosts: list[str]) -> str:
    return ", ".join(f"{h} (this daemon's)" if h == OWN else h for h in sorted(hosts))


def _unknown(d, *args: str, known: str) -> None:
    """`cairn ARGS` fails with exit 3 and one line naming the known hosts (plus its hint)."""
    host = args[args.index("--host") + 1]
    r = d.cli(*args)
    assert r.returncode == 3, f"cairn {' '.join(args)} -> {r.returncode}\n{r.stdout}\n{r.stderr}"
    lines = r.stderr.strip().splitlines()
    assert lines[0] == (f"cairn: error: unknown host '{host}': the repository holds no set or lock of it; known hosts: "
                        f"{known}"), r.stderr
    assert len(lines) == 2 and lines[1].startswith("hint: a host is known while a set it took is in the repository")
    assert "Traceback" not in r.stderr and r.stdout == "", r.stdout


def test_a_misspelt_host_is_an_error_naming_the_known_hosts(start_daemon, tmp_path):
    src, repo = tmp_path / "src", str(tmp_path / "repo")
    src.mkdir()
    (src / "a.txt").write_text("a\n")
    d = start_daemon("--repo", repo, "--source", str(src))
    mine = d.ok("backup", "--level", "full").split()[-1]
    other = tmp_path / "beta-files"
    other.mkdir()
    (other / "b.txt").write_text("b\n")
    r = Repository.open_local(repo)
    try:  # another host's set of another source, stored as that host's daemon would
        beta = r.backup(BackupRequest(source="docs", paths=(str(other),), hostname="beta")).id
    finally:
        r.close()
    known = _shown(["beta", OWN])

    _unknown(d, "sets", "--host", "bta", known=known)
    target = tmp_path / "restored"
    for args in (("ls", "latest", "--host", "bta"), ("ls", mine, "--host", "bta"),
                 ("diff", "latest", "latest", "--host", "bta"),
                 ("restore", "latest", "--host", "bta", "--target", str(target)),
                 ("restore-db", "latest", "--database", "db", "--host", "bta", "--target", str(target)),
                 ("verify", "--host", "bta"), ("verify", "--set", beta, "--host", "bta"),
                 ("prune", "--host", "bta", "--keep-last", "1"), ("prune", "--dry-run", "--host", "bta"),
                 ("unlock", "--host", "bta")):
        _unknown(d, *args, known=known)
    assert not target.exists()
    key = tmp_path / "copy.key"
    key.write_bytes(base64.b64encode(os.urandom(32)) + b"\n")
    _unknown(d, "copy", "--to", str(tmp_path / "copy"), "--to-key-file", str(key), "--host", "bta", known=known)
    assert not (tmp_path / "copy").exists()
    assert {s["id"] for s in json.loads(d.ok("--json", "sets"))} == {mine, beta}  # nothing pruned

    # --json: the error as a JSON object on stderr, nothing on stdout
    r = d.cli("--json", "sets", "--host", "bta")
    assert r.returncode == 3 and r.stdout == "", r.stdout
    error = json.loads(r.stderr)["error"]
    assert error["exit_status"] == 3 and error["message"].startswith("unknown host 'bta': ") and "beta" in \
        error["message"], error

    # a known host with no set matching the other filters: none listed, exit 0, as before
    assert d.ok("sets", "--host", "beta", "--source", "src").strip() == "no sets"
    assert json.loads(d.ok("--json", "sets", "--host", "beta", "--source", "src")) == []
    assert [s["id"] for s in json.loads(d.ok("--json", "sets", "--host", "beta"))] == [beta]
    assert [s["id"] for s in json.loads(d.ok("--json", "sets", "--host", OWN))] == [mine]

    # a host known only by the lock it holds (its first backup running, or a host that is gone)
    _lock(repo, "gamma")
    assert d.ok("sets", "--host", "gamma").strip() == "no sets"
    gone = json.loads(d.ok("--json", "unlock", "--host", "gamma"))
    assert [x["host"] for x in gone["removed"]] == ["gamma"]

    # every set of beta forgotten: beta is known no more
    d.ok("prune", "--forget", beta)
    _unknown(d, "sets", "--host", "beta", known=_shown([OWN]))

    # many hosts: ten are named, the rest counted
    hosts = [f"h{i:02d}" for i in range(12)]
    for h in hosts:
        _lock(repo, h)
    _unknown(d, "sets", "--host", "bta", known=f"{_shown(sorted([*hosts, OWN])[:10])} and 3 more")
