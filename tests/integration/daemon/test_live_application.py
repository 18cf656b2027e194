"""A live application backed up by the real daemon (liveapp.py): a content-repository-like
writer process keeps writing its data tree while cairnd takes full, incremental and
differential sets of it, hot (no window) and cold (freeze and thaw hooks that pause the writer).

What each set promises, checked on its restore: a cold set is the tree exactly as the freeze
hook recorded it, and `cairn diff` between two cold sets names exactly what changed between
the two freezes; in a hot set every file the set does not flag fuzzy is a state the file really
had (each carries its own checksum), and every file it flags fuzzy was written while it ran.

The writer's operations are drawn from a fixed seed per test (each run takes 10 to 30 s);
CAIRN_LIVEAPP_SEED=<n> runs them with another.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest
from cairnd_harness import Daemon, init_repo
from liveapp import differences, tree_state, valid_content, valid_db, valid_index, valid_log, valid_part

LIVEAPP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "liveapp.py")


def seed(default: int) -> int:
    """The writer's seed: CAIRN_LIVEAPP_SEED replays (or explores) another run of it."""
    return int(os.environ.get("CAIRN_LIVEAPP_SEED", default))


class App:
    """The writer process of one source."""

    def __init__(self, root: str, control: str, seed: int, skip: tuple[str, ...] = ()) -> None:
        self.root, self.control = root, control
        os.makedirs(root, exist_ok=True)
        os.makedirs(control, exist_ok=True)
        self.proc = subprocess.Popen([sys.executable, LIVEAPP, "run", root, control, str(seed), *skip],
                                     stdout=subprocess.PIPE)
        wait_until(lambda: os.path.exists(os.path.join(control, "pid")), 20, "the writer to start")

    def hook(self, phase: str) -> list[str]:
        return [sys.executable, LIVEAPP, phase, self.control]

    def pause(self) -> None:
        subprocess.run(self.hook("freeze"), check=True, timeout=30)

    def resume(self) -> None:
        subprocess.run(self.hook("thaw"), check=True, timeout=30)

    def frozen(self) -> list[tuple[float, str | None, dict]]:
        names = sorted((f for f in os.listdir(self.control) if f.startswith("frozen-")),
                       key=lambda f: int(f[7:].split(".")[0]))
        out = []
        for name in names:
            with open(os.path.join(self.control, name), "rb") as f:
                out.append(pickle.load(f))
        return out

    def moved_on(self, ops: int = 30) -> None:
        """Wait until the writer did `ops` more operations."""
        n = len(self.writes())
        wait_until(lambda: len(self.writes()) >= n + ops, 30, f"{ops} more operations of the writer")

    def writes(self) -> list[tuple[float, str, str]]:
        """The oplog: (time, operation, path)."""
        out = []
        with open(os.path.join(self.control, "oplog"), encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                t, op, path = line.rstrip("\n").split(" ", 2)
                out.append((float(t), op, eval(path)))  # noqa: S307 - repr() of a str the writer wrote
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGUSR2)
            self.proc.send_signal(signal.SIGTERM)
            self.proc.communicate(timeout=30)


def wait_until(pred: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while not (value := pred()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


@pytest.fixture
def apps(rundir: str) -> Iterator[Callable[..., App]]:
    started: list[App] = []

    def start(name: str, seed: int, skip: tuple[str, ...] = ()) -> App:
        app = App(os.path.join(rundir, name), os.path.join(rundir, "control-" + name), seed, skip)
        started.append(app)
        return app

    yield start
    for app in started:
        if app.proc.poll() is None:
            app.proc.kill()
            app.proc.wait(10)


def config(rundir: str, sources: dict[str, str], **source_keys: str) -> str:
    path = os.path.join(rundir, "cairn.toml")
    lines = ["[repository]", f'path = "{os.path.join(rundir, "repo")}"', "", "[daemon]",
             f'socket = "{os.path.join(rundir, "s.sock")}"', f'state_dir = "{os.path.join(rundir, "state")}"']
    for name, root in sources.items():
        lines += ["", "[[source]]", f'name = "{name}"', f'paths = ["{root}"]']
        lines += [f"{k} = {v.replace('{control}', os.path.join(rundir, 'control-' + name))}"
                  for k, v in source_keys.items()]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    init_repo(os.path.join(rundir, "repo"))
    return path


def cold_window(control_key: str = "{control}") -> str:
    hook = f'"{sys.executable}", "{LIVEAPP}"'
    return (f'{{ mode = "cold", freeze = [{hook}, "freeze", "{control_key}"], '
            f'thaw = [{hook}, "thaw", "{control_key}"], timeout = "30s" }}')


def backup(d: Daemon, level: str, source: str | None = None) -> dict:
    args = ["--json", "backup", "--level", level] + (["--source", source] if source else [])
    return json.loads(d.ok(*args, timeout=120))


def restored(d: Daemon, rundir: str, set_id: str, *how: str) -> str:
    """Restore a set into a new directory: written by the daemon, or by the client (--stream)."""
    target = os.path.join(rundir, "restore-" + set_id[:12] + "".join(how))
    d.ok("restore", set_id, "--target", target, *how, timeout=120)
    return target


def expected_diff(a: dict[str, tuple], b: dict[str, tuple]) -> dict[str, list[str]]:
    """What `cairn diff` must say between two tree states."""
    def shown(state: dict[str, tuple], p: str) -> str:
        return p + "/" if state[p][0] == "dir" else p

    added, modified, deleted = [], [], []
    for p in sorted(set(a) | set(b)):
        x, y = a.get(p), b.get(p)
        if x is None or y is None or (x[0] == "dir") != (y[0] == "dir"):
            if x is not None:
                deleted.append(shown(a, p))
            if y is not None:
                added.append(shown(b, p))
        elif x[0] == "dir":  # its mtime moves with every name made or removed in it: not a change of its own
            if x[1:4] != y[1:4] or x[5] != y[5]:
                modified.append(p + "/")
        elif x[:8] != y[:8]:  # everything but the other names of a hard-linked file
            modified.append(p)
    return {"added": sorted(added), "modified": sorted(modified), "deleted": sorted(deleted)}


def check_hot_set(target: str, s: dict, writes: list[tuple[float, str, str]]) -> None:
    """Every file the set does not flag fuzzy is whole; every file it flags was written while it ran."""
    fuzzy = set(s["fuzzy_paths"])
    assert s["status"] == ("fuzzy" if fuzzy else "ok"), s
    pages = [tuple(map(int, p.split(":"))) for _t, op, p in writes if op == "dbpage"]
    torn = []
    for dirpath, _dirs, files in os.walk(target):
        for name in files:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, target)
            if rel in fuzzy:
                continue
            with open(full, "rb") as f:
                data = f.read()
            if rel.startswith("logs/"):
                ok = valid_log(data)
            elif rel == "sparse.img":
                ok = all(data[i:i + 4096] in (b"\0" * 4096, b"S" * 4096) for i in range(0, len(data), 4096))
            elif rel == "db.dat":
                ok = valid_db(data, pages)
            elif rel == "index.dat":
                ok = valid_index(data)
            elif rel.startswith(("tmp/", "deep/", "odd/")) or (rel.startswith("bundles/") and "/parts/" not in rel):
                ok = valid_part(data)  # written in place after an O_TRUNC or O_CREAT: empty, then in part
            else:
                ok = valid_content(data)
            if not ok:
                torn.append(rel)
    assert not torn, f"set {s['id'][:12]} holds files in no state they ever had, not flagged fuzzy: {torn[:5]}"
    start, end = s["time_start"] - 1, s["time_end"] + 1
    written = {"db.dat" if op == "dbpage" else p for t, op, p in writes if start <= t <= end}
    untrue = [p for p in fuzzy if p not in written]
    assert not untrue, f"set {s['id'][:12]} flags files fuzzy that were not written while it ran: {untrue[:5]}"


@pytest.mark.campaign
def test_hot_sets_of_a_running_writer_hold_only_states_its_files_had(start_daemon, apps, rundir) -> None:
    app = apps("app", seed=seed(11), skip=("rewrite_shared",))
    d = start_daemon("--config", config(rundir, {"app": app.root}), socket_path=os.path.join(rundir, "s.sock"))
    wait_until(lambda: len(app.writes()) > 50, 20, "the writer to get going")
    sets = []
    for level in ("full", "incremental", "differential", "incremental"):
        sets.append(backup(d, level))
        app.moved_on()
    writes = app.writes()
    for s in sets:
        check_hot_set(restored(d, rundir, s["id"]), s, writes)
    app.pause()
    final = backup(d, "incremental")
    got = tree_state(restored(d, rundir, final["id"]))
    assert not differences(tree_state(app.root), got)
    app.stop()


@pytest.mark.campaign
def test_cold_sets_are_the_tree_at_freeze_and_diff_names_what_changed(start_daemon, apps, rundir) -> None:
    app = apps("app", seed=seed(12))
    d = start_daemon("--config", config(rundir, {"app": app.root}, quiesce=cold_window()),
                     socket_path=os.path.join(rundir, "s.sock"))
    wait_until(lambda: len(app.writes()) > 50, 20, "the writer to get going")
    sets = []
    for level in ("full", "incremental", "incremental", "differential", "incremental"):
        s = backup(d, level)
        assert s["status"] == "ok", s
        sets.append(s)
        app.moved_on()
    frozen = app.frozen()
    assert len(frozen) == len(sets)
    writes = app.writes()
    for i, (s, (_t, _src, state)) in enumerate(zip(sets, frozen, strict=True)):
        since = frozen[0 if s["level"] == "differential" else max(i - 1, 0)][0]
        linked = any(op == "shared" and since <= t <= frozen[i][0] for t, op, _ in writes)
        if s["level"] != "full" and not linked:  # a write to a file of several names makes the set walk
            # as does a directory whose watch was lost in renames read late (docs/journal.md): the set says so
            assert s["extra"]["changes"] == "journal" or any(
                "rename" in r for r in s["extra"].get("walk_reasons", ())), s["extra"]
        got = tree_state(restored(d, rundir, s["id"]))
        assert not differences(state, got), f"set {s['id'][:12]} ({s['level']}): {differences(state, got)}"
    # the first set's restore mended into each later one: --delta --delete, by the daemon and by the client
    mended = restored(d, rundir, sets[0]["id"], "--stream")
    for i, s in enumerate(sets[1:], 1):
        how = ("--stream",) if i % 2 else ()
        d.ok("restore", s["id"], "--target", mended, "--delta", "--delete", *how, timeout=120)
        got = tree_state(mended)
        assert not differences(frozen[i][2], got), f"--delta {how} to set {i}: {differences(frozen[i][2], got)}"
    for i in range(len(sets) - 1):
        got = json.loads(d.ok("--json", "diff", sets[i]["id"], sets[i + 1]["id"]))
        want = expected_diff(frozen[i][2], frozen[i + 1][2])
        for key in want:
            assert sorted(got[key]) == want[key], f"diff {key}: extra {sorted(set(got[key]) - set(want[key]))[:5]}, " \
                                                   f"missing {sorted(set(want[key]) - set(got[key]))[:5]}"
    app.stop()


def _sets(d: Daemon, source: str) -> list[dict]:
    data = json.loads(d.ok("--json", "sets", "--source", source))
    return sorted(data["sets"] if isinstance(data, dict) else data, key=lambda s: s["time_start"])


@pytest.mark.campaign
def test_rpo_sets_of_several_cold_sources_are_each_the_tree_at_its_freeze(start_daemon, apps, rundir) -> None:
    one, two = apps("one", seed=seed(21)), apps("two", seed=seed(21) + 1, skip=("rewrite_shared",))
    d = start_daemon("--config", config(rundir, {"one": one.root, "two": two.root}, quiesce=cold_window(),
                                        rpo='"1s"'), socket_path=os.path.join(rundir, "s.sock"))
    wait_until(lambda: all(len(_sets(d, n)) >= 3 for n in ("one", "two")), 60, "three rpo sets of each source")
    for name, app in (("one", one), ("two", two)):
        sets = _sets(d, name)
        frozen = app.frozen()  # a set still running has its freeze recorded, not its set yet
        assert len(frozen) >= len(sets)
        for s, (_t, src, state) in zip(sets, frozen[: len(sets)], strict=True):
            assert src == name
            assert s["status"] == "ok", s
            got = tree_state(restored(d, rundir, s["id"]))
            assert not differences(state, got), f"{name} set {s['id'][:12]} ({s['level']}): {differences(state, got)}"
    one.stop()
    two.stop()


STARTED = "backup of source 'app' started"


@pytest.mark.campaign
def settled_status(d, quiet: float = 1.0, timeout: float = 30.0) -> dict:
    """The source's status once its journal state and reasons have not changed for `quiet`
    seconds: a paused writer's last events (moves read late among them) have been taken in."""
    end = time.monotonic() + timeout
    last, since = None, time.monotonic()
    while True:
        st = json.loads(d.ok("--json", "status"))["sources"][0]
        key = (st["journal_state"], tuple(st["journal_reasons"]))
        if key != last:
            last, since = key, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return st
        assert time.monotonic() < end, f"the journal did not settle: {st}"
        time.sleep(0.05)


def test_a_daemon_killed_while_the_writer_runs_loses_no_change(start_daemon, apps, rundir) -> None:
    app = apps("app", seed=seed(31), skip=("rewrite_shared",))
    cfg = config(rundir, {"app": app.root})
    sock = os.path.join(rundir, "s.sock")
    d = start_daemon("--config", cfg, socket_path=sock)
    backup(d, "full")
    for during_a_set in (True, False):
        app.moved_on()
        running = None
        if during_a_set:
            running = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "cairn"), "--socket", sock,
                                        "backup", "--level", "incremental"], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
            n = d.log().count(STARTED)
            wait_until(lambda d=d, n=n: d.log().count(STARTED) > n, 30, "the set to start")
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait(10)
        if running is not None:
            running.wait(30)
        d = start_daemon("--config", cfg, socket_path=sock)
        st = json.loads(d.ok("--json", "status"))["sources"][0]
        assert st["journal_state"] == "rescan", st
        # said in the log too: a later whole-source cause (a hard-linked file written) replaces it in status
        assert "the previous daemon did not stop cleanly: changes made while it was not running are unknown, " \
               "so the next set of source 'app' walks the whole source" in d.log(), d.log()
        s = backup(d, "incremental")
        assert s["extra"]["changes"] == "walk", s["extra"]
        app.moved_on()
        app.pause()
        before = settled_status(d)  # the writer's last events read: what the next set plans from
        s = backup(d, "incremental")
        if s["extra"]["changes"] != "journal":
            # the writer's moves read late, up to its pause, may still cost one walk (docs/journal.md:
            # a rename that is not a plain move); with the writer paused, no more
            # (the set records why it walked; the status read before it may not have seen the last moves yet)
            why = [*before["journal_reasons"], *s["extra"].get("walk_reasons", ())]
            assert any("rename" in r for r in why), (before, s["extra"])
            s = backup(d, "incremental")
        assert s["extra"]["changes"] == "journal", json.dumps(s["extra"])
        got = tree_state(restored(d, rundir, s["id"]))
        assert not differences(tree_state(app.root), got), differences(tree_state(app.root), got)
        app.resume()
    app.stop()


def _write(path: str | bytes, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def test_what_an_application_reshapes_between_sets_is_in_each_journal_driven_set(start_daemon, rundir) -> None:
    src = os.path.join(rundir, "src")
    os.makedirs(os.path.join(src, "swap", "inner"))
    _write(os.path.join(src, "swap", "inner", "f"), b"in a directory")
    _write(os.path.join(src, "becomes-dir"), b"a file")
    os.makedirs(os.path.join(src, "meta"))
    _write(os.path.join(src, "meta", "doc"), b"doc")
    d = start_daemon("--config", config(rundir, {"app": src}), socket_path=os.path.join(rundir, "s.sock"))
    states = [tree_state(src)]
    sets = [backup(d, "full")]
    bsrc = os.fsencode(src)

    def step_1() -> None:  # a directory replaced by a file of its name, and a file by a directory
        subprocess.run(["rm", "-rf", os.path.join(src, "swap")], check=True)
        _write(os.path.join(src, "swap"), b"now a file")
        os.unlink(os.path.join(src, "becomes-dir"))
        os.makedirs(os.path.join(src, "becomes-dir", "sub"))
        _write(os.path.join(src, "becomes-dir", "sub", "g"), b"below")
        os.setxattr(os.path.join(src, "meta"), "user.app.tag", b"dir-tag")
        os.setxattr(os.path.join(src, "meta", "doc"), "user.app.tag", b"file-tag")

    def step_2() -> None:  # back again, names that are not UTF-8, a hard link, a sparse file
        os.unlink(os.path.join(src, "swap"))
        os.makedirs(os.path.join(src, "swap"))
        _write(os.path.join(src, "swap", "f2"), b"a directory again")
        subprocess.run(["rm", "-rf", os.path.join(src, "becomes-dir")], check=True)
        _write(os.path.join(src, "becomes-dir"), b"a file again")
        os.makedirs(os.path.join(bsrc, b"odd\n\xff"))
        _write(os.path.join(bsrc, b"odd\n\xff", b"x\xfe"), b"odd")
        os.link(os.path.join(src, "meta", "doc"), os.path.join(src, "meta", "doc-link"))
        with open(os.path.join(src, "sparse"), "wb") as f:
            f.truncate(4 << 20)
            f.seek(1 << 20)
            f.write(b"x" * 4096)
        os.removexattr(os.path.join(src, "meta"), "user.app.tag")
        os.setxattr(os.path.join(src, "meta", "doc"), "user.app.tag", b"changed")

    def step_3() -> None:  # a tree moved in one rename, its old place taken by a file
        os.rename(os.path.join(src, "swap"), os.path.join(src, "meta", "moved"))
        _write(os.path.join(src, "swap"), b"third")
        os.rename(os.path.join(bsrc, b"odd\n\xff"), os.path.join(bsrc, b"meta", b"odd\n\xff"))

    for step in (step_1, step_2, step_3):
        step()
        states.append(tree_state(src))
        sets.append(backup(d, "incremental"))
    sets.append(backup(d, "differential"))
    states.append(states[-1])
    # the second step makes a hard link (a whole-source cause); the first and the last go by the journal
    assert [s["extra"]["changes"] for s in sets] == ["walk", "journal", "walk", "journal", "walk"], sets
    for i, (s, state) in enumerate(zip(sets, states, strict=True)):
        for how in ((), ("--stream",)):
            target = restored(d, rundir, s["id"], *how)
            got = tree_state(target)
            assert not differences(state, got), f"set {i} ({s['level']}, {s['extra']['changes']}) {how}: " \
                                                f"{differences(state, got)}"
            if "sparse" in state:  # 4 MiB with one block of data: its holes stay holes
                assert os.stat(os.path.join(target, "sparse")).st_blocks * 512 <= 256 << 10
    for i in range(len(sets) - 1):
        got = json.loads(d.ok("--json", "diff", sets[i]["id"], sets[i + 1]["id"]))
        want = expected_diff(states[i], states[i + 1])
        for key in want:
            assert sorted(got[key]) == want[key], f"diff {i}->{i + 1} {key}: got {sorted(got[key])}, want {want[key]}"
    for s in sets[1:]:  # what a set counts as changed against its base is what diff names
        got = json.loads(d.ok("--json", "diff", s["base"], s["id"]))
        counted = {key: s["stats"][key] for key in ("added", "modified", "deleted")}
        assert counted == {key: len(got[key]) for key in counted}, (s["level"], counted, got)
