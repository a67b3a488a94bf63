"""What bench/fuzz.py and bench/faults.py share: hpod processes on a throwaway data directory,
a throwaway RabbitMQ vhost, and the tables they keep in docs/hardening.md.

The campaign's own modules live with the tests (tests/fuzz/mutations.py, campaign.py,
faults.py) so that the short suite and the long runs send exactly the same things.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "hardening.md"
sys.path.insert(0, str(ROOT / "tests" / "fuzz"))
sys.path.insert(0, str(ROOT))  # this tree's hpod, not one installed in the venv

import campaign  # noqa: E402  (tests/fuzz, on the path just above)
import fault_audit  # noqa: E402
import mutations  # noqa: E402

__all__ = ["campaign", "fault_audit", "mutations"]


def free_port() -> int:
    """An unused loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def hpod_env(data_dir: Path, **settings: str) -> dict[str, str]:
    """The environment of hpod processes: their own data dir, port and token."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPOD_")}
    data_dir.mkdir(parents=True, exist_ok=True)
    env.update(
        HPOD_DATA_DIR=str(data_dir),
        HPOD_HTTP_PORT=str(free_port()),
        HPOD_API_TOKEN="bench-token-" + "x" * 16,
        HPOD_LOG_FORMAT="json",
        HPOD_CONFIG=str(data_dir / "no-config.toml"),
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
    )
    env.update({f"HPOD_{k.upper()}": v for k, v in settings.items()})
    return env


class Process:
    """An hpod process (daemon or worker) that can be started, killed and restarted."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.argv = [sys.executable, "-m", "hpod", *argv]
        self.env = env
        self.log_path = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The daemon's HTTP address."""
        return f"http://127.0.0.1:{self.env['HPOD_HTTP_PORT']}"

    @property
    def token(self) -> str:
        """The API token."""
        return self.env["HPOD_API_TOKEN"]

    def start(self, wait_healthy: bool = False, timeout: float = 90) -> bool:
        """Start; with `wait_healthy`, wait for /health 200 (False if it exits or times out)."""
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        return self.wait_healthy(timeout) if wait_healthy else True

    def wait_healthy(self, timeout: float = 90) -> bool:
        """Wait for /health to answer 200."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            if self.health() == 200:
                return True
            time.sleep(0.2)
        return False

    def health(self) -> int:
        """The status of GET /health (0 when nothing answers)."""
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=5) as resp:
                status: int = resp.status
                return status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return 0

    def alive(self) -> bool:
        """Whether the process runs."""
        return self.proc is not None and self.proc.poll() is None

    def rss_mib(self) -> float:
        """Resident memory of the process and its children, in MiB."""
        if not self.alive():
            return 0.0
        assert self.proc is not None
        root = psutil.Process(self.proc.pid)
        procs = [root, *root.children(recursive=True)]
        return sum(p.memory_info().rss for p in procs) / (1 << 20)

    def stop(self, timeout: float = 90) -> tuple[int | None, float]:
        """SIGTERM and wait; returns (exit code, seconds taken). Killed after `timeout`."""
        if not self.alive():
            return (self.proc.returncode if self.proc else None), 0.0
        assert self.proc is not None
        began = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        return code, time.monotonic() - began

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the process's log."""
        return self.log_path.read_text(errors="replace")[-chars:]


def rabbitmqctl(*args: str) -> str:
    """Run rabbitmqctl (needs root or the rabbitmq user); returns its output."""
    done = subprocess.run(
        ["rabbitmqctl", *args], capture_output=True, text=True, timeout=120, check=True
    )
    return done.stdout


def create_vhost(name: str) -> str:
    """A fresh vhost `name` with full rights for guest; returns its AMQP URL."""
    rabbitmqctl("add_vhost", name)
    rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    return f"amqp://guest:guest@127.0.0.1:5672/{urllib.parse.quote(name, safe='')}"


def delete_vhost(name: str) -> None:
    """Delete a vhost made by `create_vhost`."""
    rabbitmqctl("delete_vhost", name)


def commit() -> str:
    """The commit being measured (short hash, `+dirty` when the tree has changes other than
    docs/hardening.md, which the run itself writes one row at a time)."""
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            [
                *("git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"),
                *("--", ".", ":!docs/hardening.md"),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def update_table(name: str, header: list[str], key: list[str], row: dict[str, Any]) -> None:
    """Put `row` in the Markdown table between `<!-- name:start -->` and `<!-- name:end -->`
    of docs/hardening.md: it replaces the row with the same `key` columns, else it is added.
    Rows that are not in the table's format (such as a placeholder) are dropped."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = DOC.read_text()
    if start not in text or end not in text:
        raise SystemExit(f"{DOC} has no {start} ... {end} section")
    before, rest = text.split(start, 1)
    body, after = rest.split(end, 1)
    rows: list[dict[str, str]] = []
    for line in body.strip().splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == len(header) and not line.lstrip().startswith("| *"):
            rows.append(dict(zip(header, cells, strict=True)))
    new = {h: str(row.get(h, "")) for h in header}
    rows = [r for r in rows if [r[k] for k in key] != [new[k] for k in key]] + [new]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r[h] for h in header) + " |" for r in rows]
    DOC.write_text(before + start + "\n" + "\n".join(lines) + "\n" + end + after)
