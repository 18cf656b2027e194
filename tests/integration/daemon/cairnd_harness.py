"""The harness of the daemon tests: a stand-in for systemd's notify socket, a handle on a
running cairnd process, config files, and tree snapshots that say what a restore must reproduce."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from certificates import make_certificates, openssl  # noqa: F401 - tests/ (the daemon tests take them from here)

BIN = os.path.dirname(sys.executable)
CAIRND = os.path.join(BIN, "cairnd")
CAIRN = os.path.join(BIN, "cairn")
READY_TIMEOUT = 20.0


class NotifyListener:
    """A datagram socket standing in for systemd's notification socket; records every message."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.messages: list[str] = []
        self._cond = threading.Condition()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(path)
        os.chmod(path, 0o777)  # a daemon running as another user must reach it too
        self._sock.settimeout(0.2)
        self._closed = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._closed:
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._cond:
                self.messages.extend(data.decode("utf-8", "replace").split("\n"))
                self._cond.notify_all()

    def wait_for(self, line: str, timeout: float, after: int = 0) -> bool:
        """Wait until a message line equal to (or starting with, for 'KEY=') `line` arrives."""

        def seen() -> bool:
            return any(m == line or (line.endswith("=") and m.startswith(line)) for m in self.messages[after:])

        with self._cond:
            return self._cond.wait_for(seen, timeout)

    def count(self) -> int:
        with self._cond:
            return len(self.messages)

    def close(self) -> None:
        self._closed = True
        self._thread.join(1)
        self._sock.close()


@dataclass
class Daemon:
    proc: subprocess.Popen
    socket: str
    notify: NotifyListener
    workdir: str
    stderr_path: str

    def cli(self, *args: str, timeout: float = 60, input: bytes | None = None) -> subprocess.CompletedProcess:
        """Run `cairn --socket S ARGS...`; stdout and stderr as text."""
        return subprocess.run(
            [CAIRN, "--socket", self.socket, *args],
            capture_output=True,
            timeout=timeout,
            text=True,
            env=env_for(),
            input=input,
        )

    def ok(self, *args: str, timeout: float = 60) -> str:
        """Run cairn and insist on exit status 0; return stdout."""
        r = self.cli(*args, timeout=timeout)
        assert r.returncode == 0, f"cairn {' '.join(args)} -> {r.returncode}\n{r.stdout}\n{r.stderr}"
        return r.stdout

    def channel(self, **options: int) -> grpc.Channel:
        return grpc.insecure_channel("unix:" + self.socket, options=list(options.items()))

    def log(self) -> str:
        with open(self.stderr_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def terminate(self, timeout: float) -> tuple[int, float]:
        """SIGTERM; return (exit status, seconds it took)."""
        start = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            # Say where it is stuck: faulthandler (PYTHONFAULTHANDLER, set by env_for) writes every
            # thread's stack to the log on SIGABRT.
            self.proc.send_signal(signal.SIGABRT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            stuck = f"cairnd did not exit within {timeout:.0f}s of SIGTERM\n{self.log()[-20000:]}"
            raise AssertionError(stuck) from None
        return code, time.monotonic() - start

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None


def env_for(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
    env.pop("CAIRN_SOCKET", None)
    env["PYTHONFAULTHANDLER"] = "1"  # a daemon stuck in a test says where (terminate() sends SIGABRT)
    env.update(extra or {})
    return env


def init_repo(path: str) -> str:
    """Create a plaintext (format 1) repository at `path` unless one is there, as `cairnd --init
    --no-encryption` does (daemon/runtime/preflight.py: the directory, mode 0700, then
    Repository.init_local), in this process: the command's own start cost 0.8 s per daemon test.
    test_daemon_first_run.py and the encryption tests run the command itself."""
    if not os.path.exists(path):
        from cairn.store.repository import Repository

        os.makedirs(path, mode=0o700, exist_ok=True)
        Repository.init_local(path, secret=None).close()
    return path


def init_encrypted_repo(tmp_path: Path) -> tuple[str, Path, Path]:
    """An encrypted repository at `tmp_path/repo` made by `cairnd --init` itself, and two passphrase
    files beside it: (repository, the full key's file, a second file for a write-only key that a
    test adds with `cairn key add --write-only`)."""
    repo = str(tmp_path / "repo")
    full_pw, wo_pw = tmp_path / "full.pass", tmp_path / "wo.pass"
    full_pw.write_text("the full passphrase\n")
    wo_pw.write_text("the write-only passphrase\n")
    r = subprocess.run([CAIRND, "--repo", repo, "--init", "--passphrase-file", str(full_pw)],
                       capture_output=True, text=True, timeout=60, env=env_for())
    assert r.returncode == 0, r.stderr
    return repo, full_pw, wo_pw


def write_config(path: str, repo: str, socket_path: str, sources: dict[str, str],
                 schedules: dict[str, dict[str, str]] | None = None, **daemon: object) -> str:
    """A TOML config with one [[source]] per name -> directory and extra [daemon] keys; the
    repository is initialised if missing."""
    init_repo(repo)
    lines = ["[repository]", f'path = "{repo}"', "", "[daemon]", f'socket = "{socket_path}"',
             f'state_dir = "{os.path.join(os.path.dirname(socket_path), "state")}"']
    for key, value in daemon.items():
        lines.append(f"{key} = {_toml(value)}")
    for name, directory in sources.items():
        lines += ["", "[[source]]", f'name = "{name}"', f'paths = ["{directory}"]', "watch = false"]
        if schedules and name in schedules:
            cron = ", ".join(f'{level} = "{expr}"' for level, expr in schedules[name].items())
            lines.append(f"schedule = {{ {cron} }}")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return f'"{value}"'


# ---- trees ----


def snapshot(root: str) -> dict[str, tuple]:
    """Everything a restore must reproduce: per path kind, mode, owner, mtime, content hash or target."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("symlink", os.readlink(full))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", mode, st.st_uid, st.st_gid, st.st_mtime_ns)
            else:
                with open(full, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
                out[rel] = ("file", mode, st.st_uid, st.st_gid, st.st_mtime_ns, st.st_size, digest)
    return out


def random_tree(root: str, total_bytes: int, file_bytes: int, seed: int = 0) -> None:
    """Files of incompressible bytes in a few directories (for the large-tree tests)."""
    os.makedirs(root, exist_ok=True)
    n = max(1, total_bytes // file_bytes)
    for i in range(n):
        d = os.path.join(root, f"d{i % 8}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"f{i:04d}.bin"), "wb") as f:
            f.write(os.urandom(file_bytes))


def next_local(hour: int, now: float) -> float:
    """The next time after `now` at which this host's local clock reads `hour`:00."""
    t = datetime.fromtimestamp(now).replace(minute=0, second=0, microsecond=0, hour=hour)
    while t.timestamp() <= now:
        t += timedelta(days=1)
    return t.timestamp()


def wait_until(predicate: Callable[[], Any], seconds: float, what: str) -> Any:
    """The first true value of `predicate()`, asked every 0.1 s; AssertionError naming `what`
    after `seconds`."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@functools.cache
def nobody() -> tuple[str, ...]:
    """The command prefix that runs a client as the user nobody, with no groups: a client that is
    not root. Where nobody cannot run the client as installed (a virtual environment below a
    directory only root may enter: a fresh clone in a private temporary directory, or under
    /root), it is given CAP_DAC_READ_SEARCH, as pgstack.py does for the postgres user: it then
    reads and searches what its permissions would not let it, and still writes only what they
    allow (what these tests are about)."""
    plain = ("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups")
    r = subprocess.run([*plain, CAIRN, "--version"], capture_output=True, cwd="/", env=env_for(), timeout=60)
    if r.returncode == 0:
        return plain
    return (*plain, "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search")


def free_port() -> int:
    """A TCP port on 127.0.0.1 free at this moment."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tcp_config(rundir: str, tmp_path: Path, tls_files: dict[str, str], src: str) -> tuple[str, str, str]:
    """A daemon configuration with source 'app' at `src` and a TCP listener on a free loopback
    port with TLS and the token of `tls_files`: (config path, socket path, TCP address)."""
    address = f"127.0.0.1:{free_port()}"
    sock = os.path.join(rundir, "tcp.sock")
    config = write_config(str(tmp_path / "cairn.toml"), str(tmp_path / "repo"), sock, {"app": src},
                          listen=address, tls_cert=tls_files["cert"], tls_key=tls_files["key"],
                          token_file=tls_files["token"])
    return config, sock, address


def wait_for_restore_slot(channel: grpc.Channel, within: float, failure: str) -> None:
    """Ask for a Restore on `channel` until one gets its first reply (a data stream slot came
    free; it is cancelled then): RESOURCE_EXHAUSTED meanwhile, AssertionError(`failure`) after
    `within` seconds, any other error raised."""
    from cairn.proto.cairn.v1 import cairn_pb2 as pb
    from cairn.proto.cairn.v1 import cairn_pb2_grpc as pb_grpc

    deadline = time.monotonic() + within
    while True:
        call = pb_grpc.CairnStub(channel).Restore(pb.RestoreRequest(set="latest"), timeout=30)
        try:
            next(call)
            call.cancel()
            return
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
            assert time.monotonic() < deadline, failure
            time.sleep(0.2)


@contextlib.contextmanager
def daemon_starter(rundir: str) -> Iterator[Callable[..., Daemon]]:
    """start(*args, ...) -> Daemon for real cairnd processes with work directories in `rundir`: the
    `start_daemon` fixture's, and that of fixtures of a wider scope (a daemon a module's tests
    share). Every daemon it started is killed at the exit."""
    started: list[Daemon] = []
    counter = iter(range(1000))

    def start(*args: str, socket_path: str | None = None, wait_ready: bool = True, prefix: tuple[str, ...] = (),
              watchdog_usec: int = 2_000_000, home: str | None = None) -> Daemon:
        n = next(counter)
        workdir = os.path.join(rundir, f"d{n}")
        os.makedirs(workdir)
        os.chmod(workdir, 0o777)
        sock = socket_path or os.path.join(workdir, "cairnd.sock")
        notify = NotifyListener(os.path.join(workdir, "notify"))
        stderr_path = os.path.join(workdir, "stderr.log")
        env = env_for({
            "NOTIFY_SOCKET": notify.path,
            "WATCHDOG_USEC": str(watchdog_usec),
            "CAIRN_HOME": home or os.path.join(workdir, "home"),
        })
        if "--repo" in args and "--read-only" not in args:
            init_repo(args[args.index("--repo") + 1])  # a missing repository is an error now
        argv = [*prefix, CAIRND, *args]
        if socket_path is None:
            argv += ["--socket", sock]
        with open(stderr_path, "wb") as err:
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, env=env)
        daemon = Daemon(proc, sock, notify, workdir, stderr_path)
        started.append(daemon)
        if wait_ready:
            deadline = time.monotonic() + READY_TIMEOUT
            while not notify.wait_for("READY=1", 0.2):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"cairnd did not become ready (exit {proc.poll()}):\n{daemon.log()}")
        return daemon

    try:
        yield start
    finally:
        for d in started:
            if d.proc.poll() is None:
                d.proc.kill()
                d.proc.wait(10)
            d.notify.close()
