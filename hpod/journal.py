"""Group commit for Optuna's journal file: many storage operations, one durable write.

Optuna's :class:`~optuna.storages.journal.JournalFileBackend` turns every storage operation
(create a trial, set a param, a user attribute, a state) into its own lock + write + fsync,
which caps a journal at a few hundred trials per second. :class:`GroupCommitJournalBackend`
lets a caller wrap a batch of operations in :meth:`~GroupCommitJournalBackend.group`: the
process holds the journal's write lock for the whole group, buffers the operations' logs in
memory (while still replaying them, so Optuna learns trial ids as usual) and writes them with
one write and one fsync when the group exits. The group is durable when ``__exit__``
returns, so callers acknowledge work (answer a client, dispatch a trial) only after that.

The file keeps Optuna's own line format, so the ``optuna`` CLI, optuna-dashboard and a plain
``JournalFileBackend`` read it unchanged. Outside a group the backend writes each call
durably, like Optuna's.

All writers of one file must share its write lock (hpod's processes use
:class:`hpod.engine.KernelJournalLock` through :func:`hpod.engine.make_storage`): a group
numbers its buffered logs on the assumption that nobody else appends while it holds the lock.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import threading
import time
from collections.abc import Generator, Iterator
from typing import Any

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock
from optuna.storages.journal._file import BaseJournalFileLock  # not re-exported; stable ABC

__all__ = [
    "GroupCommitJournalBackend",
    "JournalCorrupt",
    "JournalGroupError",
    "JournalTruncated",
    "check_journal",
    "check_mark",
    "repair_journal",
    "storage_group",
    "write_mark",
]

_CHUNK = 1 << 20


class JournalGroupError(RuntimeError):
    """A group's commit failed, so this process's view of the journal no longer matches it.

    Raised by every later call on the backend. The file itself is consistent (see
    :meth:`GroupCommitJournalBackend.group`): build a new storage to go on.
    """


class GroupCommitJournalBackend(JournalFileBackend):
    """A :class:`~optuna.storages.journal.JournalFileBackend` that can group writes.

    Args:
        file_path: The journal file (created when missing).
        lock_obj: The write lock every writer of the file uses; Optuna's symlink lock when
            omitted, as for ``JournalFileBackend``.
    """

    def __init__(self, file_path: str, lock_obj: BaseJournalFileLock | None = None) -> None:
        lock = lock_obj or JournalFileSymlinkLock(file_path)
        super().__init__(file_path, lock_obj=lock)
        self._path = file_path
        self._write_lock = lock
        self._broken: BaseException | None = None
        # The open group: its thread and what the file held when it began.
        self._owner: int | None = None
        self._base_number = 0  # log number of the first buffered log
        self._base_offset = 0  # byte offset where it will be written
        self._entry_size = 0  # file size when the group began (> base: a torn last line)
        self._lines: list[bytes] = []
        # Per buffered line, the log to replay as it is (`_replayable`), or None: parse it.
        self._logs: list[dict[str, Any] | None] = []
        # The last line boundary this object knows (log number, byte offset), so opening a
        # group scans only what other processes appended since.
        self._known_number = 0
        self._known_offset = 0
        #: Durable writes made (groups committed, single appends): a caller sees from it
        #: that writing works again after a fault.
        self.commits = 0

    @property
    def durable_offset(self) -> int:
        """Bytes of the file known to hold whole, durable operations (a lower bound)."""
        return self._known_offset

    @property
    def broken(self) -> bool:
        """True once a write failed: this object no longer matches the file (build anew)."""
        return self._broken is not None

    @contextlib.contextmanager
    def group(self) -> Iterator[None]:
        """Group the storage operations made inside the ``with`` block into one durable write.

        On entry the process takes the journal's write lock and keeps it until the group's
        logs are on disk, so no other writer appends in between: logs reach the file in the
        order this process replayed them. A group belongs to the thread that opened it, and
        one opened inside it on that thread joins it. Appends from another thread while it is
        open raise :class:`RuntimeError` (waiting for the lock would deadlock on
        ``JournalStorage``'s own lock, held by the waiting thread).

        The logs are written when the outermost group exits, also when its body raised: the
        storage has already applied them in memory, and the file must not fall behind. If
        that write or its fsync fails, the error propagates and the backend is closed (every
        later call raises :class:`JournalGroupError`): treat none of the group's operations
        as done. The file is truncated back to where the group began (had that failed too,
        it may end with a prefix of the group: whole lines that readers take as written, and
        a torn last line that they ignore and the next write removes). The in-memory
        storage still holds the group's operations: replace it with a new one.
        """
        self._check_usable()
        me = threading.get_ident()
        if self._owner == me:
            yield
            return
        self._write_lock.acquire()
        try:
            self._begin(me)
        except BaseException:
            self._write_lock.release()
            raise
        try:
            yield
        finally:
            try:
                if self._lines:
                    self._commit(self._lines)
            finally:
                self._owner = None
                self._lines = []  # replaced, not cleared: a reader may hold the old list
                self._logs = []
                self._write_lock.release()

    def read_logs(self, log_number_from: int) -> Generator[dict[str, Any], None, None]:
        """Logs from ``log_number_from`` on: the file's, then those buffered by an open group.

        The single-writer fast path: when the file ends where this object last saw it end
        (one ``stat``), there is nothing new and the file is not opened; a buffered log
        whose every field reads back from JSON as it is (`_replayable`: a parameter, a
        state, an intermediate value, a bare new trial) is replayed without a parse. Other
        logs are replayed from their JSON line, exactly as a reader of the file will.
        """
        self._check_usable()
        if self._owner is None:
            if log_number_from == self._known_number and self._size() == self._known_offset:
                return
            read = 0
            for log in super().read_logs(log_number_from):
                read += 1
                yield log
            end = log_number_from + read
            offset = self._log_number_offset.get(end)
            if offset is not None and end >= self._known_number:
                self._known_number, self._known_offset = end, offset
            return
        base, lines, logs = self._base_number, self._lines, self._logs
        buffered = len(lines)
        if log_number_from < base:
            # The lock keeps the file at `base` lines; the slice only guards a generator
            # that is consumed after the group committed.
            yield from itertools.islice(super().read_logs(log_number_from), base - log_number_from)
        for i in range(max(log_number_from - base, 0), buffered):
            plain = logs[i]
            # Replay what the file will hold (JSON turns tuples into lists, keys into str).
            yield plain if plain is not None else json.loads(lines[i])

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        """Buffer ``logs`` in the open group, or write them durably at once outside one."""
        self._check_usable()
        # Encoding first makes an unserializable log fail before anything is kept, as in
        # Optuna's backend; the bytes are those of JournalFileBackend.append_logs.
        lines = [(json.dumps(log, separators=(",", ":")) + "\n").encode() for log in logs]
        owner = self._owner
        if owner == threading.get_ident():
            self._lines.extend(lines)
            self._logs.extend(_replayable(log) for log in logs)
            return
        if owner is not None:
            raise RuntimeError("journal group open on another thread: write from that thread")
        self._write_lock.acquire()
        try:
            fd = os.open(self._path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
            try:
                size = os.fstat(fd).st_size
                end = _end_of_last_line(fd, size)
                _drop_torn_line(fd, size, end)
                try:
                    _write_all(fd, b"".join(lines))
                    os.fsync(fd)
                except BaseException as exc:
                    # A prefix may be on disk: cut it back, and close this object as after a
                    # failed group, so the caller reads the file anew before going on.
                    self._broken = exc
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, end)
                        os.fsync(fd)
                    raise
                self.commits += 1
                if end == self._known_offset:  # nobody else wrote since: these follow ours
                    self._advance(self._known_number, end, lines)
            finally:
                os.close(fd)
        finally:
            self._write_lock.release()

    def _begin(self, owner: int) -> None:
        """Count the file's complete lines (log numbers) and open the group for `owner`
        (without opening the file when it ends where this object last saw it end)."""
        number, offset = self._known_number, self._known_offset
        pos = offset
        if self._size() != offset:
            with open(self._path, "rb") as f:
                f.seek(offset)
                while chunk := f.read(_CHUNK):
                    newlines = chunk.count(b"\n")
                    if newlines:
                        number += newlines
                        offset = pos + chunk.rindex(b"\n") + 1
                    pos += len(chunk)
        self._known_number, self._known_offset = number, offset
        self._base_number, self._base_offset, self._entry_size = number, offset, pos
        self._lines = []
        self._owner = owner

    def _commit(self, lines: list[bytes]) -> None:
        """Write a group's lines with one write and one fsync, or roll back and close."""
        fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            if size != self._entry_size:
                # Our log numbers assumed the file stood still: writing now would attach our
                # ops to other trials. Nothing is written; the group is lost.
                exc = JournalGroupError(
                    f"{self._path} changed while this process held its write lock: "
                    "a writer is not using the same lock"
                )
                self._broken = exc
                raise exc
            try:
                _drop_torn_line(fd, size, self._base_offset)
                _write_all(fd, b"".join(lines))
                os.fsync(fd)
            except BaseException as exc:
                self._broken = exc
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, self._base_offset)
                    os.fsync(fd)
                raise
            self.commits += 1
        finally:
            os.close(fd)
        self._advance(self._base_number, self._base_offset, lines)

    def _advance(self, number: int, offset: int, lines: list[bytes]) -> None:
        """`lines` were written durably from log `number` at byte `offset`: record where each
        starts, so that Optuna's reader seeks straight to the next unread log instead of
        rereading the file from the top, and where the file now ends."""
        offsets = self._log_number_offset
        for line in lines:
            offsets[number] = offset
            number += 1
            offset += len(line)
        offsets[number] = offset
        self._known_number, self._known_offset = number, offset

    def _size(self) -> int:
        try:
            return os.stat(self._path).st_size
        except FileNotFoundError:
            return -1

    def _check_usable(self) -> None:
        if self._broken is not None:
            raise JournalGroupError(
                f"a group commit to {self._path} failed; build a new storage"
            ) from self._broken


#: The Optuna journal operations replayed without a JSON parse when every field is one of
#: these (`_replayable`); the operation code and worker id come with every log.
_PLAIN_FIELDS = {
    4: frozenset({"study_id", "datetime_start"}),  # CREATE_TRIAL without a template trial
    5: frozenset({"trial_id", "param_name", "param_value_internal", "distribution"}),
    6: frozenset({"trial_id", "state", "values", "datetime_start", "datetime_complete"}),
    7: frozenset({"trial_id", "step", "intermediate_value"}),
}
_SCALARS = (str, int, float, bool, type(None))


def _replayable(log: dict[str, Any]) -> dict[str, Any] | None:
    """`log` as JSON gives it back (a new dict), when that needs no parse; else None.

    Only the logs of `_PLAIN_FIELDS`, and only when every value is a plain scalar (exactly
    `str`, `int`, `float`, `bool` or None: not a subclass such as numpy's float64, which
    JSON turns into a float) or a list of them. An operation code or a state (`IntEnum`s) is
    kept as its int, as JSON does; a float keeps its value through JSON (NaN and infinities too).
    """
    fields = _PLAIN_FIELDS.get(log.get("op_code"))  # type: ignore[arg-type]
    if fields is None:
        return None
    out: dict[str, Any] = {}
    for key, value in log.items():
        if key not in fields and key not in ("op_code", "worker_id"):
            return None
        kind = type(value)
        if kind in _SCALARS:
            out[key] = value
        elif key in ("op_code", "state") and isinstance(value, int):
            out[key] = int(value)
        elif kind is list and all(type(item) in _SCALARS for item in value):
            out[key] = list(value)
        else:
            return None
    return out


def _end_of_last_line(fd: int, size: int) -> int:
    """The offset just past the file's last newline (its size unless a torn line ends it)."""
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return size
    end = size
    while end > 0:
        start = max(end - _CHUNK, 0)
        chunk = os.pread(fd, end - start, start)
        i = chunk.rfind(b"\n")
        if i >= 0:
            return start + i + 1
        end = start
    return 0


def _drop_torn_line(fd: int, size: int, end: int) -> None:
    """Cut a torn last line (a writer killed mid-write while holding the lock).

    No reader ever returned it, and appending after it would fuse it with the next log into
    one undecodable line that stops every reader of the file.
    """
    if size > end:
        os.ftruncate(fd, end)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def storage_group(storage: optuna.storages.BaseStorage) -> contextlib.AbstractContextManager[None]:
    """Group `storage`'s writes made in the ``with`` block, where the storage can.

    That is the backend's :meth:`GroupCommitJournalBackend.group` for a ``JournalStorage`` on
    a :class:`GroupCommitJournalBackend`, and a no-op otherwise: RDB storages commit each
    call in its own transaction and stay so.
    """
    backend = getattr(storage, "_backend", None) if isinstance(storage, JournalStorage) else None
    if isinstance(backend, GroupCommitJournalBackend):
        return backend.group()
    return contextlib.nullcontext()


# --- checking and repairing a journal file -----------------------------------------------


class JournalCorrupt(ValueError):
    """A journal line that does not parse: the file, the line (1-based) and its byte offset."""

    def __init__(self, path: str, line: int, offset: int, reason: str) -> None:
        super().__init__(
            f"{path}: line {line} (byte offset {offset}) is not a journal operation: {reason}; "
            f"repair with `hpod journal repair` (keeps every valid operation)"
        )
        self.path = path
        self.line = line
        self.offset = offset
        self.reason = reason


def _line_problem(line: bytes) -> str | None:
    """Why `line` (without its newline) is not one of Optuna's journal operations, or None."""
    if b"\x00" in line:
        return "NUL bytes"
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"not UTF-8 ({exc.reason} at column {exc.start + 1})"
    try:
        op = json.loads(text)
    except ValueError as exc:  # JSONDecodeError, or a number too long to convert
        return f"not JSON ({exc})"
    if not isinstance(op, dict):
        return "not a JSON object"
    if type(op.get("op_code")) is not int or not isinstance(op.get("worker_id"), str):
        return "no integer op_code and string worker_id"
    return None


def scan_journal(path: str) -> Iterator[tuple[int, int, bytes, str | None]]:
    """Each complete line of the journal: (line number, byte offset, line, problem or None).

    A last line without its newline is a torn write (a writer killed mid-write): it is not
    yielded; the next write cuts it, as Optuna's reader ignores it.
    """
    with open(path, "rb") as f:
        offset = 0
        for number, line in enumerate(f, start=1):
            if not line.endswith(b"\n"):
                return
            yield number, offset, line, _line_problem(line[:-1])
            offset += len(line)


def check_journal(path: str) -> None:
    """Raise `JournalCorrupt` naming the first line of `path` that does not parse.

    Optuna's reader stops at such a line, or takes it silently when it is the last one:
    either way the daemon's memory would drift from the file. A missing file is fine (a new
    journal).
    """
    if not os.path.exists(path):
        return
    for number, offset, _line, problem in scan_journal(path):
        if problem is not None:
            raise JournalCorrupt(path, number, offset, problem)


def mark_path(path: str) -> str:
    """Where the daemon records how much of journal `path` it has seen written."""
    return f"{path}.mark"


def write_mark(path: str, size: int) -> None:
    """Record that journal `path` held at least `size` bytes of whole operations.

    Written atomically (rename) after the journal's own fsync, so the mark never exceeds what
    is durable in the journal: a journal found shorter than its mark was cut or replaced.
    """
    tmp = f"{mark_path(path)}.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"size": size}, f)
    os.replace(tmp, mark_path(path))


def check_mark(path: str) -> None:
    """Raise `JournalTruncated` if journal `path` is shorter than the daemon saw it written."""
    try:
        with open(mark_path(path), encoding="utf-8") as f:
            marked = int(json.load(f)["size"])
    except FileNotFoundError:
        return
    except (ValueError, KeyError, TypeError, OSError):
        return  # an unreadable mark proves nothing; the next write replaces it
    size = os.path.getsize(path) if os.path.exists(path) else 0
    if size < marked:
        raise JournalTruncated(path, size, marked)


class JournalTruncated(ValueError):
    """The journal is shorter than the daemon saw it written: cut, or an older copy."""

    def __init__(self, path: str, size: int, marked: int) -> None:
        super().__init__(
            f"{path} is {size} bytes, but hpod saw {marked} bytes of it written "
            f"({mark_path(path)}): the file was cut or replaced by an older copy, and studies "
            f"would silently lose trials. Restore it; if an older copy is intended (restored "
            f"from backup), delete {mark_path(path)}"
        )
        self.path = path
        self.size = size
        self.marked = marked


def repair_journal(path: str, dry_run: bool = False) -> dict[str, Any]:
    """Keep every valid operation of `path`, move the bad lines aside.

    The original is kept whole as ``PATH.bak-<time>``, the bad lines (with their line
    numbers and offsets) go to ``PATH.bad-<time>``, and the file is replaced atomically by
    its valid lines (a torn last line is dropped, as every writer does). Run it with the
    daemon and workers stopped. Returns what was (or, with `dry_run`, would be) done.
    """
    good: list[bytes] = []
    bad: list[dict[str, Any]] = []
    for number, offset, line, problem in scan_journal(path):
        if problem is None:
            good.append(line)
        else:
            text = line[:-1].decode("utf-8", "backslashreplace")
            bad.append({"line": number, "offset": offset, "problem": problem, "text": text})
    report: dict[str, Any] = {
        "path": path,
        "kept_lines": len(good),
        "bad_lines": bad,
        "dry_run": dry_run,
    }
    if dry_run or not bad:
        return report
    stamp = time.strftime("%Y%m%dT%H%M%S")
    backup, aside = f"{path}.bak-{stamp}", f"{path}.bad-{stamp}"
    shutil.copy2(path, backup)
    with open(aside, "w", encoding="utf-8") as f:
        for entry in bad:
            f.write(json.dumps(entry) + "\n")
    tmp = f"{path}.repair-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(b"".join(good))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    # The journal is shorter now, by intent: the mark starts again from the repaired file.
    write_mark(path, os.path.getsize(path))
    report.update(backup=backup, bad_lines_file=aside)
    return report
