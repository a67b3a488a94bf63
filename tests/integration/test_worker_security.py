"""Workers accept JSON only: a pickled task is refused before any of its code runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import DaemonFactory, eventually

pytestmark = pytest.mark.broker


class Exploit:
    """Unpickling this object would create a marker file (any code could run instead)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_a_pickled_task_is_refused(
    rabbitmq: str, start_daemon: DaemonFactory, start_worker, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """A task serialised with pickle reaches the worker and is refused, unexecuted."""
    from hpod.config import Settings
    from hpod.messaging import EVALUATE_TASK
    from hpod.workers.celery_config import make_celery

    daemon = start_daemon("--no-workers", broker_url=rabbitmq)
    worker = start_worker(daemon.env, concurrency=1)
    marker = tmp_path / "pwned"
    app = make_celery(Settings(broker_url=rabbitmq, data_dir=tmp_path / "client"))
    app.conf.accept_content = ["json", "pickle"]  # the attacker's side may send anything
    app.send_task(EVALUATE_TASK, kwargs={"payload": Exploit(marker)}, serializer="pickle")
    eventually(lambda: "disallowed" in worker.log().lower(), 30, 0.2, lambda: worker.log()[-2000:])
    assert not marker.exists()
