"""The embedded default broker: a crash-safe kombu transport over one shared directory.

When no RabbitMQ is configured, the daemon and the local Celery worker processes on the same
machine exchange messages through a directory (``broker_url = "hpodfs://"``). This module is
kombu's stock ``filesystem`` transport with the parts that make it unsafe for that job replaced:

* **Atomic publish.** The stock ``_put`` creates ``<t>_<uuid>.<queue>.msg`` and then writes to
  it, so a reader can open a half-written or empty file (that killed a worker). Here the message
  is written to ``<final>.<owner>.tmp`` (a name no reader matches), flushed and fsynced, renamed
  to its final name (atomic on POSIX) and the directory is fsynced, so a message is either
  absent or complete and durable. Names start with ``time.time_ns()`` (wall clock, zero-padded),
  so the FIFO order is kept across reboots; the stock transport used ``monotonic()``.
* **Exclusive claim.** The stock ``_get`` ``shutil.move``s the file to ``/tmp``, which is a
  copy + delete when ``/tmp`` is another file system, so two consumers could both get one
  message. Here a consumer claims a message with one ``os.rename`` inside the same folder to
  ``<original>.<pid>-<start>.claimed``; exactly one process can win that rename.
* **At-least-once.** The claimed file is deleted only when the message is acked (or rejected
  without requeue). Rejecting with requeue, ``basic_recover`` and the restore kombu's QoS does
  when a channel closes rename the claimed file back to its ``.msg`` name, so the message is not
  re-published *and* left claimed. Claimed files of processes that died (SIGKILL, OOM, power
  loss) are renamed back by any live consumer: once at channel start, then at most every
  ``claim_recovery_interval`` seconds from ``_get``.
* **Redelivered.** A message put back (requeued, restored or recovered from a dead consumer)
  gets ``_r`` after the ``<time>_<uuid>`` part of its name, and is delivered with
  ``delivery_info["redelivered"] = True``, as AMQP does: a consumer that may have acted on it
  before (the daemon told a result, then died before its event went out) knows to check.
* **Bounded queues.** A queue declared with ``x-max-length`` and/or ``x-message-ttl`` (ms) is
  trimmed when a message is added to it: expired messages and the oldest beyond the length are
  deleted (RabbitMQ's ``drop-head``), claimed ones are left alone. Declarations are per
  process, so the bounds apply to the messages that process publishes (enough for hpod's
  dead letters, which only the daemon publishes).

* **Woken, not polled.** The stock transport sleeps ``polling_interval`` between empty reads,
  which cost every trial that interval twice on average (the task to a worker, its result
  back): 50 ms at hpod's 0.05 s. Here a consumer with nothing to read waits on an inotify
  watch of the folder (Linux, through ``inotify_simple``) and wakes as soon as a message is
  renamed into it; ``polling_interval`` stays the longest wait, so a missed or unavailable
  watch (another OS, the per-user inotify limit reached) only falls back to polling.

Everything else (exchange tables in ``control_folder``, fanout, topic and direct routing) is the
stock transport's. Transport options: ``data_folder_in``, ``data_folder_out``, ``control_folder``
(created if missing), ``polling_interval``, ``claim_recovery_interval`` (seconds, default 5) and
``fsync`` (default true; false trades durability on power loss for speed). The stock
``store_processed`` option is not supported. The directory must be on a local file system of a
single machine: liveness of a claimer is judged by its pid.

Importing this module registers the transport as ``hpodfs`` in
``kombu.transport.TRANSPORT_ALIASES``, so import it before a Connection/Celery app resolves
``hpodfs://``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from queue import Empty
from typing import Any

import psutil  # type: ignore[import-untyped]  # types-psutil is not installed
from kombu.exceptions import ChannelError
from kombu.transport import TRANSPORT_ALIASES, filesystem, virtual
from kombu.utils import json as kombu_json

__all__ = [
    "ALIAS",
    "Channel",
    "Transport",
    "recover_orphans",
]

ALIAS = "hpodfs"

MSG_SUFFIX = ".msg"
TMP_SUFFIX = ".tmp"
CLAIM_SUFFIX = ".claimed"
CORRUPT_SUFFIX = ".corrupt"
#: Marks a message that was delivered before (see `_redelivered_name`).
REDELIVERED_MARK = "_r"

DEFAULT_RECOVERY_INTERVAL = 5.0

Payload = dict[str, Any]

logger = logging.getLogger(__name__)

# kombu's JSON (it round-trips the types kombu puts in headers), typed for this module.
_dumps: Callable[[Any], str] = kombu_json.dumps
_loads: Callable[[bytes], Any] = kombu_json.loads


# --------------------------------------------------------------------------------------------
# Owner tokens: who wrote a .tmp file / claimed a .msg file, and is that process still alive?
# --------------------------------------------------------------------------------------------


def _start_stamp(pid: int) -> str | None:
    """A clock-independent start stamp of process `pid`: None if it is gone or a zombie.

    On Linux it is field 22 of ``/proc/<pid>/stat``, the start in clock ticks since boot,
    which no wall-clock adjustment changes (psutil's ``create_time`` adds the boot time and so
    moves when NTP steps the clock). Elsewhere it is "" for any live process: unknown.
    """
    if sys.platform.startswith("linux"):
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:  # gone, or hidden from us (hidepid): ask the kernel directly
            return "" if psutil.pid_exists(pid) else None
        fields = stat[stat.rindex(b")") + 2 :].split()  # the name in (...) may hold spaces
        if fields[0] in (b"Z", b"X"):  # zombie (killed, not reaped yet) or dead
            return None
        return fields[19].decode("ascii")
    try:
        if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return None
    except psutil.NoSuchProcess:
        return None
    except psutil.AccessDenied:
        pass
    return ""


_owner_cache: tuple[int, str] | None = None


def _owner_token() -> str:
    """``<pid>-<start stamp>`` (or ``<pid>``) of the calling process, recomputed after a fork."""
    global _owner_cache
    pid = os.getpid()
    if _owner_cache is None or _owner_cache[0] != pid:
        stamp = _start_stamp(pid)
        _owner_cache = (pid, f"{pid}-{stamp}" if stamp else str(pid))
    return _owner_cache[1]


def _parse_owned(name: str, suffix: str) -> tuple[str, int, str] | None:
    """Split ``<original>.<pid>[-<stamp>]<suffix>`` into (original, pid, stamp or "")."""
    if not name.endswith(suffix):
        return None
    original, _, owner = name[: -len(suffix)].rpartition(".")
    if not original.endswith(MSG_SUFFIX):
        return None
    pid_text, _, stamp = owner.partition("-")
    if not pid_text.isdigit():
        return None
    return original, int(pid_text), stamp


def _owner_alive(pid: int, stamp: str) -> bool:
    """Whether the process that wrote ``<pid>-<stamp>`` may still ack or finish a write.

    Caveat, pid reuse: pids are recycled, so a pid alone could name an unrelated live process
    (e.g. a restarted container whose new worker gets the same small pid, or this very process)
    and the orphan would not be recovered while that process lives. So on Linux the claimer's
    start stamp is part of the name and must match too; what remains is the same pid *and* the
    same start tick, which in practice only a reboot can produce. On other systems only the pid
    is checked. Either way the error is "alive when dead" (recovery is delayed until the
    impostor exits), never "dead when alive" (a duplicate), since a pid in use is not reissued.
    A zombie counts as dead: it can never ack.
    """
    current = _start_stamp(pid)
    if current is None:
        return False
    return not stamp or not current or current == stamp


def recover_orphans(folder: str | os.PathLike[str], names: Iterable[str] | None = None) -> int:
    """Put back messages claimed by dead processes and delete their unfinished writes.

    Returns how many messages were made ready again. Safe to run from many processes at once:
    each orphan is moved by a single rename that only one of them wins.
    """
    folder = os.fspath(folder)
    if names is None:
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            return 0
    recovered = 0
    for name in names:
        if name.endswith(CLAIM_SUFFIX):
            parsed = _parse_owned(name, CLAIM_SUFFIX)
            if parsed is None or _owner_alive(parsed[1], parsed[2]):
                continue
            try:
                os.rename(
                    os.path.join(folder, name), os.path.join(folder, _redelivered_name(parsed[0]))
                )
            except FileNotFoundError:
                continue  # acked, or recovered by another process first
            recovered += 1
            logger.warning(
                "hpodfs: recovered message %s claimed by dead process %d", parsed[0], parsed[1]
            )
        elif name.endswith(TMP_SUFFIX):
            parsed = _parse_owned(name, TMP_SUFFIX)
            if parsed is None or _owner_alive(parsed[1], parsed[2]):
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(folder, name))
    return recovered


def _fsync_dir(folder: str) -> None:
    """Make a rename in `folder` durable (POSIX only; Windows cannot open a directory)."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unclaimed_name(path: str) -> str:
    """The ``.msg`` path a claimed path came from."""
    return path[: -len(CLAIM_SUFFIX)].rpartition(".")[0]


def _redelivered_name(path: str) -> str:
    """``<time>_<uuid>_r.<queue>.msg`` for ``<time>_<uuid>.<queue>.msg``: the same place in
    the FIFO order (names sort by their time), marked as delivered before."""
    folder, name = os.path.split(path)
    first, _, rest = name.partition(".")
    if first.endswith(REDELIVERED_MARK):
        return path
    return os.path.join(folder, f"{first}{REDELIVERED_MARK}.{rest}")


def _is_redelivered(name: str) -> bool:
    return name.partition(".")[0].endswith(REDELIVERED_MARK)


def _published_ns(name: str) -> int:
    """When a message was published (the ``<time_ns>`` its name starts with); 0 if unknown."""
    try:
        return int(name.partition("_")[0])
    except ValueError:
        return 0


def _check_queue_name(queue: object) -> str:
    if not isinstance(queue, str) or not queue or any(c in queue for c in ("/", "\\", "\0")):
        raise ChannelError(f"hpodfs: invalid queue name {queue!r}")
    return queue


class _Claims:
    """Delivery tag -> claimed path, shared by the channels of one connection.

    Shared because kombu may settle a message on another channel of the same connection than
    the one whose ``_get`` claimed it (``Transport._reject_inbound_message`` uses the first
    channel). A lock because Celery may ack from a pool thread.
    """

    def __init__(self) -> None:
        self._paths: dict[str, str] = {}
        self._lock = threading.Lock()

    def add(self, tag: str, path: str) -> None:
        with self._lock:
            self._paths[tag] = path

    def pop(self, tag: str) -> str | None:
        with self._lock:
            return self._paths.pop(tag, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._paths)


class Channel(filesystem.Channel):
    """A filesystem channel with atomic puts, rename claims and ack-time deletion."""

    supports_fanout = True

    def __init__(self, connection: Transport, **kwargs: Any) -> None:
        super().__init__(connection, **kwargs)
        self._claims: _Claims = connection.claims
        self._bounds: dict[str, tuple[int | None, float | None]] = connection.bounds
        self._pending: dict[str, deque[str]] = {}
        options = self.transport_options
        self._fsync = bool(options.get("fsync", True))
        self._recovery_interval = float(
            options.get("claim_recovery_interval", DEFAULT_RECOVERY_INTERVAL)
        )
        for folder in (self._in_folder, self._out_folder, os.fspath(self.control_folder)):
            os.makedirs(folder, exist_ok=True)
        self._next_recovery = 0.0
        self._maybe_recover()

    # -- folders ---------------------------------------------------------------------------

    @property
    def _in_folder(self) -> str:
        return str(self.data_folder_in)

    @property
    def _out_folder(self) -> str:
        return str(self.data_folder_out)

    def _ready_names(self, queue: str) -> list[str]:
        """Names of the ready messages of `queue`, oldest first (no .tmp/.claimed files)."""
        wanted = f"{queue}{MSG_SUFFIX}"
        try:
            names = os.listdir(self._in_folder)
        except OSError as exc:
            raise ChannelError(f"hpodfs: cannot list {self._in_folder!r}") from exc
        # `<time_ns>_<uuid>` contains no dot, so the rest of a name is exactly `<queue>.msg`
        # for a ready message and longer for a temporary or claimed one.
        return sorted(name for name in names if name.partition(".")[2] == wanted)

    def _maybe_recover(self) -> None:
        now = time.monotonic()
        if now < self._next_recovery:
            return
        self._next_recovery = now + self._recovery_interval
        if recover_orphans(self._in_folder):
            self._pending.clear()  # recovered messages are older than the names listed

    # -- publish ---------------------------------------------------------------------------

    # kombu's AbstractChannel names the second argument `message`, its filesystem Channel
    # `payload`: no override can match both names; kombu passes it positionally.
    def _put(self, queue: str, payload: Payload, **kwargs: Any) -> None:
        """Write `payload` to a temporary file, fsync it, then rename it into `queue`."""
        queue = _check_queue_name(queue)
        folder = self._out_folder
        final = os.path.join(folder, f"{time.time_ns():020d}_{uuid.uuid4()}.{queue}{MSG_SUFFIX}")
        tmp = f"{final}.{_owner_token()}{TMP_SUFFIX}"
        data = _dumps(payload).encode("utf-8")
        try:
            with open(tmp, "xb") as f:
                f.write(data)
                if self._fsync:
                    f.flush()
                    os.fsync(f.fileno())
            os.rename(tmp, final)
            if self._fsync:
                _fsync_dir(folder)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise ChannelError(f"hpodfs: cannot add a message to {folder!r}") from exc
        if queue in self._bounds:
            self._trim(queue, *self._bounds[queue])

    def _new_queue(self, queue: str, **kwargs: Any) -> None:
        """Remember the bounds (``x-max-length``, ``x-message-ttl``) a queue is declared with."""
        arguments = kwargs.get("arguments") or {}
        max_length = arguments.get("x-max-length")
        ttl_ms = arguments.get("x-message-ttl")
        if max_length is not None or ttl_ms is not None:
            self._bounds[queue] = (
                None if max_length is None else int(max_length),
                None if ttl_ms is None else float(ttl_ms),
            )

    def _trim(self, queue: str, max_length: int | None, ttl_ms: float | None) -> None:
        """Delete the ready messages of `queue` past their TTL, then the oldest beyond
        `max_length` (names sort oldest first and start with their publish time in ns)."""
        names = self._ready_names(queue)
        drop: list[str] = []
        if ttl_ms is not None:
            oldest_kept = time.time_ns() - int(ttl_ms * 1_000_000)
            drop = [n for n in names if _published_ns(n) < oldest_kept]
            names = [n for n in names if _published_ns(n) >= oldest_kept]
        if max_length is not None and len(names) > max_length:
            drop.extend(names[: len(names) - max_length])
        for name in drop:
            with contextlib.suppress(FileNotFoundError):  # claimed or trimmed meanwhile
                os.unlink(os.path.join(self._in_folder, name))
        if drop:
            self._pending.pop(queue, None)

    # -- consume ---------------------------------------------------------------------------

    def _get(self, queue: str, timeout: float | None = None) -> Payload:
        """Claim and return the oldest ready message of `queue`, or raise ``queue.Empty``.

        The directory is listed only when the names from the previous listing are used up;
        names that other consumers claimed meanwhile just lose the rename.
        """
        self._maybe_recover()
        pending = self._pending.setdefault(queue, deque())
        listed = False
        while True:
            if not pending:
                if listed:
                    raise Empty()
                pending.extend(self._ready_names(queue))
                listed = True
                continue
            payload = self._claim(pending.popleft())
            if payload is not None:
                return payload

    def _claim(self, name: str) -> Payload | None:
        """Rename `name` to a claimed name of ours and read it; None when another won it."""
        path = os.path.join(self._in_folder, name)
        claimed = f"{path}.{_owner_token()}{CLAIM_SUFFIX}"
        try:
            os.rename(path, claimed)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ChannelError(f"hpodfs: cannot claim {path!r}") from exc
        try:
            with open(claimed, "rb") as f:
                raw = f.read()
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.rename(claimed, path)
            raise ChannelError(f"hpodfs: cannot read {claimed!r}") from exc
        try:
            payload = _loads(raw)
            if not isinstance(payload, dict) or not isinstance(payload.get("properties"), dict):
                raise ValueError("not a kombu message")
        except ValueError:  # includes JSONDecodeError and UnicodeDecodeError
            logger.error("hpodfs: quarantined unreadable message %s%s", path, CORRUPT_SUFFIX)
            with contextlib.suppress(OSError):
                os.rename(claimed, path + CORRUPT_SUFFIX)
            return None
        # kombu stamps the delivery tag at *publish* time and stores it in the message, so every
        # fanout copy and every redelivery would carry the same tag. Give each claim its own tag,
        # as AMQP does, so that tags map one-to-one to claimed files.
        tag = str(uuid.uuid4())
        payload["properties"]["delivery_tag"] = tag
        if _is_redelivered(name):
            info = payload["properties"].get("delivery_info")
            if not isinstance(info, dict):
                info = payload["properties"]["delivery_info"] = {}
            info["redelivered"] = True
        self._claims.add(tag, claimed)
        return payload

    # -- settle ----------------------------------------------------------------------------

    def _discard(self, tag: str) -> bool:
        """Delete the claimed file of `tag`; False if `tag` is not a claim of this connection."""
        path = self._claims.pop(tag)
        if path is None:
            return False
        try:
            os.unlink(path)
        except FileNotFoundError:
            logger.warning("hpodfs: %s vanished before its ack (taken as orphaned?)", path)
        except OSError:
            logger.exception("hpodfs: cannot delete acked message %s", path)
        return True

    def _requeue(self, tag: str) -> bool:
        """Rename the claimed file of `tag` back to its ready name; False if not ours."""
        path = self._claims.pop(tag)
        if path is None:
            return False
        try:
            os.rename(path, _redelivered_name(_unclaimed_name(path)))
        except FileNotFoundError:
            logger.warning("hpodfs: %s vanished before its requeue", path)
        except OSError as exc:
            raise ChannelError(f"hpodfs: cannot requeue {path!r}") from exc
        self._pending.clear()  # list again, so the message is next, as in AMQP
        return True

    def basic_ack(self, delivery_tag: str, multiple: bool = False) -> None:
        """Delete the message's claimed file, then forget it (``multiple`` is ignored)."""
        self._discard(delivery_tag)
        super().basic_ack(delivery_tag, multiple=multiple)

    def basic_reject(self, delivery_tag: str, requeue: bool = False) -> None:
        """Put the message back (requeue) or delete it; never publishes a copy."""
        settled = self._requeue(delivery_tag) if requeue else self._discard(delivery_tag)
        # Once settled here, QoS must only forget the tag: with requeue=True it would _restore.
        super().basic_reject(delivery_tag, requeue=requeue and not settled)

    def _restore(self, message: Any) -> None:
        """Restore an unacked message (channel close, recover): rename, do not re-publish."""
        if not self._requeue(message.delivery_tag):
            super()._restore(message)

    def basic_get(self, queue: str, no_ack: bool = False, **kwargs: Any) -> Any:
        """Get one message; with ``no_ack`` it is deleted at once, as it will never be acked."""
        message = super().basic_get(queue, no_ack=no_ack, **kwargs)
        if message is not None and no_ack:
            self._discard(message.delivery_tag)
        return message

    def basic_consume(
        self,
        queue: str,
        no_ack: bool,
        callback: Callable[[Any], Any],
        consumer_tag: str,
        **kwargs: Any,
    ) -> None:
        """Consume; for a ``no_ack`` consumer each message is deleted when delivered."""
        super().basic_consume(queue, no_ack, callback, consumer_tag, **kwargs)
        if not no_ack:
            return
        deliver: Callable[[Payload], Any] = self.connection._callbacks[queue]

        def _deliver_and_discard(raw_message: Payload) -> Any:
            self._discard(raw_message["properties"]["delivery_tag"])
            return deliver(raw_message)

        self.connection._callbacks[queue] = _deliver_and_discard

    # -- queue management ------------------------------------------------------------------

    def _size(self, queue: str) -> int:
        """Ready messages of `queue` (not the claimed ones, not unfinished writes)."""
        return len(self._ready_names(queue))

    def _purge(self, queue: str) -> int:
        """Delete the ready messages of `queue`; claimed ones are left to their consumers."""
        self._pending.pop(queue, None)
        count = 0
        for name in self._ready_names(queue):
            with contextlib.suppress(FileNotFoundError):  # claimed meanwhile
                os.unlink(os.path.join(self._in_folder, name))
                count += 1
        return count


class _Arrivals:
    """Waits until a message may have arrived in a folder: an inotify watch where there is
    one, a plain sleep where not (the caller reads the folder again either way)."""

    def __init__(self, folder: str) -> None:
        self._watch: Any = None
        try:
            from inotify_simple import INotify, flags  # type: ignore[import-untyped]

            watch = INotify()
            try:
                # Every message enters the folder by a rename: a publish (tmp -> msg), a
                # requeue or a recovery (claimed -> msg).
                watch.add_watch(folder, flags.MOVED_TO)
            except OSError:
                watch.close()
                raise
            self._watch = watch
        except (ImportError, OSError) as exc:
            logger.debug("hpodfs: no inotify watch on %s (%s): polling", folder, exc)

    def wait(self, seconds: float) -> None:
        """Return when a message is renamed into the folder, or after `seconds`."""
        if self._watch is None:
            time.sleep(seconds)
            return
        # Events that came while the folder was being read are still queued on the watch,
        # so a message that landed after the read wakes this wait at once.
        self._watch.read(timeout=max(0, round(seconds * 1000)))

    def close(self) -> None:
        """Release the watch (its file descriptor)."""
        if self._watch is not None:
            with contextlib.suppress(OSError):
                self._watch.close()
            self._watch = None


class Transport(filesystem.Transport):
    """The ``hpodfs://`` transport: kombu's filesystem transport made crash-safe."""

    Channel = Channel
    # Exchange declarations are per-process state; keep ours apart from the stock transport's.
    global_state = virtual.BrokerState()
    driver_type = "filesystem"
    driver_name = ALIAS

    def __init__(self, client: Any, **kwargs: Any) -> None:
        self.claims = _Claims()
        #: queue -> (x-max-length, x-message-ttl in ms), from this process's declarations.
        self.bounds: dict[str, tuple[int | None, float | None]] = {}
        self._arrivals: _Arrivals | None = None
        super().__init__(client, **kwargs)

    def drain_events(self, connection: Any, timeout: float | None = None) -> None:
        """Deliver one message, waiting up to `timeout` seconds (None: for ever).

        kombu's virtual transport sleeps ``polling_interval`` after each empty read; this
        waits on `_Arrivals` instead, at most ``polling_interval`` at a time.
        """
        started = time.monotonic()
        while True:
            try:
                self.cycle.get(self._deliver, timeout=timeout)
                return
            except Empty:
                elapsed = time.monotonic() - started
                if timeout is not None and elapsed >= timeout:
                    raise TimeoutError from None
                wait = float(self.polling_interval or 0.0)
                if timeout is not None:
                    wait = min(wait, timeout - elapsed)
                self._arrivals_of_folder().wait(wait)

    def _arrivals_of_folder(self) -> _Arrivals:
        if self._arrivals is None:
            options = self.client.transport_options
            self._arrivals = _Arrivals(str(options.get("data_folder_in", ".")))
        return self._arrivals

    def close_connection(self, connection: Any) -> None:
        """Close the channels, then the inotify watch."""
        super().close_connection(connection)
        if self._arrivals is not None:
            self._arrivals.close()
            self._arrivals = None


TRANSPORT_ALIASES[ALIAS] = "hpod.fs_transport:Transport"
