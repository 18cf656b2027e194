"""Retention through the real daemon and client: policies per host and source, --dry-run reasons,
prune without a policy, the HOST column and `sets --host`."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from datetime import datetime, timedelta

from cairnd_harness import write_config


def _daemon_for_host(start_daemon, rundir_path: str, repo: str, src: str, host: str):
    sock = os.path.join(rundir_path, f"{host}.sock")
    cfg = write_config(os.path.join(rundir_path, f"{host}.toml"), repo, sock, {"app": src}, host=host)
    return start_daemon("--config", cfg, socket_path=sock)


def _backup(d, *args: str) -> str:
    return d.ok("backup", *args).strip().splitlines()[-1]


def test_prune_policies_per_host_with_reasons(start_daemon, rundir, tmp_path):
    repo, src = str(tmp_path / "repo"), tmp_path / "src"
    src.mkdir()
    ids: dict[str, list[str]] = {"alpha": [], "beta": []}
    for host in ("alpha", "beta"):
        d = _daemon_for_host(start_daemon, rundir, repo, str(src), host)
        for i in range(3):
            for old in src.iterdir():  # each set holds only its own file: forgetting it frees data
                old.unlink()
            (src / f"{host}-{i}").write_bytes(os.urandom(100_000))
            tag = ("--tag", "keepme") if (host, i) == ("alpha", 0) else ()
            ids[host].append(_backup(d, "--level", "full", *tag))
        code, _ = d.terminate(30)
        assert code == 0

    d = _daemon_for_host(start_daemon, rundir, repo, str(src), "alpha")
    rows = d.ok("sets").splitlines()
    assert rows[0].split()[:7] == ["ID", "TIME", "END", "SOURCE", "LEVEL", "BASE", "HOST"]
    assert sum(" alpha " in r for r in rows[1:]) == 3 and sum(" beta " in r for r in rows[1:]) == 3
    only_beta = json.loads(d.ok("--json", "sets", "--host", "beta"))
    assert [s["id"] for s in only_beta] == ids["beta"] and {s["hostname"] for s in only_beta} == {"beta"}
    nobody = d.cli("sets", "--host", "nobody")  # a host the repository does not know: an error, not "no sets"
    assert nobody.returncode == 3 and "unknown host 'nobody'" in nobody.stderr, nobody.stderr
    assert "known hosts: alpha (this daemon's), beta" in nobody.stderr, nobody.stderr

    # no policy: nothing is forgotten
    assert json.loads(d.ok("--json", "prune"))["forgotten"] == []

    # keep-last 1 applies to each host apart; the tag keeps alpha's oldest set
    text = d.ok("prune", "--dry-run", "--keep-last", "1", "--keep-tag", "keepme")
    assert f"keep {ids['alpha'][2]}  alpha/app full" in text and "last 1 of 1" in text
    assert f"keep {ids['alpha'][0]}  alpha/app full" in text and "tag 'keepme'" in text
    assert f"keep {ids['beta'][2]}  beta/app full" in text
    for gone in (ids["alpha"][1], ids["beta"][0], ids["beta"][1]):
        assert f"would forget {gone}  " in text and "matched no rule" in text
    assert len(json.loads(d.ok("--json", "sets"))) == 6

    # only beta's sets, within one day of its newest: every beta set stays
    within = json.loads(d.ok("--json", "prune", "--host", "beta", "--keep-within", "1d"))
    assert within["forgotten"] == [] and {x["host"] for x in within["decisions"]} == {"beta"}
    assert all(x["reasons"] == ["within 1d of the newest set"] for x in within["decisions"])

    done = json.loads(d.ok("--json", "prune", "--keep-last", "1", "--keep-tag", "keepme"))
    assert sorted(done["forgotten"]) == sorted([ids["alpha"][1], ids["beta"][0], ids["beta"][1]])
    assert done["bytes_freed"] >= 3 * 90_000
    left = {s["id"] for s in json.loads(d.ok("--json", "sets"))}
    assert left == {ids["alpha"][0], ids["alpha"][2], ids["beta"][2]}
    assert "repository ok: 3 sets" in d.ok("verify", "--read-data")

    bad = d.cli("prune", "--keep-within", "3 fortnights")
    assert bad.returncode == 2 and bad.stderr.startswith("cairn: error: invalid --keep-within '3 fortnights'")
    assert len(bad.stderr.strip().splitlines()) <= 2
    # a policy whose every rule is 0 would forget every set (restic reads it as no policy): refused
    zero = d.cli("prune", "--keep-last", "0", "--keep-daily", "0")
    assert zero.returncode == 2 and "every --keep rule given is 0" in zero.stderr, zero.stderr
    # a mistyped host is an error, not a retention that silently matches nothing
    nohost = d.cli("prune", "--dry-run", "--host", "bta", "--keep-last", "1")
    assert nohost.returncode == 3 and "unknown host 'bta'" in nohost.stderr, nohost.stderr
    assert len(json.loads(d.ok("--json", "sets"))) == 3
    levels = d.cli("prune", "--dry-run", "--keep-full", "0", "--keep-differential", "0", "--keep-incremental", "0")
    assert levels.returncode == 2 and "every --keep rule given is 0" in levels.stderr, levels.stderr
    # a tag no set carries, as the only rule: it would forget every set of the group (a typo), refused
    for dry in ((), ("--dry-run",)):
        typo = d.cli("prune", *dry, "--keep-tag", "kepme")
        assert typo.returncode == 2, typo.stderr
        assert typo.stderr.startswith("cairn: error: tag 'kepme', the policy's only rule there, is not on any of the 2 "
                                      "sets of source 'app' on host 'alpha' (nor in 1 more group): it would forget "
                                      "them all"), typo.stderr
        assert len(typo.stderr.strip().splitlines()) == 2 and "hint: check the tag" in typo.stderr, typo.stderr
    # beta's group has no 'keepme' set, alpha's has: beta's is named; with a count beside it, it is taken
    only = d.cli("prune", "--dry-run", "--host", "beta", "--keep-tag", "keepme")
    assert only.returncode == 2 and "is not on the set of source 'app' on host 'beta':" in only.stderr, only.stderr
    assert d.cli("prune", "--dry-run", "--keep-tag", "keepme", "--keep-last", "1").returncode == 0
    assert len(json.loads(d.ok("--json", "sets"))) == 3


def _config(path: str, repo: str, sock: str, src: str, host: str, extra_repo: str = "", keep: str = "") -> str:
    lines = ["[repository]", f'path = "{repo}"', extra_repo, "", "[daemon]", f'socket = "{sock}"',
             f'state_dir = "{os.path.join(os.path.dirname(sock), host + "-state")}"', f'host = "{host}"', "",
             "[[source]]", 'name = "app"', f'paths = ["{src}"]', "watch = false", keep]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


def _next_local(hour: int, now: float) -> float:
    """The next local hour:00 after `now`."""
    t = datetime.fromtimestamp(now).replace(minute=0, second=0, microsecond=0, hour=hour)
    while t.timestamp() <= now:
        t += timedelta(days=1)
    return t.timestamp()


def _wait(predicate, deadline: float, what: str):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _packs(repo: str) -> int:
    return sum(len(files) for _, _, files in os.walk(os.path.join(repo, "packs")))


def test_scheduled_retention_forgets_this_hosts_sets_and_frees(start_daemon, rundir, tmp_path, monkeypatch):
    repo, src = str(tmp_path / "repo"), tmp_path / "src"
    src.mkdir()
    clock = tmp_path / "clock-offset"
    clock.write_text("0")
    monkeypatch.setenv("CAIRN_TEST_CLOCK", str(clock))
    launcher = (sys.executable, os.path.join(os.path.dirname(__file__), "clocked_cairnd.py"))

    # another host's sets of the same source name: scheduled retention never touches them
    beta = _daemon_for_host(start_daemon, rundir, repo, str(src), "beta")
    beta_ids = []
    for i in range(2):
        (src / f"beta-{i}").write_bytes(os.urandom(50_000))
        beta_ids.append(_backup(beta, "--level", "full"))
    assert beta.terminate(30)[0] == 0

    sock = os.path.join(rundir, "gc.sock")
    cfg = _config(os.path.join(rundir, "gc.toml"), repo, sock, str(src), "alpha", 'gc = "0 4 * * *"',
                  "keep = { last = 1 }")
    d = start_daemon("--config", cfg, socket_path=sock, prefix=launcher)
    alpha = []
    for i in range(3):
        for old in src.iterdir():
            old.unlink()
        (src / f"alpha-{i}").write_bytes(os.urandom(200_000))
        alpha.append(_backup(d, "--level", "full"))
    status = json.loads(d.ok("--json", "status"))["retention"]
    assert status["schedule"] == "0 4 * * *" and status["host"] == "alpha" and status["last_run"] is None
    assert status["next_run"] == _next_local(4, time.time())
    assert "retention + gc: \"0 4 * * *\" for host alpha, next " in d.ok("status")
    packs_before = _packs(repo)

    # move the daemon's clock to two seconds before 04:00 and let it notice (SIGHUP re-plans)
    clock.write_text(str(_next_local(4, time.time()) - 2 - time.time()))
    d.proc.send_signal(signal.SIGHUP)
    ran = _wait(lambda: json.loads(d.ok("--json", "status"))["retention"]["last_run"], 40, "the scheduled run")
    assert ran
    result = json.loads(d.ok("--json", "status"))["retention"]["last_result"]
    assert result.startswith("forgot 2 sets, kept 1"), result
    left = [s["id"] for s in json.loads(d.ok("--json", "sets"))]
    assert sorted(left) == sorted(beta_ids + [alpha[2]])
    assert _packs(repo) < packs_before  # the forgotten sets' data is freed
    assert "repository ok: 3 sets" in d.ok("verify", "--read-data")
    assert "last run " in d.ok("status")


def test_sets_record_the_machines_host_name_by_default(start_daemon, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    d = start_daemon("--repo", str(tmp_path / "repo"), "--source", str(src))
    s = json.loads(d.ok("--json", "backup", "--level", "full"))
    assert s["hostname"] == socket.gethostname()
    assert f" {socket.gethostname()} " in d.ok("sets").splitlines()[1]


def test_wal_retention_through_the_client(start_daemon, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    d = start_daemon("--repo", str(tmp_path / "repo"), "--source", str(src))
    names = ["000000010000000000000001", "000000010000000000000002"]
    for name in names:
        (tmp_path / name).write_bytes(os.urandom(200_000))
        d.ok("wal-push", str(tmp_path / name))
    # no window given and none configured: WAL is never forgotten
    assert json.loads(d.ok("--json", "prune"))["wal_forgotten"] == []
    # archived just now: inside a one-hour window
    assert json.loads(d.ok("--json", "prune", "--wal-keep", "1h"))["wal_forgotten"] == []
    dry = d.ok("prune", "--dry-run", "--wal-keep", "0s")
    assert f"would forget WAL {names[0]}: before the oldest kept set" in dry
    done = json.loads(d.ok("--json", "prune", "--wal-keep", "0s"))
    assert done["wal_forgotten"] == names and done["bytes_freed"] >= 2 * 190_000
    r = d.cli("wal-fetch", names[0], str(tmp_path / "fetched"))
    assert r.returncode == 3
    bad = d.cli("prune", "--wal-keep", "forever")
    assert bad.returncode == 2 and "invalid --wal-keep 'forever'" in bad.stderr


def test_prune_counts_out_of_range_are_usage_errors(tmp_path):
    import subprocess

    from cairnd_harness import CAIRN, env_for

    for value in ("-1", "4294967296", "many"):
        r = subprocess.run([CAIRN, "--socket", str(tmp_path / "none.sock"), "prune", "--keep-daily", value],
                           capture_output=True, text=True, env=env_for(), timeout=30)
        assert r.returncode == 2 and r.stderr.startswith("cairn: error: argument --keep-daily"), r.stderr
