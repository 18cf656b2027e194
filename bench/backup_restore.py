"""Full backup and restore of the standard corpus: Cairn as users run it (cairnd and the cairn
client, on an encrypted and on a plaintext repository), restic and borg, in one run.

  python -m bench.backup_restore [--workdir DIR] [--corpus-script PATH] [--big-mib N]
                                 [--tools cairnd-enc,cairnd,restic] [--runs N] [--rebuild-corpus]
                                 [--fresh-fs]

Builds the corpus once (../shared/bench/build_corpus.py beside the project root unless
--corpus-script says otherwise) into the work dir (default bench/out/), reads it once so every
tool starts from a warm page cache (caches cannot be dropped here), then for each tool: a fresh
repository, a full backup, a restore into an empty directory. Every tool runs as a child
process; time is wall time, CPU is user + system seconds, memory is the child's peak RSS from
wait4. `cairnd-enc` / `cairnd`: a real cairnd is started on a fresh repository (`cairnd --init`,
encrypted under a passphrase file by default, `--no-encryption` for `cairnd`) before the clock
starts; the timed steps are the client processes `cairn backup --level full` and `cairn restore
latest --target`; the daemon's CPU during each step is added to the client's, and peak memory
is the larger of the client's and the daemon's (VmHWM). `cairn` / `cairn-enc` drive the store
directly (bench/cairn_run.py): the figures of earlier issues, kept for comparison.
Cairn's restores are compared with the corpus (content, mode, file mtime). Prints a table, the
ratios, and for cairnd-enc the targets of the encryption issue on medians (backup >= 1.7x
restic, restore >= 1.2x restic, repository within 2% of unencrypted cairnd), with the CPU
seconds beside them. With --runs N (default 3) the tools take turns N times, each on a fresh
repository; the table shows the best speed of the N runs and the highest peak memory;
results.json in the work dir holds every run and the medians. Each run line shows the load.
With --fresh-fs (root) every restore goes to a new ext4 file system made for the run
(bench/common.py fresh_fs says why).
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
from dataclasses import dataclass, field
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
    dir_size,
    fresh_dir,
    fresh_fs,
    run_measured,
    tree_bytes,
    warm,
)

TARGET_SPEEDUP = 1.5


@dataclass
class ToolResult:
    """Measurements of one tool over one or more runs."""

    name: str
    version: str = ""
    backup_s: list[float] = field(default_factory=list)
    restore_s: list[float] = field(default_factory=list)
    backup_cpu: list[float] = field(default_factory=list)
    restore_cpu: list[float] = field(default_factory=list)
    backup_rss: list[int] = field(default_factory=list)
    restore_rss: list[int] = field(default_factory=list)
    repo_bytes: int = 0
    verified: str = "not checked"

    def median(self, xs: list[float]) -> float:
        return statistics.median(xs) if xs else float("nan")


class Tool:
    """One backup program: how to init a repository, back up the corpus and restore it."""

    name = ""
    binary = ""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.logs = work / "logs"
        self.corpus = work / "corpus"

    def available(self) -> bool:
        return shutil.which(self.binary) is not None

    def version(self) -> str:
        try:
            return subprocess.run([self.binary, "--version"], capture_output=True, text=True).stdout.strip()
        except OSError:
            return "?"

    def env(self) -> dict[str, str]:
        return {}

    def run(self, cmd: list[str], step: str, cwd: Path | None = None) -> Measured:
        return run_measured(cmd, env=self.env(), cwd=cwd, logdir=self.logs, name=f"{self.name}-{step}").check()

    def init(self, repo: Path) -> None:
        pass

    def backup(self, repo: Path, corpus: Path) -> Measured:
        raise NotImplementedError

    def restore(self, repo: Path, target: Path) -> Measured:
        raise NotImplementedError

    def restored_root(self, target: Path, corpus: Path) -> Path:
        return target


class Cairn(Tool):
    name = "cairn"
    binary = sys.executable

    def available(self) -> bool:
        return subprocess.run([sys.executable, "-c", "import cairn.store.repository"], cwd=PROJECT_ROOT,
                              capture_output=True).returncode == 0

    def version(self) -> str:
        code = "import importlib.metadata as m; print(m.version('cairn-backup'))"
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip()

    def backup(self, repo: Path, corpus: Path) -> Measured:
        return self.run([sys.executable, "-m", "bench.cairn_run", "backup", str(repo), str(corpus)], "backup",
                        cwd=PROJECT_ROOT)

    def restore(self, repo: Path, target: Path) -> Measured:
        return self.run([sys.executable, "-m", "bench.cairn_run", "restore", str(repo), str(target)], "restore",
                        cwd=PROJECT_ROOT)


class CairnEncrypted(Cairn):
    """Cairn on an encrypted (format 2) repository: same runner, a passphrase in the env."""

    name = "cairn-enc"

    def env(self) -> dict[str, str]:
        return {"CAIRN_BENCH_PASSPHRASE": "bench"}


class Restic(Tool):
    name = "restic"
    binary = "restic"

    def version(self) -> str:
        return subprocess.run(["restic", "version"], capture_output=True, text=True).stdout.strip()

    def env(self) -> dict[str, str]:
        return {"RESTIC_PASSWORD": "bench", "RESTIC_CACHE_DIR": str(self.work / "restic-cache")}

    def init(self, repo: Path) -> None:
        help_text = subprocess.run(["restic", "init", "--help"], capture_output=True, text=True).stdout
        extra = ["--insecure-no-password"] if "--insecure-no-password" in help_text else []
        self.run(["restic", "-r", str(repo), "init", *extra], "init")

    def backup(self, repo: Path, corpus: Path) -> Measured:
        return self.run(["restic", "-r", str(repo), "backup", "--quiet", str(corpus)], "backup")

    def restore(self, repo: Path, target: Path) -> Measured:
        return self.run(["restic", "-r", str(repo), "restore", "latest", "--target", str(target)], "restore")

    def restored_root(self, target: Path, corpus: Path) -> Path:
        return target / str(corpus).lstrip("/")


class Borg(Tool):
    name = "borg"
    binary = "borg"

    def env(self) -> dict[str, str]:
        return {"BORG_BASE_DIR": str(self.work / "borg-base"), "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
                "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes"}

    def init(self, repo: Path) -> None:
        self.run(["borg", "init", "--encryption=none", str(repo)], "init")

    def backup(self, repo: Path, corpus: Path) -> Measured:
        return self.run(["borg", "create", f"{repo}::bench", corpus.name], "backup", cwd=corpus.parent)

    def restore(self, repo: Path, target: Path) -> Measured:
        return self.run(["borg", "extract", f"{repo}::bench"], "restore", cwd=target)

    def restored_root(self, target: Path, corpus: Path) -> Path:
        return target / corpus.name


class Cairnd(Tool):
    """Cairn as users run it: a real cairnd on a fresh repository, `cairn backup --level full`
    and `cairn restore latest --target` through the real client. The daemon is started (and its
    repository created with `cairnd --init`) before the clock starts and stopped after the
    restore; the time is the client process's wall time, the peak memory the larger of the
    client's and the daemon's (VmHWM)."""

    name = "cairnd"
    binary = str(Path(sys.executable).parent / "cairnd")
    init_args = ("--no-encryption",)

    def __init__(self, work: Path) -> None:
        super().__init__(work)
        self.proc: subprocess.Popen | None = None
        self.socket = ""
        self.daemon_hwm: list[int] = []

    def available(self) -> bool:
        return Path(self.binary).exists()

    def version(self) -> str:
        return subprocess.run([self.binary, "--version"], capture_output=True, text=True).stdout.strip()

    def client(self) -> str:
        return str(Path(self.binary).parent / "cairn")

    def repo_keys(self) -> str:
        return ""

    def init(self, repo: Path) -> None:
        state, self.socket = self.work / f"state-{repo.name}", str(self.work / f"{repo.name}.sock")
        shutil.rmtree(state, ignore_errors=True)
        config = self.work / f"{repo.name}.toml"
        config.write_text(f'[repository]\npath = "{repo}"\n{self.repo_keys()}\n[daemon]\nsocket = "{self.socket}"\n'
                          f'state_dir = "{state}"\n\n[[source]]\nname = "bench"\npaths = ["{self.corpus}"]\n'
                          'watch = false\n')
        self.run([self.binary, "--config", str(config), "--init", *self.init_args], "init")
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.logs / f"{repo.name}-cairnd.log", "wb") as err:
            self.proc = subprocess.Popen([self.binary, "--config", str(config)], stdout=subprocess.DEVNULL,
                                         stderr=err, env=env)
        deadline = time.monotonic() + 120
        while subprocess.run([self.client(), "--socket", self.socket, "status"], capture_output=True).returncode:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"cairnd did not start; see {self.logs}")
            time.sleep(0.1)

    def backup(self, repo: Path, corpus: Path) -> Measured:
        before = self._daemon_cpu()
        m = self.run([self.client(), "--socket", self.socket, "--json", "backup", "--level", "full"], "backup")
        m.cpu += self._daemon_cpu() - before
        m.peak_rss = max(m.peak_rss, self._daemon_hwm())
        return m

    def _daemon_cpu(self) -> float:
        """User + system seconds the daemon has used so far."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rpartition(")")[2].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, AttributeError, IndexError, ValueError):
            return 0.0

    def restore(self, repo: Path, target: Path) -> Measured:
        try:
            before = self._daemon_cpu()
            m = self.run([self.client(), "--socket", self.socket, "restore", "latest", "--target", str(target)],
                         "restore")
            m.cpu += self._daemon_cpu() - before
            m.peak_rss = max(m.peak_rss, self._daemon_hwm())
            return m
        finally:
            self.stop()

    def _daemon_hwm(self) -> int:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    hwm = int(line.split()[1]) * 1024
                    self.daemon_hwm.append(hwm)
                    return hwm
        except (OSError, AttributeError):
            pass
        return 0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(60)
        self.proc = None


class CairndEncrypted(Cairnd):
    """cairnd on an encrypted repository (format 2), the default of `cairnd --init`."""

    name = "cairnd-enc"
    init_args = ()

    def repo_keys(self) -> str:
        secret = self.work / "bench.pass"
        secret.write_text("bench passphrase\n")
        return f'passphrase_file = "{secret}"\n'


TOOLS = {"cairn": Cairn, "cairn-enc": CairnEncrypted, "restic": Restic, "borg": Borg, "cairnd": Cairnd,
         "cairnd-enc": CairndEncrypted}


def prepare_corpus(args: argparse.Namespace, work: Path) -> Path:
    corpus = work / "corpus"
    stamp = work / "corpus.stamp"
    want = json.dumps({"script": str(args.corpus_script), "big_mib": args.big_mib})
    if args.rebuild_corpus or not corpus.is_dir() or not stamp.exists() or stamp.read_text() != want:
        print(f"building corpus in {corpus} ...", flush=True)
        build_corpus(args.corpus_script, corpus, big_mib=args.big_mib)
        stamp.write_text(want)
    return corpus


def bench_once(tool: Tool, res: ToolResult, corpus: Path, run: int, verify: bool, targets: Path) -> None:
    """One fresh repository, one full backup, one restore into an empty directory.

    Repositories and restored trees are kept until the whole benchmark is done: ext4 scans for
    recently deleted inodes when creating files, so deleting 7,700 files just before the next
    tool restores would make that tool pay for the previous one's clean-up."""
    repo = tool.work / f"repo-{tool.name}-{run}"
    target = targets / f"restore-{tool.name}-{run}"
    if repo.exists():
        shutil.rmtree(repo)
    fresh_dir(target)
    tool.init(repo)
    settle(corpus)
    b = tool.backup(repo, corpus)
    res.backup_s.append(b.seconds)
    res.backup_cpu.append(b.cpu)
    res.backup_rss.append(b.peak_rss)
    settle(None)
    r = tool.restore(repo, target)
    res.restore_s.append(r.seconds)
    res.restore_cpu.append(r.cpu)
    res.restore_rss.append(r.peak_rss)
    print(f"  run {run}: {tool.name:10} backup {b.seconds:6.2f} s  cpu {b.cpu:6.2f} s  "
          f"peak {b.peak_rss / MB:5.0f} MB | restore {r.seconds:6.2f} s  cpu {r.cpu:6.2f} s  "
          f"peak {r.peak_rss / MB:5.0f} MB  (load {_load()})",
          flush=True)
    res.repo_bytes = dir_size(repo)
    if verify:
        problems = compare_trees(corpus, tool.restored_root(target, corpus))
        res.verified = "restore equals corpus" if not problems else \
            f"{len(problems)} differences, first: {problems[:3]}"
    os.sync()


def _load() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def clean_outputs(tools: list[Tool]) -> None:
    """Remove the repositories and restored trees of every run."""
    for tool in tools:
        for p in list(tool.work.glob(f"repo-{tool.name}*")) + list(tool.work.glob(f"restore-{tool.name}*")):
            shutil.rmtree(p, ignore_errors=True)


def settle(corpus: Path | None) -> None:
    """Flush dirty pages left by earlier steps and (re)warm the corpus, so each step starts alike."""
    os.sync()
    if corpus is not None:
        warm(corpus)
    time.sleep(0.5)


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def report(results: list[ToolResult], corpus_bytes: int, files: int) -> dict:
    runs = max(len(r.backup_s) for r in results)
    print(f"\ncorpus: {files} files, {corpus_bytes / MB:.0f} MB (MB = 10^6 bytes); speed is the best of "
          f"{runs} run(s), peak RSS the highest\n")
    hdr = f"{'tool':8} {'backup MB/s':>12} {'restore MB/s':>13} {'peak RSS MB (b/r)':>18} {'repo MB':>9}"
    print(hdr)
    print("-" * len(hdr))
    rows = {}
    for r in results:
        bs, rs = min(r.backup_s), min(r.restore_s)
        row = {"backup_mbps": corpus_bytes / bs / MB, "restore_mbps": corpus_bytes / rs / MB,
               "backup_s": bs, "restore_s": rs, "backup_rss_mb": max(r.backup_rss) / MB,
               "restore_rss_mb": max(r.restore_rss) / MB, "repo_mb": r.repo_bytes / MB,
               "backup_s_all": r.backup_s, "restore_s_all": r.restore_s,
               "backup_mbps_median": corpus_bytes / r.median(r.backup_s) / MB,
               "restore_mbps_median": corpus_bytes / r.median(r.restore_s) / MB,
               "version": r.version, "verified": r.verified,
               "backup_cpu_median": r.median(r.backup_cpu), "restore_cpu_median": r.median(r.restore_cpu),
               "backup_cpu_all": r.backup_cpu, "restore_cpu_all": r.restore_cpu}
        rows[r.name] = row
        rss = f"{row['backup_rss_mb']:.0f}/{row['restore_rss_mb']:.0f}"
        print(f"{r.name:8} {row['backup_mbps']:12.1f} {row['restore_mbps']:13.1f} {rss:>18} {row['repo_mb']:9.0f}")
    if "cairn" in rows:
        print(f"\ncairn restore check: {rows['cairn']['verified']}")
        c = rows["cairn"]
        for peer in ("restic", "borg"):
            if peer not in rows:
                continue
            p = rows[peer]
            c_rss = max(c["backup_rss_mb"], c["restore_rss_mb"])
            p_rss = max(p["backup_rss_mb"], p["restore_rss_mb"])
            print(f"cairn/{peer}: backup {ratio(c['backup_mbps'], p['backup_mbps'])}, "
                  f"restore {ratio(c['restore_mbps'], p['restore_mbps'])}, "
                  f"peak RSS {ratio(c_rss, p_rss)}, "
                  f"repo size {ratio(c['repo_mb'], p['repo_mb'])}")
        if "restic" in rows:
            p = rows["restic"]
            ok = (c["backup_mbps"] >= TARGET_SPEEDUP * p["backup_mbps"]
                  and c["restore_mbps"] >= TARGET_SPEEDUP * p["restore_mbps"]
                  and max(c["backup_rss_mb"], c["restore_rss_mb"]) <= max(p["backup_rss_mb"], p["restore_rss_mb"]))
            print(f"target (>= {TARGET_SPEEDUP}x restic backup and restore, peak RSS <= restic): "
                  f"{'MET' if ok else 'NOT MET'}")
    if "cairn-enc" in rows:
        e = rows["cairn-enc"]
        for peer in ("restic", "cairn"):
            if peer in rows:
                p = rows[peer]
                print(f"cairn-enc/{peer}: backup {ratio(e['backup_mbps'], p['backup_mbps'])} "
                      f"(median {ratio(e['backup_mbps_median'], p['backup_mbps_median'])}), "
                      f"restore {ratio(e['restore_mbps'], p['restore_mbps'])} "
                      f"(median {ratio(e['restore_mbps_median'], p['restore_mbps_median'])}), "
                      f"repo size {ratio(e['repo_mb'], p['repo_mb'])}")
        print(f"cairn-enc restore check: {e['verified']}")
    daemon_report(rows)
    return rows


ENC_BACKUP_TARGET, ENC_RESTORE_TARGET, ENC_SIZE_TOLERANCE = 1.7, 1.2, 0.02


def daemon_report(rows: dict) -> None:
    """Encrypted cairnd against restic and against unencrypted cairnd, on medians (issue 9)."""
    if "cairnd-enc" not in rows:
        return
    e = rows["cairnd-enc"]
    print(f"\ncairnd-enc restore check: {e['verified']}")
    for peer in ("restic", "cairnd"):
        if peer in rows:
            p = rows[peer]
            print(f"cairnd-enc/{peer} (medians): backup {ratio(e['backup_mbps_median'], p['backup_mbps_median'])}, "
                  f"restore {ratio(e['restore_mbps_median'], p['restore_mbps_median'])}, "
                  f"repo size {ratio(e['repo_mb'], p['repo_mb'])}")
    for peer in ("restic", "cairnd"):
        if peer in rows:
            p = rows[peer]
            print(f"cpu seconds (medians) cairnd-enc / {peer}: backup {e['backup_cpu_median']:.2f} / "
                  f"{p['backup_cpu_median']:.2f}, restore {e['restore_cpu_median']:.2f} / "
                  f"{p['restore_cpu_median']:.2f}")
    if "cairnd" in rows and "restic" in rows:
        c, r = rows["cairnd"], rows["restic"]
        print(f"cairnd/restic (medians): backup {ratio(c['backup_mbps_median'], r['backup_mbps_median'])}, "
              f"restore {ratio(c['restore_mbps_median'], r['restore_mbps_median'])}")
    if "restic" in rows and "cairnd" in rows:
        r, c = rows["restic"], rows["cairnd"]
        checks = [
            (f"encrypted backup >= {ENC_BACKUP_TARGET}x restic",
             e["backup_mbps_median"] >= ENC_BACKUP_TARGET * r["backup_mbps_median"]),
            (f"encrypted restore >= {ENC_RESTORE_TARGET}x restic",
             e["restore_mbps_median"] >= ENC_RESTORE_TARGET * r["restore_mbps_median"]),
            (f"encrypted repository within {ENC_SIZE_TOLERANCE:.0%} of unencrypted",
             abs(e["repo_mb"] / c["repo_mb"] - 1) <= ENC_SIZE_TOLERANCE if c["repo_mb"] else False),
        ]
        for what, ok in checks:
            print(f"target {what}: {'MET' if ok else 'NOT MET'}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    ap.add_argument("--corpus-script", type=Path, default=DEFAULT_CORPUS_SCRIPT)
    ap.add_argument("--big-mib", type=int, default=None, help="size of the big mixed file (script default 512)")
    ap.add_argument("--tools", default="cairnd-enc,cairnd,restic",
                    help="any of cairnd-enc, cairnd, restic, borg, and cairn / cairn-enc (the store driven "
                         "directly, without the daemon: earlier figures)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rebuild-corpus", action="store_true")
    ap.add_argument("--no-verify", action="store_true", help="skip comparing Cairn's restore with the corpus")
    ap.add_argument("--fresh-fs", action="store_true",
                    help="restore onto a new ext4 file system made for this run (root; see common.fresh_fs)")
    args = ap.parse_args()
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    corpus = prepare_corpus(args, work)
    files, corpus_bytes = tree_bytes(corpus)
    tools: list[Tool] = []
    for name in [t.strip() for t in args.tools.split(",") if t.strip()]:
        if name not in TOOLS:
            print(f"unknown tool '{name}' (known: {', '.join(TOOLS)})", file=sys.stderr)
            return 2
        tool = TOOLS[name](work)
        if not tool.available():
            print(f"{name}: not installed, skipped (Debian package '{name}')", flush=True)
            continue
        print(f"{name}: {(tool.version().splitlines() or [''])[0]}", flush=True)
        tools.append(tool)
    if not tools:
        print("no tool ran", file=sys.stderr)
        return 1
    results = {t.name: ToolResult(t.name, version=t.version()) for t in tools}
    clean_outputs(tools)  # leftovers of an earlier invocation
    with contextlib.ExitStack() as stack:
        targets = work
        if args.fresh_fs:
            targets = stack.enter_context(fresh_fs(work, int(corpus_bytes * 1.3) * len(tools) * args.runs))
            print(f"restores go to a new ext4 file system at {targets}", flush=True)
        try:
            for run in range(1, args.runs + 1):  # interleaved, so background load hits every tool alike
                for tool in tools:
                    verify = tool.name.startswith("cairn") and not args.no_verify and run == args.runs
                    tool.corpus = corpus
                    bench_once(tool, results[tool.name], corpus, run, verify, targets)
        finally:
            clean_outputs(tools)
    results = list(results.values())
    rows = report(results, corpus_bytes, files)
    (work / "results.json").write_text(json.dumps({"corpus_bytes": corpus_bytes, "files": files, "tools": rows},
                                                  indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
