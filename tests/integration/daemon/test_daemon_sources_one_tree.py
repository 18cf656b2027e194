"""Two watched sources over one directory (a cold nightly source and a hot hourly one of one tree,
a use the configuration allows), against the real daemon and real inotify: each source's
incremental sets hold what was written since its own last set, and a source removed by a reload
leaves the other one's watch working."""

from __future__ import annotations

import json
import os
import signal

from cairnd_harness import wait_until, write_config


def _config(path: str, repo: str, sock: str, src: str, names: tuple[str, ...]) -> str:
    write_config(path, repo, sock, {})
    with open(path, "a", encoding="utf-8") as f:
        for name in names:
            f.write(f'\n[[source]]\nname = "{name}"\npaths = ["{src}"]\nwatch = true\n')
    return path


def test_each_source_over_one_tree_sees_every_change(start_daemon, rundir, tmp_path) -> None:
    src = tmp_path / "tree"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("a1\n")
    sock = os.path.join(rundir, "t.sock")
    cfg = _config(str(tmp_path / "c.toml"), str(tmp_path / "repo"), sock, str(src), ("nightly", "hourly"))
    d = start_daemon("--config", cfg, socket_path=sock)

    def backup(source: str, level: str) -> dict:
        return json.loads(d.ok("--json", "backup", "--source", source, "--level", level))

    def restored(set_id: str, name: str) -> dict[str, str]:
        target = tmp_path / name
        d.ok("restore", set_id, "--target", str(target))
        return {str(p.relative_to(target)): p.read_text() for p in target.rglob("*") if p.is_file()}

    for name in ("nightly", "hourly"):
        backup(name, "full")
    (src / "a.txt").write_text("a2\n")
    (src / "sub" / "b.txt").write_text("b\n")
    want = {"a.txt": "a2\n", "sub/b.txt": "b\n"}
    for name in ("hourly", "nightly"):
        s = backup(name, "incremental")
        assert s["extra"].get("changes") == "journal", s["extra"]
        assert restored(s["id"], f"{name}-1") == want, name

    # the other source goes (reload): the remaining one still sees what is written
    _config(cfg, str(tmp_path / "repo"), sock, str(src), ("hourly",))
    d.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: [x["name"] for x in json.loads(d.ok("--json", "status"))["sources"] if x["configured"]]
          == ["hourly"], 30, "the reload to drop source 'nightly'")
    (src / "sub" / "c.txt").write_text("c\n")
    s = backup("hourly", "incremental")
    assert restored(s["id"], "hourly-2") == {**want, "sub/c.txt": "c\n"}, s["extra"]
