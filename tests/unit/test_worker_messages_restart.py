"""A local worker that keeps dying is restarted with a growing back-off, not every second."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
import structlog

from hpod.config import Settings
from hpod.daemon import local_workers
from hpod.daemon.local_workers import LocalWorkers


def test_a_worker_that_dies_at_once_is_restarted_after_a_growing_back_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command is a real process that exits at once (as a worker whose broker or
    settings are broken would): each restart waits longer, and says so in its log line."""
    dying = [sys.executable, "-c", "print('boom'); raise SystemExit(3)"]
    monkeypatch.setattr(local_workers, "worker_argv", lambda *_a, **_k: dying)

    async def run() -> list[dict[str, object]]:
        workers = LocalWorkers(Settings(data_dir=tmp_path), 1)
        with structlog.testing.capture_logs() as logs:
            workers.start()
            while sum(e["event"] == "workers.died" for e in logs) < 3:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
            await workers.stop(grace=1)
        return [e for e in logs if e["event"] == "workers.died"]

    died = asyncio.run(asyncio.wait_for(run(), timeout=60))
    assert [e["code"] for e in died] == [3, 3, 3]
    assert [e["restarts"] for e in died] == [1, 2, 3]
    delays = [float(str(e["restart_in_s"])) for e in died]
    assert delays[0] < delays[1] < delays[2], delays
