"""`make install` / `make uninstall`: the documented system-wide install, verified as installed.

A package build stages the install below DESTDIR and the package manager unpacks that tree at
/; the first test does exactly that (tar keeps /lib when it is a symlink to usr/lib), so the
DESTDIR build is shown to run at its final path. Then, on the real root: `systemd-analyze
verify` on the installed unit as installed (its ExecStart /usr/bin/cairnd must exist), the
unit's Documentation= file exists, the installed `cairnd --config` runs the shipped minimal
configuration (only repository, state and socket moved to a temporary directory) and the
installed `cairn` takes a set through it. A plain `make install` (no DESTDIR) over it keeps an
edited configuration and runs; `make uninstall` removes the rest, and then the configuration.

These tests write to /opt/cairn, /usr/bin, /lib/systemd/system, /usr/share/doc and /etc/cairn,
so they need root and run only where Cairn is not installed already (CI machines); a lock
keeps two runs on one machine apart.
"""

from __future__ import annotations

import configparser
import fcntl
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "tests" / "integration" / "daemon"))
from cairnd_harness import NotifyListener, env_for  # noqa: E402

INSTALLED = {
    "venv": Path("/opt/cairn"),
    "cairnd": Path("/usr/bin/cairnd"),
    "cairn": Path("/usr/bin/cairn"),
    "unit": Path("/lib/systemd/system/cairnd.service"),
    "docs": Path("/usr/share/doc/cairn"),
    "config": Path("/etc/cairn/cairnd.toml"),
}
READY_TIMEOUT = 60.0

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="installs system-wide: needs root"),
    pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"),
    pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed"),
]


@pytest.fixture
def clean_root() -> Iterator[None]:
    """Exclusive use of the install locations, which must be free; emptied again afterwards."""
    with open("/run/lock/cairn-install-test.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        present = [str(p) for p in INSTALLED.values() if p.exists() or p.is_symlink()]
        if present or Path("/etc/cairn").exists():
            pytest.skip(f"Cairn is installed on this machine already ({', '.join(present) or '/etc/cairn'})")
        try:
            yield
        finally:
            make("uninstall")
            shutil.rmtree("/opt/cairn", ignore_errors=True)
            shutil.rmtree("/etc/cairn", ignore_errors=True)


def make(*args: str) -> subprocess.CompletedProcess:
    r = subprocess.run(["make", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=600,
                       env=env_for({"PIP_DISABLE_PIP_VERSION_CHECK": "1"}))
    assert r.returncode == 0, f"make {' '.join(args)} -> {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def verify_unit(unit: Path) -> list[str]:
    """systemd-analyze verify on the unit file as it lies; the lines about this unit."""
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True,
                       timeout=60)
    lines = (r.stdout + r.stderr).splitlines()
    about = [line for line in lines if unit.name in line]
    if r.returncode != 0 and not about:
        about = lines or [f"systemd-analyze exited with {r.returncode}"]
    return about


def unit_value(unit: Path, section: str, key: str) -> str:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str
    parser.read_string(unit.read_text())
    return parser[section][key]


def check_installed() -> None:
    """The unit as installed verifies, what it names exists, and the commands run."""
    unit = INSTALLED["unit"]
    assert unit.read_text() == (ROOT / "systemd" / "cairnd.service").read_text()  # installed unchanged
    assert verify_unit(unit) == []
    doc = unit_value(unit, "Unit", "Documentation")
    assert doc.startswith("file://") and Path(doc[len("file://"):]).is_file(), doc
    exec_start = unit_value(unit, "Service", "ExecStart").split()
    assert exec_start[0] == str(INSTALLED["cairnd"]) and os.access(exec_start[0], os.X_OK)
    assert Path(exec_start[2]) == INSTALLED["config"] and INSTALLED["config"].is_file()
    for name in ("operations.md", "monitoring/cairn.rules.yml", "monitoring/grafana-dashboard.json"):
        assert (INSTALLED["docs"] / name).is_file(), name
    for name in ("cairnd.toml.example", "cairnd-minimal.toml.example"):
        assert (INSTALLED["config"].parent / name).is_file(), name
    # The environment runs on the system's interpreter, not on anything in this checkout.
    out = subprocess.run([str(INSTALLED["venv"] / "bin" / "python"), "-c", "import cairn; print(cairn.__file__)"],
                         capture_output=True, text=True, timeout=60, cwd="/")
    assert out.stdout.startswith("/opt/cairn/lib/"), out
    version = subprocess.run([str(INSTALLED["cairnd"]), "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("cairnd ")


def run_minimal_config(tmp_path: Path) -> None:
    """The installed cairnd on the shipped minimal config (only its own paths moved); a set through cairn."""
    shipped = INSTALLED["config"].read_text()
    assert shipped == (ROOT / "systemd" / "cairnd-minimal.toml").read_text()
    run = Path("/tmp") / f"cairn-inst-{os.getpid()}"
    run.mkdir(mode=0o755)
    try:
        moved = {"/var/lib/cairn/repo": str(tmp_path / "repo"), "/var/lib/cairn/state": str(tmp_path / "state"),
                 "/run/cairn/cairnd.sock": str(run / "cairnd.sock")}
        text = shipped
        for old, new in moved.items():
            assert f'"{old}"' in text
            text = text.replace(f'"{old}"', f'"{new}"')
        config = tmp_path / "cairnd.toml"
        config.write_text(text)
        cairnd, cairn = str(INSTALLED["cairnd"]), str(INSTALLED["cairn"])
        # A missing repository is refused, with the command that creates it.
        r = subprocess.run([cairnd, "--config", str(config)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 1 and f"cairnd --config {config} --init" in r.stderr, r.stderr
        assert not (tmp_path / "repo").exists() and not (tmp_path / "state").exists()
        r = subprocess.run([cairnd, "--config", str(config), "--init", "--no-encryption"], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        notify = NotifyListener(str(run / "notify"))
        proc = subprocess.Popen([cairnd, "--config", str(config)], stdout=subprocess.DEVNULL,
                                stderr=open(tmp_path / "cairnd.log", "wb"),
                                env=env_for({"NOTIFY_SOCKET": notify.path}), cwd="/")
        try:
            deadline = time.monotonic() + READY_TIMEOUT
            while not notify.wait_for("READY=1", 0.2):
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "cairnd.log").read_text()
            r = subprocess.run([cairn, "--socket", moved["/run/cairn/cairnd.sock"], "backup", "--level", "full"],
                               capture_output=True, text=True, timeout=300)
            assert r.returncode == 0, r.stderr
            set_id = r.stdout.strip().splitlines()[-1]
            assert re.fullmatch(r"[0-9a-f]{64}", set_id), r.stdout
            r = subprocess.run([cairn, "--socket", moved["/run/cairn/cairnd.sock"], "ls", set_id, "/"],
                               capture_output=True, text=True, timeout=60)
            assert r.returncode == 0 and "hostname" in r.stdout, r.stdout + r.stderr
            proc.terminate()
            assert proc.wait(60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            notify.close()
    finally:
        shutil.rmtree(run, ignore_errors=True)


def new_at_root(stage: Path) -> list[str]:
    """What of the staged tree a package manager writes at /: every file and link, and the
    directories / does not have yet (parents first)."""
    out = []
    for dirpath, dirs, files in os.walk(stage):
        for name in sorted(dirs):
            rel = os.path.relpath(os.path.join(dirpath, name), stage)
            if os.path.islink(os.path.join(dirpath, name)) or not os.path.lexists("/" + rel):
                out.append("./" + rel)
        out += ["./" + os.path.relpath(os.path.join(dirpath, name), stage) for name in sorted(files)]
    return out


def check_uninstalled() -> None:
    make("uninstall")
    left = [str(p) for p in INSTALLED.values() if p.exists() or p.is_symlink()]
    assert left == [] and not Path("/etc/cairn").exists()


def test_staged_install_runs_at_root_and_a_plain_install_over_it_keeps_an_edited_config(clean_root, tmp_path):
    stage = tmp_path / "stage"
    make("install", f"DESTDIR={stage}")
    # Nothing in the staged tree refers to the staging directory.
    hits = subprocess.run(["grep", "-rlF", str(stage), str(stage)], capture_output=True, text=True)
    assert hits.stdout == ""
    # Unpacked at / as a package manager would: directory symlinks like /lib kept, and existing
    # directories left as they are (tar 1.34 makes every directory it extracts mode 0700 until it is
    # filled, / and /usr/lib included, which locks every other user out of the system meanwhile:
    # PostgreSQL tests running beside this one failed to start initdb). So only files, links and
    # directories new to / are unpacked.
    members = tmp_path / "members.txt"
    members.write_text("".join(f"{m}\n" for m in new_at_root(stage)))
    tar = subprocess.run(f"tar -C {stage} -cf - --no-recursion -T {members} | tar -C / -xf - --keep-directory-symlink",
                         shell=True, capture_output=True, text=True)
    assert tar.returncode == 0, tar.stderr
    check_installed()
    run_minimal_config(tmp_path)
    # A plain `make install` (no DESTDIR) over it: an operator's edited configuration survives
    # the re-install, and the re-installed commands run.
    edited = INSTALLED["config"].read_text() + "\n# edited\n"
    INSTALLED["config"].write_text(edited)
    make("install")
    assert INSTALLED["config"].read_text() == edited
    check_installed()
    # ... and the uninstall, which removes everything else.
    make("uninstall")
    assert INSTALLED["config"].read_text() == edited
    assert not INSTALLED["venv"].exists() and not INSTALLED["cairnd"].is_symlink()
    INSTALLED["config"].unlink()
    check_uninstalled()
