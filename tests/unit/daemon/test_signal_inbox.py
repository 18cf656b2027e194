"""The daemon's signal inbox (daemon/runtime/signals.py), each case in its own interpreter (signal
handlers and the wakeup descriptor belong to the process): a signal that lands on another
thread wakes the main loop at once, and a storm of signals while the main loop spins never
hangs it (the handler it replaced set a threading.Event, and deadlocked when it ran inside that
event's own wait)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

PRELUDE = textwrap.dedent("""
    import os, signal, sys, threading, time
    from cairn.daemon.runtime.signals import SignalInbox
    inbox = SignalInbox()
    inbox.install((signal.SIGUSR1, signal.SIGTERM))
""")


def _run(body: str, timeout: float = 60) -> str:
    r = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(body)], capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_a_signal_on_another_thread_wakes_the_main_loop_at_once():
    out = _run("""
        def other():
            time.sleep(0.3)
            signal.pthread_kill(threading.get_ident(), signal.SIGTERM)  # delivered to this thread, not main
        threading.Thread(target=other).start()
        t = time.monotonic()
        got = inbox.wait(30)
        print(got == [signal.SIGTERM], round(time.monotonic() - t, 2))
    """)
    same, took = out.split()
    assert same == "True" and float(took) < 5, out  # not the 30 s of the wait's timeout


def test_a_storm_of_signals_while_the_main_loop_spins_never_hangs_it():
    """The main loop polls (wait(0)) as fast as it can while another thread sends thousands of
    signals: with a handler that took a lock the main thread can hold, this hung within a
    fraction of a second; here it ends, having seen the signals, and the last one comes out."""
    out = _run("""
        stop = threading.Event()
        def storm():
            while not stop.is_set():
                os.kill(os.getpid(), signal.SIGUSR1)
        threading.Thread(target=storm, daemon=True).start()
        seen, t = 0, time.monotonic()
        while time.monotonic() - t < 2.0:
            seen += len(inbox.wait(0))
        stop.set()
        time.sleep(0.1)
        inbox.wait(0)
        os.kill(os.getpid(), signal.SIGTERM)
        print(seen, inbox.wait(5))
    """, timeout=30)
    seen, last = out.split(maxsplit=1)
    assert int(seen) > 10 and last.strip() == "[15]", out


def test_close_puts_the_handlers_back():
    out = _run("""
        inbox.close()
        print(signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, signal.set_wakeup_fd(-1))
    """)
    assert out.split() == ["True", "-1"], out


def test_a_signal_another_handler_owns_does_not_come_out():
    """Every caught signal's number goes through the pipe; only the inbox's own come out (the
    daemon would take anything else for a stop)."""
    out = _run("""
        hits = []
        signal.signal(signal.SIGUSR2, lambda s, f: hits.append(s))
        os.kill(os.getpid(), signal.SIGUSR2)
        first = inbox.wait(1)
        os.kill(os.getpid(), signal.SIGUSR1)
        print(first, inbox.wait(5), hits)
    """)
    assert out.strip() == "[] [10] [12]", out
