"""The shipped systemd units: `systemd-analyze verify` accepts them, and they say what we promise.

The units are copied to a temporary directory with the ExecStart= path rewritten from
/opt/hpod/venv/bin/hpod to this venv's `hpod`, because `verify` checks that every Exec* command
exists. The template hpod-worker@.service is verified through its instance hpod-worker@1.service:
given a path to an instance in the same directory, systemd-analyze (checked with systemd 252)
loads the template from there, so no symlink is needed. Without systemd-analyze these tests skip,
or fail when HPOD_REQUIRE_SERVICES=1 (CI), as the broker and storage tests do.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hpod.config import Settings

UNITS = Path(__file__).resolve().parents[2] / "systemd"
SHIPPED_HPOD = "/opt/hpod/venv/bin/hpod"
REQUIRED = os.environ.get("HPOD_REQUIRE_SERVICES") == "1"


def _systemd_analyze() -> str:
    """The path of systemd-analyze; skip (locally) or fail (CI) when it is not installed."""
    path = shutil.which("systemd-analyze")
    if path is not None:
        return path
    message = "systemd-analyze is not installed (Debian package: systemd)"
    if REQUIRED:
        pytest.fail(f"{message}; HPOD_REQUIRE_SERVICES=1 requires the unit files to be verified")
    pytest.skip(f"{message}; install it to verify the unit files")


def _copy_units(directory: Path, exec_path: Path) -> Path:
    """Copy both unit files into `directory`, with ExecStart= pointing at `exec_path`."""
    for name in ("hpod.service", "hpod-worker@.service"):
        text = (UNITS / name).read_text()
        assert SHIPPED_HPOD in text, f"{name} no longer runs {SHIPPED_HPOD}"
        (directory / name).write_text(text.replace(SHIPPED_HPOD, str(exec_path)))
    return directory


def _verify(directory: Path, *units: str) -> tuple[int, list[str]]:
    """Run `systemd-analyze verify` on `units`; its exit code and the lines about hpod's units.

    systemd-analyze also loads the host's units and may print warnings about them (noise that
    depends on the machine); only lines that mention hpod concern us.
    """
    env = {**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": "cat"}
    proc = subprocess.run(
        [_systemd_analyze(), "verify", *(str(directory / unit) for unit in units)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    lines = (proc.stdout + proc.stderr).splitlines()
    return proc.returncode, [line for line in lines if "hpod" in line]


@pytest.fixture
def unit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The units, runnable on this machine: ExecStart= is this venv's `hpod`."""
    # Not named after the test: a directory name with "hpod" in it would defeat the filter.
    directory = tmp_path_factory.mktemp("units")
    hpod = Path(sys.executable).parent / "hpod"
    assert os.access(hpod, os.X_OK), f"{hpod} is missing: install the package (make install)"
    return _copy_units(directory, hpod)


@pytest.mark.parametrize("unit", ["hpod.service", "hpod-worker@1.service"])
def test_unit_verifies_without_warnings(unit_dir: Path, unit: str) -> None:
    code, ours = _verify(unit_dir, unit)
    report = "\n".join(ours)
    assert code == 0 and not ours, f"systemd-analyze verify {unit}: exit {code}\n{report}"


def test_verify_loads_the_worker_template_through_its_instance(tmp_path: Path) -> None:
    """A broken template fails the instance's verification: the test above is not vacuous."""
    directory = _copy_units(tmp_path, Path("/nonexistent/bin/hpod"))
    code, ours = _verify(directory, "hpod-worker@1.service")
    assert code != 0
    assert any("hpod-worker@1.service" in line and "/nonexistent/bin/hpod" in line for line in ours)


# --- what the units promise (no systemd needed) ----------------------------------------------


def _directives(name: str) -> dict[str, list[str]]:
    """`Key` → its values in the unit file, over all sections (a key may repeat)."""
    directives: dict[str, list[str]] = {}
    for raw in (UNITS / name).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        directives.setdefault(key.strip(), []).append(value.strip())
    return directives


def _seconds(value: str) -> float:
    """A systemd time span written as plain seconds ("90", "90s")."""
    match = re.fullmatch(r"(\d+)s?", value)
    assert match, f"write time spans in plain seconds here, not {value!r}"
    return float(match.group(1))


def test_daemon_unit_notifies_reloads_and_drains() -> None:
    d = _directives("hpod.service")
    assert d["Type"] == ["notify"]
    assert d["NotifyAccess"] == ["main"]
    assert d["WatchdogSec"] == ["30"]
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert d["ExecStart"] == [f"{SHIPPED_HPOD} run --no-workers"]
    # The drain must end before systemd's SIGKILL, with room for the shutdown after it.
    drain = Settings.model_fields["drain_timeout"].default
    assert _seconds(d["TimeoutStopSec"][0]) >= drain + 30


def test_daemon_unit_gets_the_token_as_a_credential() -> None:
    d = _directives("hpod.service")
    assert "api-token:/etc/hpod/api-token" in d["LoadCredential"]
    assert "HPOD_API_TOKEN_FILE=%d/api-token" in d["Environment"]


def test_worker_unit_shuts_down_warm() -> None:
    d = _directives("hpod-worker@.service")
    assert d["Type"] == ["simple"]
    assert d["KillMode"] == ["mixed"]  # SIGTERM to Celery's main process only
    # Longer than the default trial_timeout (600 s) plus Celery's hard-limit margin (30 s).
    assert _seconds(d["TimeoutStopSec"][0]) > 630
    assert "LoadCredential" not in d  # workers need no API token


def test_units_share_user_environment_and_state() -> None:
    """On one machine the daemon and the workers share /var/lib/hpod: same user, same paths."""
    daemon, worker = _directives("hpod.service"), _directives("hpod-worker@.service")
    for key in ("User", "Group", "EnvironmentFile", "StateDirectory", "ConfigurationDirectory"):
        assert daemon[key] == worker[key], key
    assert "HPOD_DATA_DIR=/var/lib/hpod" in daemon["Environment"]
    assert "HPOD_DATA_DIR=/var/lib/hpod" in worker["Environment"]
    for d in (daemon, worker):
        assert d["ProtectSystem"] == ["strict"]
        assert d["NoNewPrivileges"] == ["yes"]
        assert d["PrivateTmp"] == ["yes"]
