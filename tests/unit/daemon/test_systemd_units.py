"""The shipped systemd unit: systemd-analyze verify finds nothing, and the key settings hold."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[3] / "systemd" / "cairnd.service"
ORIGINAL_EXEC = "ExecStart=/usr/bin/cairnd "

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")


def existing_cairnd() -> str:
    """An executable that exists here, so verify can check ExecStart (the venv's cairnd if any)."""
    candidate = Path(sys.executable).with_name("cairnd")
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return shutil.which("true") or "/bin/true"


def verify(tmp_path: Path, text: str, name: str = "cairnd.service") -> list[str]:
    """Run systemd-analyze verify on `text`; return the lines that are about this unit file."""
    unit = tmp_path / name
    unit.write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    output = (result.stdout + result.stderr).splitlines()
    about_unit = [line for line in output if name in line or str(unit) in line]
    if result.returncode != 0 and not about_unit:
        about_unit = output or [f"systemd-analyze exited with {result.returncode}"]
    return about_unit


def runnable_unit() -> str:
    text = UNIT.read_text()
    assert ORIGINAL_EXEC in text
    return text.replace(ORIGINAL_EXEC, f"ExecStart={existing_cairnd()} ")


def test_unit_verifies_without_warnings(tmp_path):
    assert verify(tmp_path, runnable_unit()) == []


def test_verify_would_catch_a_broken_unit(tmp_path):
    # Guards the test above against passing because warnings were filtered away.
    broken = runnable_unit().replace("KillMode=mixed", "KillMode=mixd") + "\nBogusOption=1\n"
    problems = verify(tmp_path, broken)
    assert any("mixd" in line for line in problems)
    assert any("BogusOption" in line for line in problems)


def parse_unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # keys are case-sensitive
    parser.read_string(UNIT.read_text())
    return parser


def test_service_settings():
    service = parse_unit()["Service"]
    expected = {
        "Type": "notify",
        "NotifyAccess": "main",
        "ExecStart": "/usr/bin/cairnd --config /etc/cairn/cairnd.toml",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "WatchdogSec": "60",
        "Restart": "on-failure",
        "RuntimeDirectory": "cairn",
        "RuntimeDirectoryMode": "0750",
        "StateDirectory": "cairn",
        "KillMode": "mixed",
        "ProtectSystem": "strict",
        "ReadWritePaths": "/var/lib/cairn",
        "ProtectHome": "read-only",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    }
    for key, value in expected.items():
        assert service.get(key) == value, key
    assert "TimeoutStopSec" in service
    capabilities = set(service["CapabilityBoundingSet"].split())
    assert "CAP_DAC_READ_SEARCH" in capabilities
    # The daemon writes only its own directories: no blanket write access, no user switching.
    assert not capabilities & {"CAP_DAC_OVERRIDE", "CAP_SYS_ADMIN", "CAP_SETUID", "CAP_SETGID"}
    for key in ("ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups"):
        assert service.get(key) == "yes", key
