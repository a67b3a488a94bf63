"""A local worker dies with the daemon that started it, even when the daemon is SIGKILLed.

`hpod run` supervises its own Celery worker on the embedded broker. A daemon killed with
SIGKILL cannot stop it, and the orphan would keep taking trials next to the worker of the
restarted daemon. Linux's PR_SET_PDEATHSIG asks the kernel to send the worker SIGTERM (Celery's
warm shutdown: running trials finish) when its parent dies. No library wraps this one prctl
call, so it is made through ctypes; elsewhere it is a no-op.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent(expected_parent: int) -> None:
    """Have the kernel SIGTERM this process when its parent dies; exit at once if the parent
    (`expected_parent`, 0 if unknown) is already gone."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        return  # not fatal: the worker only loses the guarantee, and systemd still has it
    if expected_parent and os.getppid() != expected_parent:
        # The daemon died between fork and prctl: nobody will signal us.
        os.kill(os.getpid(), signal.SIGTERM)
