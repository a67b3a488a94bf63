"""systemd's notify protocol: READY=1, STOPPING=1, RELOADING=1 and watchdog pings.

Written by hand because it is one datagram on a Unix socket: the `systemd-python` binding needs
libsystemd headers to build, and the small PyPI packages for it are unmaintained. Without
``$NOTIFY_SOCKET`` (not under systemd) every call does nothing.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time

import structlog

log = structlog.get_logger("hpod.notify")


def notify(*states: str) -> bool:
    """Send `states` (e.g. ``"READY=1"``) to systemd; False when not run by systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            # Never block the event loop on a receiver that is not reading.
            sock.send("\n".join(states).encode(), socket.MSG_DONTWAIT)
    except OSError as exc:
        log.warning("notify.failed", error=repr(exc))
        return False
    return True


def reloading() -> bool:
    """Tell systemd a reload started (it expects READY=1 when it is done)."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}")


def watchdog_interval() -> float | None:
    """Seconds between watchdog pings (half of WatchdogSec), or None when it is off."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and int(pid) != os.getpid()):
        return None
    return int(usec) / 1e6 / 2


async def watchdog() -> None:
    """Ping systemd's watchdog from the event loop: if the loop hangs, the pings stop."""
    interval = watchdog_interval()
    if interval is None:
        return
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval)
