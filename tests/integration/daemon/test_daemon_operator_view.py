"""What the operator sees, through the real daemon and client: a failed set in `cairn status`
(text and --json) beside the last success and the RPO, kept across a restart; metrics that a
restart does not reset; `cairn sets` with end time, host, tags and pruned bases; errors as
JSON objects under --json."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
import urllib.request

from cairnd_harness import init_repo
from prometheus_client.parser import text_string_to_metric_families


def write_config(path: str, repo: str, sock: str, src: str, **extra: str) -> str:
    lines = ["[repository]", f'path = "{repo}"', "[daemon]", f'socket = "{sock}"',
             f'state_dir = "{os.path.join(os.path.dirname(path), "state")}"', 'metrics = "127.0.0.1:0"',
             "[[source]]", 'name = "app"', f'paths = ["{src}"]', *(f"{k} = {v}" for k, v in extra.items())]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    init_repo(repo)
    return path


def metrics_text(daemon) -> str:
    match = re.search(r"metrics on (http://[0-9.]+:\d+/metrics)", daemon.log())
    assert match, daemon.log()
    with urllib.request.urlopen(match.group(1), timeout=10) as reply:
        return reply.read().decode()


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample of the Prometheus text `text`, None when absent."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return None


def wait_for(predicate, timeout: float = 20.0, what: str = "condition"):
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)


def app_status(daemon) -> dict:
    return [s for s in json.loads(daemon.ok("--json", "status"))["sources"] if s["name"] == "app"][0]


def test_failure_beside_success_and_rpo_survive_a_restart(start_daemon, tmp_path, rundir):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a\n")
    sock = os.path.join(rundir, "op.sock")
    config = write_config(str(tmp_path / "c.toml"), str(tmp_path / "repo"), sock, str(src), rpo='"1h"')
    d = start_daemon("--config", config, socket_path=sock)
    before = app_status(d)
    assert before["last_failure"] is None and before["last_success"] is None and before["failing"] is False
    assert before["rpo"] == 3600 and before["rpo_exceeded"] is True
    assert "last success: none; RPO 1h EXCEEDED" in d.ok("status")

    full_id = d.ok("backup", "--level", "full").split()[-1]
    full = json.loads(d.ok("--json", "sets"))[0]
    # The source disappears (an unmounted disk): the next set fails.
    shutil.move(str(src), str(tmp_path / "away"))
    r = d.cli("backup", "--level", "incremental")
    assert r.returncode != 0 and str(src) in r.stderr
    st = wait_for(lambda: (s := app_status(d))["last_failure"] and s, what="the failure in status")
    failure = st["last_failure"]
    assert failure["level"] == "incremental" and failure["status"] == "failed"
    assert str(src) in failure["message"] and failure["time"] >= full["time_end"]
    assert st["last_success"] == full["time_end"] and st["rpo_exceeded"] is False and st["failing"] is True
    text = d.ok("status")
    assert "within RPO 1h" in text
    line = [x for x in text.splitlines() if x.startswith("  last failure:")][0]
    assert " ago, after the last success), incremental failed: " in line and str(src) in line
    last = "cairn_last_success_timestamp_seconds"
    failed = "cairn_last_failure_timestamp_seconds"  # newer than the last success: CairnSetFailed fires
    assert sample(metrics_text(d), last, source="app", level="full") == full["time_end"]
    failed_at = sample(metrics_text(d), failed, source="app", level="incremental")
    assert failed_at is not None and abs(failed_at - failure["time"]) < 5 and failed_at > full["time_end"]

    # Restarted: the failure is still shown, and the metrics name the last success again.
    code, _ = d.terminate(30)
    assert code == 0
    shutil.move(str(tmp_path / "away"), str(src))
    d2 = start_daemon("--config", config, socket_path=sock)
    st2 = app_status(d2)
    assert st2["last_failure"] == failure and st2["last_success"] == full["time_end"]
    assert sample(metrics_text(d2), last, source="app", level="full") == full["time_end"]
    assert sample(metrics_text(d2), last, source="app", level="incremental") is None  # it failed
    assert sample(metrics_text(d2), failed, source="app", level="incremental") == failure["time"]

    # A later success is shown as the newer event; the failure stays for reference.
    d2.ok("backup", "--level", "incremental", "--tag", "after-fix")
    st3 = app_status(d2)
    assert st3["last_success"] > failure["time"] and st3["failing"] is False
    # the alert clears: the last success is newer than the last failure
    text = metrics_text(d2)
    assert sample(text, last, source="app", level="incremental") > sample(text, failed, source="app",
                                                                          level="incremental")
    assert "after the last success" not in d2.ok("status")
    assert full_id


def test_a_window_that_did_not_thaw_is_a_metric_until_a_set_thaws_again_also_across_a_restart(
        start_daemon, tmp_path, rundir):
    """A thaw hook that fails leaves the application stopped while its set commits (a success):
    the thaw failure has its own gauge, newer than the last success (CairnThawFailed fires), kept
    by a restart, and older than the next set whose window thawed (the alert clears)."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a\n")
    sock = os.path.join(rundir, "thaw.sock")
    flag = tmp_path / "app-down"
    thaw = json.dumps(["sh", "-c", f"test ! -e {flag} || {{ echo cannot start the app >&2; exit 4; }}"])
    config = write_config(str(tmp_path / "c.toml"), str(tmp_path / "repo"), sock, str(src),
                          quiesce=f'{{ mode = "cold", freeze = ["true"], thaw = {thaw}, timeout = "60s" }}')
    d = start_daemon("--config", config, socket_path=sock)
    thawed, last = "cairn_last_thaw_failure_timestamp_seconds", "cairn_last_success_timestamp_seconds"
    d.ok("backup", "--level", "full")
    assert sample(metrics_text(d), thawed, source="app") is None  # thawed: nothing to alert on
    flag.write_text("")
    r = d.cli("backup", "--level", "incremental")
    assert r.returncode == 0 and "cannot start the app" in r.stderr, r.stderr  # committed, warned
    text = metrics_text(d)
    failed_at = sample(text, thawed, source="app")
    assert failed_at is not None and failed_at >= sample(text, last, source="app", level="incremental")
    code, _ = d.terminate(30)
    assert code == 0
    d2 = start_daemon("--config", config, socket_path=sock)
    text = metrics_text(d2)
    assert sample(text, thawed, source="app") == app_status(d2)["last_failure"]["time"]
    assert abs(sample(text, thawed, source="app") - failed_at) < 5
    assert sample(text, thawed, source="app") >= sample(text, last, source="app", level="incremental")
    flag.unlink()  # the application starts again: the next set's window thaws
    d2.ok("backup", "--level", "incremental")
    text = metrics_text(d2)
    assert sample(text, last, source="app", level="incremental") > sample(text, thawed, source="app")


def test_sets_show_end_host_tags_and_pruned_bases(start_daemon, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a\n")
    d = start_daemon("--repo", str(tmp_path / "repo"), "--source", str(src))
    first = d.ok("backup", "--level", "full").split()[-1]
    (src / "b.txt").write_text("b\n")
    inc = d.ok("backup", "--level", "incremental", "--tag", "nightly", "--tag", "v2").split()[-1]
    rows = d.ok("sets").splitlines()
    header = rows[0].split()
    assert header == ["ID", "TIME", "END", "SOURCE", "LEVEL", "BASE", "HOST", "FILES", "SIZE", "CHANGED", "ADDED",
                      "STATUS", "DATABASES", "TAGS"]
    last = rows[2].split()
    assert last[0] == inc[:12] and last[6] == first[:12] and last[7] == socket.gethostname()
    assert last[-1] == "nightly,v2" and re.fullmatch(r"\d\d:\d\d:\d\d", last[3])
    sets = json.loads(d.ok("--json", "sets"))
    assert [s["base_pruned"] for s in sets] == [False, False]
    nohost = d.cli("--json", "sets", "--host", "no-such-host")
    assert nohost.returncode == 3 and nohost.stdout == "", nohost.stdout
    assert json.loads(nohost.stderr)["error"]["message"].startswith("unknown host 'no-such-host'")
    # Forget the full set the incremental was taken against: its base shows as pruned.
    d.ok("prune", "--keep-full", "0", "--keep-incremental", "1")
    left = json.loads(d.ok("--json", "sets"))
    assert [s["id"] for s in left] == [inc] and left[0]["base_pruned"] is True
    assert f"{first[:12]} (pruned)" in d.ok("sets")


def test_json_errors_are_json_objects(start_daemon, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    d = start_daemon("--repo", str(tmp_path / "repo"), "--source", str(src))
    r = d.cli("--json", "ls", "nosuchset")
    assert r.returncode == 3 and r.stdout == ""
    error = json.loads(r.stderr)["error"]
    assert "nosuchset" in error["message"] and error["exit_status"] == 3
    r = d.cli("sets", "--json", "--bogus")
    assert r.returncode == 2 and json.loads(r.stderr)["error"]["exit_status"] == 2
    r = d.cli("ls", "nosuchset")
    assert r.returncode == 3 and r.stderr.startswith("cairn: error: ")


def test_wal_fetch_is_quiet_for_a_missing_timeline_history(start_daemon, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    d = start_daemon("--repo", str(tmp_path / "repo"), "--source", str(src))
    r = d.cli("wal-fetch", "00000002.history", str(tmp_path / "h"))
    assert r.returncode == 3 and r.stderr == "" and not (tmp_path / "h").exists()
    # A missing segment is still an error PostgreSQL's log shows.
    r = d.cli("wal-fetch", "000000010000000000000009", str(tmp_path / "s"))
    assert r.returncode == 3 and r.stderr.startswith("cairn: error: ")


def test_rpo_is_measured_against_what_waits_in_status_and_metrics(start_daemon, tmp_path, rundir):
    """A quiet source whose last set is older than its RPO is within it (nothing to lose); a change
    that waits past the RPO because its sets fail is reported in status, --json and the metrics,
    and clears once a set holds it."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a\n")
    flag = tmp_path / "refuse"  # while it exists, the freeze hook fails and so does every set
    sock = os.path.join(rundir, "rpo.sock")
    config = write_config(str(tmp_path / "c.toml"), str(tmp_path / "repo"), sock, str(src), rpo='"2s"',
                          quiesce=f'{{ mode = "cold", freeze = ["sh", "-c", "test ! -e {flag}"], thaw = ["true"] }}')
    d = start_daemon("--config", config, socket_path=sock)
    since = "cairn_source_unprotected_since_timestamp_seconds"
    d.ok("backup", "--level", "full")
    # quiet, and its last set older than the RPO
    st = wait_for(lambda: (s := app_status(d))["pending_paths"] == 0 and s["last_success_age"] > 2.5 and s,
                  what="a quiet source past its RPO since the last set")
    assert st["rpo_exceeded"] is False and st["unprotected_since"] is None, st
    assert "within RPO 2s" in d.ok("status")
    assert sample(metrics_text(d), since, source="app") is None

    flag.write_text("")
    (src / "a.txt").write_text("changed\n")
    st = wait_for(lambda: (s := app_status(d))["rpo_exceeded"] and s["last_failure"] and s,
                  what="the change waiting past the RPO")
    assert st["unprotected_since"] is not None and time.time() - st["unprotected_since"] > 2, st
    assert "; RPO 2s EXCEEDED: a change no set holds has waited " in d.ok("status")
    assert sample(metrics_text(d), since, source="app") == st["unprotected_since"]

    flag.unlink()  # the RPO keeper tries again, the set holds the change: healthy again
    st = wait_for(lambda: (s := app_status(d))["rpo_exceeded"] is False and s, what="the RPO met again")
    assert st["unprotected_since"] is None and st["last_success"] > st["last_failure"]["time"], st
    assert "within RPO 2s" in d.ok("status")
    assert sample(metrics_text(d), since, source="app") is None
