"""What `cairn restore` holds while it runs (cairn.client.restoring.Guard): SIGINT and SIGTERM
raise Interrupted at once, except while the client writes a delta, when they only stop it
(the calls it watches are cancelled, and the delta's own stop raises Interrupted once it has
cleaned up); the handlers are put back afterwards; and the target's delta lock is held until
the restore ends."""

from __future__ import annotations

import os
import signal

import pytest
from cairn.client.restoring import Guard, Interrupted
from cairn.errors import AbortedError, BusyError
from cairn.fsio.delta import target_lock


class Call:
    cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_outside_a_delta_a_signal_interrupts_at_once(sig: signal.Signals) -> None:
    before = signal.getsignal(sig)
    with pytest.raises(Interrupted) as exc, Guard():
        os.kill(os.getpid(), sig)
        for _ in range(1000):  # the handler runs between two bytecodes of this thread
            pass
        raise AssertionError("not interrupted")
    assert exc.value.exit_status == 128 + sig and exc.value.message == "interrupted"
    assert signal.getsignal(sig) is before


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_while_the_client_writes_a_signal_only_stops_the_delta(sig: signal.Signals) -> None:
    call = Call()
    seen = []
    with pytest.raises(Interrupted) as exc, Guard() as guard, guard.writing():
        guard.watch(call)
        os.kill(os.getpid(), sig)
        for _ in range(1000):
            pass
        seen.append((guard.stopped(), call.cancelled))  # noted, the call cancelled, nothing raised here
        raise AbortedError("restore --delta cancelled while writing the target")  # the delta stops itself
    assert seen == [(True, True)]
    assert exc.value.exit_status == 128 + sig
    assert exc.value.message.startswith("interrupted: the delta restore stopped before its end")


def test_an_error_of_the_delta_without_a_signal_is_its_own() -> None:
    with pytest.raises(OSError, match="disk"), Guard() as guard, guard.writing():
        raise OSError(28, "disk full")


def test_the_target_lock_is_held_until_the_restore_ends(tmp_path) -> None:
    target = str(tmp_path / "new")  # made when locked
    with Guard() as guard:
        guard.lock_target(target)
        with pytest.raises(BusyError, match="is running already"), target_lock(target):
            pass
    with target_lock(target):
        pass
    assert os.path.isdir(target)


def test_a_target_made_for_a_delta_that_fails_before_writing_is_removed(tmp_path) -> None:
    target = str(tmp_path / "new")
    with pytest.raises(OSError, match="set not found"), Guard() as guard:
        guard.lock_target(target)
        raise OSError(2, "set not found")  # the first call fails: nothing was written
    assert not os.path.exists(target)
