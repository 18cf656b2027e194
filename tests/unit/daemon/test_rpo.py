"""RPO decisions: when a source with `rpo` gets an incremental set, and when it waits."""

from __future__ import annotations

from cairn.daemon.changes.rpo import BUSY_RECHECK, Attempt, RpoKeeper, retry_after, rpo_decisions


def test_nothing_unprotected_submits_nothing_and_sleeps():
    assert rpo_decisions({"app": 2.0}, {"app": None}, set(), {}, 100.0) == ([], None)


def test_due_only_once_the_oldest_change_waited_rpo():
    assert rpo_decisions({"app": 2.0}, {"app": 99.0}, set(), {}, 100.0) == ([], 101.0)
    submit, wake = rpo_decisions({"app": 2.0}, {"app": 98.0}, set(), {}, 100.0)
    assert submit == ["app"] and wake == 100.0 + BUSY_RECHECK


def test_busy_source_is_rechecked_not_submitted():
    assert rpo_decisions({"app": 2.0}, {"app": 90.0}, {"app"}, {}, 100.0) == ([], 100.0 + BUSY_RECHECK)


def test_a_set_that_did_not_protect_the_change_backs_off():
    attempts = {"app": Attempt(at=99.0, oldest=90.0)}
    assert rpo_decisions({"app": 2.0}, {"app": 90.0}, set(), attempts, 100.0) == ([], 99.0 + retry_after(2.0))
    # A newer oldest change means the last set did protect what it was taken for.
    assert rpo_decisions({"app": 2.0}, {"app": 95.0}, set(), attempts, 100.0)[0] == ["app"]


def test_each_source_by_its_own_rpo():
    submit, wake = rpo_decisions({"a": 10.0, "b": 1.0}, {"a": 95.0, "b": 95.0}, set(), {}, 100.0)
    assert submit == ["b"] and wake == 100.0 + BUSY_RECHECK
    assert rpo_decisions({"a": 10.0}, {"a": 95.0}, set(), {}, 100.0) == ([], 105.0)


def test_keeper_tick_submits_and_records_the_attempt():
    calls = []
    now = [100.0]
    keeper = RpoKeeper(lambda: {"app": 2.0}, lambda name: 97.0, set, lambda *a: calls.append(a), clock=lambda: now[0])
    keeper.tick()
    assert calls == [("app", "incremental", "rpo")]
    now[0] = 101.0
    keeper.tick()  # the change is still unprotected (the set failed): no burst
    assert len(calls) == 1
    now[0] = 100.0 + retry_after(2.0)
    keeper.tick()
    assert len(calls) == 2
