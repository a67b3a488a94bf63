"""Run an hpod command under cProfile on every thread, for machines without py-spy.

    python bench/cprofile_daemon.py OUT.pstats run --no-workers

Each thread gets its own profiler as it starts (`threading.setprofile`), the main thread's
is enabled here; at exit (the daemon drains on SIGTERM and returns) all of them are merged
into OUT.pstats, read with `python -m pstats OUT.pstats` or `pstats.Stats`. Deterministic
profiling inflates the cost of small Python calls (a few times for call-heavy code), so
read shares, not milliseconds.
"""

from __future__ import annotations

import atexit
import cProfile
import pstats
import sys
import threading
from types import FrameType
from typing import Any

PROFILES: list[cProfile.Profile] = []


def _start_thread_profile(frame: FrameType, event: str, arg: Any) -> None:
    """The first profile event of a new thread: give the thread its own profiler."""
    profile = cProfile.Profile()
    PROFILES.append(profile)
    profile.enable()  # replaces this hook for the thread


def _dump(out: str) -> None:
    for profile in PROFILES:
        profile.disable()
    stats: pstats.Stats | None = None
    for profile in PROFILES:
        try:
            if stats is None:
                stats = pstats.Stats(profile)
            else:
                stats.add(profile)
        except TypeError:  # a thread that never made a call
            continue
    if stats is not None:
        stats.dump_stats(out)


def main() -> None:
    out, argv = sys.argv[1], sys.argv[2:]
    threading.setprofile(_start_thread_profile)
    atexit.register(_dump, out)
    main_profile = cProfile.Profile()
    PROFILES.append(main_profile)
    from hpod.cli import main as hpod_main

    main_profile.enable()
    try:
        code = hpod_main(argv)
    finally:
        main_profile.disable()
    sys.exit(code)


if __name__ == "__main__":
    main()
