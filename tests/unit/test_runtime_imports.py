"""Training code stays out of the daemon and the workers (issue 17, item 6).

The strategy policy's training (`hpod.policies.strategy.suites`, `simulate`, `train`) and its
learner process (`learner`, started as ``python -m``) are for `hpod policy train` and the
learner alone: the daemon and the workers must run without loading them, so that their memory,
start-up time and failure modes do not depend on code they never run. The check imports every
module of `hpod.daemon` and `hpod.workers` in a fresh interpreter and reads `sys.modules`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import hpod

#: Modules of the training path, by their full names.
TRAINING = [f"hpod.policies.strategy.{name}" for name in ("suites", "simulate", "train", "learner")]

IMPORT_RUNTIME = """
import importlib, json, pkgutil, sys
import hpod.daemon, hpod.workers
for package in (hpod.daemon, hpod.workers):
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        # celery_app builds the worker's app from the settings at import: not a library module
        if info.name != "hpod.workers.celery_app":
            importlib.import_module(info.name)
print(json.dumps(sorted(sys.modules)))
"""


def test_the_daemon_and_workers_import_no_training_code() -> None:
    """Every module of the daemon and the workers imports without the training modules."""
    root = Path(hpod.__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_RUNTIME],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=root,
    )
    assert result.returncode == 0, result.stderr
    loaded = set(json.loads(result.stdout))
    assert "hpod.daemon.service" in loaded and "hpod.workers.tasks" in loaded
    assert "hpod.policies.strategy.agent" in loaded  # the policy itself is runtime code
    assert sorted(loaded & set(TRAINING)) == []
