"""The systemd units, checked by systemd's own tools and against mcsync's command line.

`systemd-analyze verify` needs every Exec binary to exist, so the units are verified as a copy whose
ExecStart points at this installation's `mcsync` instead of /opt/mcsync/bin/mcsync; nothing else is
changed. The tool comes with Debian's `systemd` package (CI installs it); without it the test is
skipped on a developer's machine and fails in CI.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mcsync.cli import build_parser

from .conftest import REPO

UNITS = REPO / "systemd"
SERVICES = ("mcsync.service", "mcsync-daemon.service")
INSTALLED = "/opt/mcsync/bin/mcsync"


def analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is missing: .ci/run installs Debian's systemd package")
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    return tool


def directives(unit: str) -> dict[str, list[str]]:
    """Key → values in file order (systemd allows a key more than once)."""
    found: dict[str, list[str]] = {}
    for line in (UNITS / unit).read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


@pytest.fixture
def units(tmp_path) -> Path:
    mcsync = Path(sys.executable).with_name("mcsync")
    assert mcsync.exists(), "mcsync is not installed in this environment (pip install -e .)"
    for unit in UNITS.iterdir():
        (tmp_path / unit.name).write_text(unit.read_text().replace(INSTALLED, str(mcsync)))
    return tmp_path


def test_the_units_pass_systemd_analyze_verify(units):
    result = subprocess.run([analyze(), "verify", "--man=no", "mcsync.service", "mcsync.timer",
                             "mcsync-daemon.service"], cwd=units, capture_output=True, text=True, timeout=60)
    # warnings (an unknown key, a value systemd cannot parse) leave the exit code 0: any output fails
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@pytest.mark.parametrize("unit", SERVICES)
def test_the_services_are_hardened(units, unit):
    result = subprocess.run([analyze(), "security", "--offline=true", "--threshold=20", unit], cwd=units,
                            capture_output=True, text=True, timeout=60)
    exposure = re.search(r"Overall exposure level for \S+: (\d+\.\d)", result.stdout)
    assert exposure is not None, result.stdout + result.stderr
    assert result.returncode == 0 and float(exposure.group(1)) <= 2.0, exposure.group(0)
    found = directives(unit)
    for key in ("ProtectSystem", "ProtectHome", "PrivateTmp", "NoNewPrivileges", "RestrictAddressFamilies",
                "SystemCallFilter", "StateDirectory", "ConfigurationDirectory", "LoadCredential"):
        assert found.get(key), f"{unit} lacks {key}="
    assert found["ProtectSystem"] == ["strict"] and found["CapabilityBoundingSet"] == [""]
    assert "@system-service" in found["SystemCallFilter"]
    # SQLite's temporary files stay in the state directory (vdirsyncer#1113: no writable temp dir under systemd)
    env = dict(value.split("=", 1) for value in found["Environment"])
    state = f"/var/lib/{found['StateDirectory'][0]}"
    assert env["SQLITE_TMPDIR"] == state and env["MCSYNC_STATE__PATH"].startswith(state + "/")
    # keys come from the credentials directory, which only this unit can read
    credentials = {value.split(":", 1)[0] for value in found["LoadCredential"]}
    assert all(env[key].removeprefix("%d/") in credentials for key in env if key.endswith("__KEY_FILE"))


def test_the_daemon_unit_speaks_the_notify_protocol_and_is_restarted_on_failure():
    found = directives("mcsync-daemon.service")
    assert found["Type"] == ["notify"] and found["NotifyAccess"] == ["main"]
    assert found["Restart"] == ["on-failure"] and found["WatchdogSec"]
    assert found["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert found["RestartPreventExitStatus"] == ["2"]                   # a configuration error is not retried
    assert "mcsync.timer" in found["Conflicts"]


@pytest.mark.parametrize(("unit", "command"), [("mcsync.service", "sync"), ("mcsync-daemon.service", "daemon")])
def test_exec_start_is_a_valid_mcsync_command_line(unit, command):
    [exec_start] = directives(unit)["ExecStart"]
    argv = shlex.split(exec_start)
    assert argv[0] == INSTALLED
    args = build_parser().parse_args(argv[1:])
    assert args.command == command and args.log_format == "json" and args.config == "/etc/mcsync/mcsync.toml"
