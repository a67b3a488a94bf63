"""Every file the daemon reads at start, when bad, stops it with exit 2 and one line.

Issue 12, finding 11: a bad ``HPOD_STRATEGIES_FILE`` made `hpod run` exit 1 with a traceback,
and systemd (``Restart=on-failure``) restarted it every 5 s forever. The units do not restart on
exit 2 (``RestartPreventExitStatus=2``), which `hpod run` uses for every invalid configuration:
the message names the file and the key, and `hpod config check` reports the same line.

The files: the settings file (``HPOD_CONFIG``), ``HPOD_MODES_FILE``, ``HPOD_STRATEGIES_FILE`` and
``api_token_file``. "Unreadable" is a directory in their place (the tests run as root in CI
containers, where a mode-000 file is still readable); "not UTF-8" a file of two bytes ff fe.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import hpod_env

from hpod.cli import main

UNITS = Path(__file__).resolve().parents[2] / "systemd"
NOT_UTF8 = b"\xff\xfe"

#: (setting whose file is bad, file contents or None for a directory, text the error names).
CASES: dict[str, tuple[str, bytes | None, str]] = {
    "strategies-bad-sampler": (
        "strategies_file",
        b'[x]\nsampler = "hill"\n',
        "strategies file {path}: [x].sampler: Input should be 'tpe'",
    ),
    "strategies-bad-option": (
        "strategies_file",
        b'[x]\nsampler = "tpe"\nsampler_options = { n_startup = 3 }\n',
        "strategies file {path}: [x].sampler_options:",
    ),
    "strategies-reserved-name": (
        "strategies_file",
        b'[auto]\nsampler = "tpe"\n',
        "strategies file {path}: [auto]: not a usable name",
    ),
    "strategies-toml-syntax": ("strategies_file", b"[x\n", "cannot read strategies file {path}:"),
    "strategies-unreadable": ("strategies_file", None, "cannot read strategies file {path}:"),
    "strategies-not-utf8": ("strategies_file", NOT_UTF8, "cannot read strategies file {path}:"),
    "modes-bad-ladder": (
        "modes_file",
        b"[fast]\nladder = [0.5]\n",
        "modes file {path}: [fast].ladder:",
    ),
    "modes-toml-syntax": ("modes_file", b"[fast\n", "cannot read modes file {path}:"),
    "modes-unreadable": ("modes_file", None, "cannot read modes file {path}:"),
    "modes-not-utf8": ("modes_file", NOT_UTF8, "cannot read modes file {path}:"),
    "config-bad-value": ("config", b"max_inflight = 0\n", "max_inflight: Input should be greater"),
    "config-unknown-key": ("config", b"max_inflite = 3\n", "max_inflite: Extra inputs"),
    "config-toml-syntax": ("config", b"max_inflight = [\n", "settings file {path}: Invalid value"),
    "config-unreadable": ("config", None, "settings file {path}: not a regular file"),
    "config-not-utf8": ("config", NOT_UTF8, "settings file {path}: 'utf-8' codec"),
    "token-too-short": (
        "api_token_file",
        b"short\n",
        "api_token_file: {path} must hold a token of at least 16 characters",
    ),
    "token-unreadable": ("api_token_file", None, "api_token_file: cannot read {path}: Is a dir"),
    "token-not-utf8": ("api_token_file", NOT_UTF8, "api_token_file: cannot read {path}: not UTF-8"),
}

#: The ones `hpod run` is started for (a process each, ~1.5 s): every file, and all three of
#: the issue's kinds for the strategies file. The others run in-process through config check.
RUN_CASES = [
    "strategies-bad-sampler",
    "strategies-unreadable",
    "strategies-toml-syntax",
    "modes-bad-ladder",
    "config-bad-value",
    "config-unreadable",
    "token-not-utf8",
]


def _bad_file(tmp_path: Path, case: str) -> tuple[dict[str, str], str]:
    """The environment with case's bad file in place, and the error text expected."""
    setting, contents, expected = CASES[case]
    path = tmp_path / f"{setting}.toml"
    if contents is None:
        path.mkdir()
    else:
        path.write_bytes(contents)
    env = hpod_env(tmp_path / "data", **{setting: str(path)})
    if setting == "api_token_file":
        del env["HPOD_API_TOKEN"]  # hpod_env's token would make the file irrelevant at run time
    return env, expected.format(path=path)


def _restart_prevented(unit: str = "hpod.service") -> set[int]:
    """The exit statuses for which systemd does not restart `unit`."""
    text = (UNITS / unit).read_text()
    values = re.findall(r"^RestartPreventExitStatus=(.*)$", text, re.MULTILINE)
    return {int(v) for line in values for v in line.split()}


def _use_settings_of(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """This process's HPOD_* variables replaced by those of `env`, for the test only."""
    for name in [k for k in os.environ if k.startswith("HPOD_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith("HPOD_"):
            monkeypatch.setenv(name, value)


@pytest.mark.parametrize("case", RUN_CASES)
def test_hpod_run_exits_2_with_one_line_naming_file_and_key(tmp_path: Path, case: str) -> None:
    env, expected = _bad_file(tmp_path, case)
    proc = subprocess.run(
        [sys.executable, "-m", "hpod", "run", "--no-workers"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.returncode in _restart_prevented()
    assert proc.stderr.splitlines() == [proc.stderr.rstrip("\n")], proc.stderr  # one line
    assert proc.stderr.startswith("hpod: invalid configuration: ")
    assert expected in proc.stderr
    assert not (tmp_path / "data" / "studies.journal").exists()  # refused before starting


def test_hpod_worker_exits_2_on_a_bad_settings_file(tmp_path: Path) -> None:
    """The worker unit reads the same hpod.toml: it must not restart-loop on it either."""
    env, expected = _bad_file(tmp_path, "config-unknown-key")
    proc = subprocess.run(
        [sys.executable, "-m", "hpod", "worker", "-c", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.returncode in _restart_prevented("hpod-worker@.service")
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("hpod: invalid configuration: ") and expected in proc.stderr


@pytest.mark.parametrize("case", sorted(CASES))
def test_config_check_reports_the_same_line(
    tmp_path: Path, case: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    env, expected = _bad_file(tmp_path, case)
    _use_settings_of(env, monkeypatch)
    assert main(["config", "check"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("hpod: invalid configuration: ")
    assert expected in err


def test_a_missing_settings_file_is_no_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """As documented in config/hpod.toml: HPOD_CONFIG naming no file means defaults."""
    _use_settings_of(hpod_env(tmp_path / "data"), monkeypatch)
    assert main(["config", "check"]) == 0
    assert capsys.readouterr().out.startswith("configuration OK")
