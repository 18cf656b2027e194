"""Retention through the real daemon and client: policies per host and source, --dry-run reasons,
prune without a policy, the HOST column and `sets --host`."""

from __future__ import annotations

import json
import os

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
    assert rows[0].split()[:5] == ["ID", "TIME", "HOST", "SOURCE", "LEVEL"]
    assert sum(" alpha " in r for r in rows[1:]) == 3 and sum(" beta " in r for r in rows[1:]) == 3
    only_beta = json.loads(d.ok("--json", "sets", "--host", "beta"))
    assert [s["id"] for s in only_beta] == ids["beta"] and {s["hostname"] for s in only_beta} == {"beta"}
    assert d.ok("sets", "--host", "nobody").strip() == "no sets"

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
