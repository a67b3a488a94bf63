"""The module `celery -A hpod.workers.celery_app worker` loads: the app instance, built from
the settings by `hpod.workers.celery_config.make_celery` when a worker starts."""

import os
import warnings

from celery.exceptions import SecurityWarning

from hpod.workers.celery_config import make_celery
from hpod.workers.parent import die_with_parent

if os.environ.get("HPOD_LOCAL_WORKER") == "1":
    # Started by `hpod run` as its own child: the operator already chose the daemon's user;
    # repeating Celery's root warning on every demo run only hides the progress bar.
    warnings.filterwarnings("ignore", message="You're running the worker", category=SecurityWarning)
    die_with_parent(int(os.environ.get("HPOD_DAEMON_PID", "0")))

app = make_celery()
