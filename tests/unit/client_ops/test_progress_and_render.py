"""Backup progress within 80 columns with estimated totals and an ETA; the estimate a full set
gets from the newest set; plurals and verify counts without confusing zeros."""

from __future__ import annotations

import io

import pytest
from cairn.client import progress as progress_module
from cairn.client.progress import WIDTH, ProgressView, estimate_eta, fit, progress_figures
from cairn.client.render import plural, verify_counts
from cairn.daemon.rpc.servicer import backup_estimate, with_estimate
from cairn.proto.cairn.v1 import cairn_pb2 as pb
from cairn.store.model import BackupSet, SetStats


def test_figures_mark_estimates_and_show_the_eta():
    text = progress_figures(1234, 5678, 3 << 30, 9 << 30, True, 200)
    assert text == "1234/~5678 files, 3.0 GiB/~9.0 GiB, ETA 3m"
    assert progress_figures(1, 0, 10, 0, False, None) == "1 file, 10 B"


def test_a_copy_counts_sets():
    out = io.StringIO()
    view = ProgressView("plain", "copy", out, unit="set")
    view.update("set 3fa9c2d1..", 1, 3, 10, 30)
    assert out.getvalue().startswith("copy: set 3fa9c2d1..: 1/3 sets, 10 B/30 B")


def test_a_phase_named_like_the_title_is_not_repeated():
    out = io.StringIO()
    ProgressView("plain", "restore", out).update("restore", 1, 24, 0, 100)
    assert out.getvalue().startswith("restore: 1/24 files, 0 B/100 B")


def test_a_long_title_is_shortened_never_the_figures():
    figures = progress_figures(123456, 987654, 123 << 40, 456 << 40, True, 90000)
    line = fit("full backup of 'a-source-with-a-really-long-name-for-testing': backup", figures)
    assert len(line) == WIDTH and line.endswith(figures) and "…" in line
    assert fit("short", "1 file, 10 B") == "short: 1 file, 10 B"


def test_eta_from_the_rate_so_far():
    assert estimate_eta(10.0, 100, 400) == pytest.approx(30.0)
    assert estimate_eta(10.0, 0, 400) is None and estimate_eta(10.0, 500, 400) is None


def test_plain_progress_lines_fit_80_columns(monkeypatch):
    out = io.StringIO()
    clock = iter([0.0, 5.0, 10.0, 20.0])
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: next(clock))
    view = ProgressView("plain", "full backup of 'source-with-quite-a-long-name-indeed-yes'", out=out)
    view.update("backup", 4000, 10000, 4 << 30, 10 << 30, b"/x", estimated=True)
    view.update("done", 10000, 10000, 10 << 30, 10 << 30, b"/x")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and all(len(line) <= WIDTH for line in lines)
    assert "4000/~10000 files" in lines[0] and "ETA 7s" in lines[0]


def _set(files: int, size: int) -> BackupSet:
    return BackupSet(id="x", source="a", level="full", requested_level="full", base=None, time_start=0,
                     time_end=1, hostname="h", paths=(), tree="", stats=SetStats(files=files, bytes_total=size))


def test_a_full_set_is_measured_against_the_newest_set():
    assert backup_estimate("full", [_set(10, 100), _set(20, 300)]) == (20, 300)
    # An incremental or differential reads only changes but counts every file: files only.
    assert backup_estimate("incremental", [_set(20, 300)]) == (20, 0)
    assert backup_estimate("differential", [_set(10, 100), _set(20, 300)]) == (20, 0)
    assert backup_estimate("incremental", [_set(0, 0)]) is None
    assert backup_estimate("full", []) is None
    p = with_estimate(pb.Progress(phase="backup", files_done=25, bytes_done=50), (20, 300))
    assert (p.files_total, p.bytes_total, p.totals_estimated) == (25, 300, True)
    counted = with_estimate(pb.Progress(files_done=1, files_total=9, bytes_total=9), (20, 300))
    assert counted.files_total == 9 and not counted.totals_estimated
    inc = with_estimate(pb.Progress(phase="backup", files_done=5, bytes_done=70), (20, 0))
    assert (inc.files_total, inc.bytes_total, inc.totals_estimated) == (20, 0, True)


def test_without_a_bytes_total_the_eta_follows_the_files(monkeypatch):
    out = io.StringIO()
    clock = [100.0]
    monkeypatch.setattr("cairn.client.progress.time.monotonic", lambda: clock[0])
    view = ProgressView("plain", "incremental backup of 'a-source-with-a-rather-long-name-indeed'", out)
    clock[0] += 10
    view.update("backup", 250_000, 1_000_000, 3 << 30, 0, b"/x", estimated=True)
    line = out.getvalue().splitlines()[0]
    assert len(line) <= WIDTH and "250000/~1000000 files, 3.0 GiB, ETA 30s" in line, line


def test_plurals_and_verify_counts():
    assert [plural(n, "set") for n in (0, 1, 2)] == ["0 sets", "1 set", "2 sets"]
    assert verify_counts(pb.CheckReport(sets_checked=1)) == "1 set checked"
    assert verify_counts(pb.CheckReport(sets_checked=2, packs_checked=1, chunks_checked=7, bytes_read=2048)) == \
        "2 sets, 1 pack, 7 chunks checked, 2.0 KiB read"
