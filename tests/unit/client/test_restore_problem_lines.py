"""What a restore prints about entries it could not write: every problem that is not about one
entry, the first entries by name, and the rest counted by reason in one line (a full disk fails
every entry after it)."""

from __future__ import annotations

from cairn.client.render import SHOWN_ENTRY_PROBLEMS, restore_problem_lines
from cairn.fsio.pgcontrol import NOT_WRITTEN


def test_few_problems_are_all_named() -> None:
    problems = ["unable to restore 'a': write failed: No space left on device", NOT_WRITTEN]
    assert restore_problem_lines(problems) == problems


def test_many_are_cut_to_the_first_ones_and_a_count_by_reason() -> None:
    entries = [f"unable to restore 'd/f{i:04d}': write failed: No space left on device" for i in range(900)]
    entries += [f"unable to restore 'd/sub{i}/x': No such file or directory" for i in range(40)]
    entries.insert(3, "unable to restore 'odd: name': Permission denied")
    lines = restore_problem_lines(entries + [NOT_WRITTEN])
    assert lines[:SHOWN_ENTRY_PROBLEMS] == entries[:SHOWN_ENTRY_PROBLEMS]
    rest = len(entries) - SHOWN_ENTRY_PROBLEMS
    assert lines[SHOWN_ENTRY_PROBLEMS] == (f"{rest} more entries could not be restored: No space left on device "
                                           f"({rest - 40}), No such file or directory (40) (--json lists every one)")
    assert lines[-1] == NOT_WRITTEN  # never cut: what matters most is not about one entry
    assert len(lines) == SHOWN_ENTRY_PROBLEMS + 2


def test_a_full_disk_gets_the_way_to_finish() -> None:
    from cairn.client.render import restore_problem_hint

    full = ["unable to restore 'a': write failed: No space left on device"]
    assert "run the same restore again with --delta" in restore_problem_hint(full)
    assert "run the same delta again" in restore_problem_hint(full, delta=True)
    assert restore_problem_hint(["unable to restore 'a': Permission denied"]) is None
