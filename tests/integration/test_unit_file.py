"""systemd/callbackd.service: `systemd-analyze verify` is clean and the exposure level is 2.0 or lower."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "callbackd.service"


@pytest.fixture(scope="module")
def analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:  # make test installs Debian's systemd package for this tool
        raise RuntimeError("systemd-analyze is missing: apt-get install systemd")
    return tool


@pytest.fixture
def unit(tmp_path: Path) -> Path:
    # the same unit, with ExecStart pointing at this checkout's callbackd (not installed in /usr/bin here)
    exe = Path(sys.executable).parent / "callbackd"
    text = UNIT.read_text().replace("/usr/bin/callbackd", str(exe))
    out = tmp_path / "callbackd.service"
    out.write_text(text)
    return out


def test_verify_is_clean(analyze: str, unit: Path):
    for name, cmd in (("user", ["getent", "passwd", "callbackd"]), ("group", ["getent", "group", "asterisk"])):
        if subprocess.run(cmd, capture_output=True).returncode != 0:
            raise RuntimeError(f"the unit's {name} is missing on this machine (make test creates it)")
    r = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    problems = [line for line in (r.stdout + r.stderr).splitlines()
                if line.strip() and "Failed to connect to bus" not in line]
    assert r.returncode == 0 and problems == [], "\n".join(problems)


def test_exposure_is_2_or_lower(analyze: str, unit: Path):
    r = subprocess.run([analyze, "security", "--offline=yes", str(unit)], capture_output=True, text=True)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout + r.stderr)
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) <= 2.0, r.stdout


def test_the_unit_says_what_the_daemon_does():
    text = UNIT.read_text()
    for line in ("Type=notify", "WatchdogSec=", "ExecReload=/bin/kill -HUP $MAINPID", "Restart=on-failure",
                 "StateDirectory=callbackd", "LogsDirectory=callbackd", "LoadCredential=", "User=callbackd",
                 "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
                 "RestrictAddressFamilies=", "SystemCallFilter=@system-service", "RestartPreventExitStatus=78"):
        assert line in text, line
