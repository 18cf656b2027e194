"""The hook stack of a window: levels freeze in order, thaw in reverse, a thaw for every level
whose freeze began (also after a crash, from the window record), and on_success/on_failure."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from cairn.daemon.runtime.config import HookLevel, QuiesceConfig
from cairn.daemon.windows.quiesce import Hook, HookError, Window, recover_windows, run_after
from cairn.daemon.windows.records import list_record_paths, record_path


def log_hook(log: Path, word: str, *, fail: bool = False) -> Hook:
    return Hook(("sh", "-c", f'echo {word} >> "{log}"' + ("; exit 4" if fail else "")), 10.0, True)


def lines(p: Path) -> list[str]:
    return p.read_text().split() if p.exists() else []


def test_levels_freeze_in_order_and_thaw_in_reverse(tmp_path: Path) -> None:
    log = tmp_path / "log"
    levels = [([log_hook(log, f"freeze{i}")], [log_hook(log, f"thaw{i}")]) for i in (1, 2, 3)]
    with Window(str(tmp_path / "state"), "app", "cold", levels=levels) as w:
        assert lines(log) == ["freeze1", "freeze2", "freeze3"]
    assert lines(log) == ["freeze1", "freeze2", "freeze3", "thaw3", "thaw2", "thaw1"]
    assert w.record()["levels_started"] == 3


def test_a_failing_freeze_thaws_only_the_levels_that_began(tmp_path: Path) -> None:
    log = tmp_path / "log"
    levels = [([log_hook(log, "freeze1")], [log_hook(log, "thaw1")]),
              ([log_hook(log, "freeze2", fail=True)], [log_hook(log, "thaw2")]),
              ([log_hook(log, "freeze3")], [log_hook(log, "thaw3")])]
    with pytest.raises(HookError), Window(str(tmp_path / "state"), "app", "cold", levels=levels):
        pytest.fail("the body must not run")
    assert lines(log) == ["freeze1", "freeze2", "thaw2", "thaw1"]


def test_a_crash_thaws_the_levels_that_began_from_the_record(tmp_path: Path) -> None:
    log = tmp_path / "log"
    state = str(tmp_path / "state")
    levels = [([log_hook(log, "freeze1")], [log_hook(log, "thaw1")]),
              ([log_hook(log, "freeze2")], [log_hook(log, "thaw2")]),
              ([log_hook(log, "freeze3")], [log_hook(log, "thaw3")])]
    w = Window(state, "app", "cold", levels=levels)
    w.__enter__()  # the daemon "dies" inside the window: no __exit__
    w._timer.cancel()
    rec = json.loads(Path(record_path(state, "app")).read_text())
    assert rec["levels_started"] == 3 and len(rec["levels"]) == 3
    # as if it had died while the second level froze
    rec["levels_started"] = 2
    Path(record_path(state, "app")).write_text(json.dumps(rec))
    (out,) = recover_windows(state)
    assert out.ok and lines(log)[3:] == ["thaw2", "thaw1"]
    assert list_record_paths(state) == []


def test_an_old_record_without_levels_still_thaws(tmp_path: Path) -> None:
    log = tmp_path / "log"
    state = tmp_path / "state" / "windows"
    state.mkdir(parents=True)
    (state / "app.json").write_text(json.dumps({
        "version": 1, "source": "app", "mode": "cold", "pid": os.getpid(), "started": 1.0, "max_window": 9.0,
        "freeze": [], "thaw": [{"argv": ["sh", "-c", f'echo old >> "{log}"'], "timeout": 5, "required": True}]}))
    (out,) = recover_windows(str(tmp_path / "state"))
    assert out.ok and lines(log) == ["old"]


def test_freeze_and_thaw_lists_of_equal_length_pair_up_as_a_stack() -> None:
    q = QuiesceConfig("cold", freeze=(("a",), ("b",)), thaw=(("c",), ("d",)), timeout=5.0)
    assert q.levels() == (HookLevel((("a",),), (("c",),), 5.0, True), HookLevel((("b",),), (("d",),), 5.0, True))
    one = QuiesceConfig("cold", freeze=(("a",),), thaw=(("c",), ("d",)))
    assert one.levels() == (HookLevel((("a",),), (("c",), ("d",)), 60.0, True),)
    assert QuiesceConfig("hot").levels() == ()


def test_after_hooks_run_in_order_and_never_raise(tmp_path: Path) -> None:
    log = tmp_path / "log"
    argvs = [["sh", "-c", f'echo one >> "{log}"; exit 2'], ["sh", "-c", f'echo "$CAIRN_HOOK_PHASE" >> "{log}"']]
    res = run_after(argvs, "app", "cold", "on_failure", 5.0)
    assert [r.exit_code for r in res] == [2, 0] and lines(log) == ["one", "on_failure"]
