"""An application writing thousands of times a second while cairnd watches it, and the
incremental set taken right after: Cairn (daemon + change journal) vs restic on the same tree.

  python bench/write_storm.py [--seconds 10] [--data-mib 256] [--runs 3] [--workdir DIR]

A tree holds a log file and a data file of --data-mib MiB of random bytes. A real cairnd
watches it (`cairn backup --level full` first). Per run, a writer process (a Python loop:
append a line to the log, flush, rewrite a random 4 KiB page of the data file; about three
inotify events a loop) runs for --seconds. Measured:
- the daemon's CPU from the writer's start until it is idle again (less than 3 ticks in half a
  second), per loop of the writer, and how long it stayed busy after the writer stopped: what
  the watcher and the journal cost an application that writes this much;
- then (after a set of each tool takes that storm's changes) the same storm again, and
  `cairn backup --level incremental` as soon as the writer stops (the client process, start to
  printed set),
  and whether the watcher answered its barrier in time (the daemon logs when it did not and the
  set walks its source); then `restic backup` of the same tree (restic picks its parent
  snapshot itself and reads what changed);
- the daemon's peak resident memory (VmHWM) at the end.
Medians over the runs. Nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import DEFAULT_WORKDIR  # noqa: E402
from bench.journal_incremental import CairnDaemon, Restic, memory  # noqa: E402

WRITER = r"""
import os, random, sys, time
log, data, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
size = os.path.getsize(data)
rng = random.Random(7)
n = 0
end = time.monotonic() + seconds
with open(log, "ab") as f:
    while time.monotonic() < end:
        f.write(b"request %d served\n" % n)
        f.flush()
        with open(data, "r+b") as g:
            g.seek(rng.randrange(size // 4096) * 4096)
            g.write(os.urandom(4096))
        n += 1
print(n)
"""


def ticks(pid: int) -> int:
    """utime + stime of process `pid`, in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def write(tree: Path, seconds: float) -> int:
    """Run the writer for `seconds`; the number of loops it made."""
    r = subprocess.run([sys.executable, "-c", WRITER, str(tree / "app.log"), str(tree / "data.bin"), str(seconds)],
                       capture_output=True, text=True, check=True)
    return int(r.stdout)


def storm(daemon: CairnDaemon, tree: Path, seconds: float) -> dict:
    pid = daemon.proc.pid
    before = ticks(pid)
    loops = write(tree, seconds)
    stopped = time.perf_counter()
    last = ticks(pid)
    while True:
        time.sleep(0.5)
        now = ticks(pid)
        if now - last < 3:
            break
        last = now
    busy_after = time.perf_counter() - stopped
    used = (now - before) / os.sysconf("SC_CLK_TCK")
    return {"loops": loops, "daemon_cpu_s": used, "us_per_loop": used / loops * 1e6,
            "busy_after_s": round(busy_after - 0.5, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--data-mib", type=int, default=256)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    args = ap.parse_args()
    work = args.workdir / "write_storm"
    tree = work / "tree"
    if tree.exists():
        shutil.rmtree(tree)
    tree.mkdir(parents=True)
    with open(tree / "data.bin", "wb") as f:
        for _ in range(args.data_mib):
            f.write(os.urandom(1 << 20))
    (tree / "app.log").write_bytes(b"")
    daemon = CairnDaemon(work, "storm", tree)
    restic = Restic(work, "storm") if shutil.which("restic") else None
    runs = []
    try:
        daemon.start()
        daemon.backup("full", "storm-full")
        if restic is not None:
            restic.run("backup", "--quiet", str(tree), name="storm-restic-full")
        log = daemon.logdir / "storm-cairnd.log"
        for i in range(args.runs):
            s = storm(daemon, tree, args.seconds)  # the daemon's cost, until it is idle again
            daemon.backup("incremental", f"storm-settle{i}")
            if restic is not None:
                restic.run("backup", "--quiet", str(tree), name=f"storm-restic-settle{i}")
            write(tree, args.seconds)  # the same storm again, and the sets right after it
            late_before = log.read_text(errors="replace").count("did not answer in time")
            m, st = daemon.backup("incremental", f"storm-inc{i}")
            s["cairn_incremental_s"] = m.seconds
            s["walked"] = log.read_text(errors="replace").count("did not answer in time") > late_before
            s["cairn_read_mib"] = st["stats"]["bytes_read"] / (1 << 20)
            if restic is not None:
                s["restic_s"] = restic.run("backup", "--quiet", str(tree), name=f"storm-restic-inc{i}").seconds
            runs.append(s)
            print(f"run {i}: {s['loops']} writer loops, daemon {s['us_per_loop']:.0f} us/loop, busy "
                  f"{s['busy_after_s']:.1f} s after; cairn incremental {s['cairn_incremental_s']:.2f} s"
                  f"{' (walked: the watcher did not answer in time)' if s['walked'] else ''}"
                  + (f", restic {s['restic_s']:.2f} s" if "restic_s" in s else ""), flush=True)
        hwm = memory(daemon.proc.pid)
    finally:
        daemon.stop()
    med = {k: statistics.median(r[k] for r in runs)
           for k in ("us_per_loop", "busy_after_s", "cairn_incremental_s", "restic_s") if all(k in r for r in runs)}
    print(f"medians of {len(runs)}: daemon {med['us_per_loop']:.0f} us per writer loop, busy "
          f"{med['busy_after_s']:.1f} s after the writer; cairn incremental {med['cairn_incremental_s']:.2f} s"
          + (f", restic {med['restic_s']:.2f} s ({med['restic_s'] / med['cairn_incremental_s']:.1f}x)"
             if "restic_s" in med else "")
          + f"; sets that walked: {sum(r['walked'] for r in runs)}; daemon peak RSS {hwm.get('VmHWM', 0) >> 20} MiB")
    out = {"runs": runs, "medians": med, "daemon_memory": hwm, "seconds": args.seconds, "data_mib": args.data_mib}
    (work / "write_storm.json").write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
