"""The checkpoint store: a paused trial's state, where every worker can reach it.

A trial continued on the iterative fidelity (`hpod.workers.context.TrialContext.steps`) saves
its state at the end of each rung, and the task that continues it (on whichever worker takes
it) resumes from there. A checkpoint is one NumPy ``.npz`` file, ``<root>/<study>/<trial
id>.npz``: named arrays plus a JSON document (the step reached, the value there, the
objective's own JSON ``meta``) stored as a byte array. NumPy's format reads without pickle
(`numpy.load` with ``allow_pickle=False``; arrays of Python objects are refused when saving
and when loading), so a checkpoint can never run code: the project keeps JSON and plain
arrays, never pickle, in anything another process reads.

The root is ``<data_dir>/checkpoints`` on one machine, or a shared path (``checkpoint_dir``,
e.g. an NFS mount) for workers on several. It is bounded: a checkpoint over
``checkpoint_max_mb`` is not saved (the continuation then trains from the start: slower,
never wrong), the oldest files are removed when the total passes ``checkpoint_total_mb``,
and files older than ``checkpoint_ttl_seconds`` are ignored and swept. Writes are atomic (a
temporary file in the same folder, fsync, rename): a reader sees the old checkpoint or the
new one, never half of one. The daemon deletes a trial's checkpoint once the trial is told,
and sweeps at start those of trials no longer running.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import structlog

from hpod.errors import HpodError

if TYPE_CHECKING:
    from hpod.config import Settings

log = structlog.get_logger("hpod.checkpoints")

#: The array holding the checkpoint's JSON document (an objective's array may not use it).
META_KEY = "__hpod__"
SUFFIX = ".npz"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
_ARRAY_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,200}$")


class CheckpointError(HpodError):
    """A checkpoint that cannot be saved as given (a bad array name, an object array)."""


@dataclass(frozen=True)
class Checkpoint:
    """A trial's state after `step` steps: its value there, named arrays and JSON meta."""

    step: int
    value: float
    arrays: Mapping[str, np.ndarray] = field(default_factory=dict)
    meta: Any = None


class CheckpointStore:
    """Checkpoints of paused trials under `root`, bounded in size and age."""

    def __init__(
        self,
        root: Path,
        max_bytes: int = 256 << 20,
        max_total_bytes: int = 4 << 30,
        max_age_seconds: float = 7 * 24 * 3600.0,
    ) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.max_total_bytes = max_total_bytes
        self.max_age_seconds = max_age_seconds

    @classmethod
    def from_settings(cls, settings: Settings) -> CheckpointStore:
        """The store the settings name (see `hpod.config.Settings.checkpoint_root`)."""
        return cls(
            settings.checkpoint_root(),
            settings.checkpoint_max_mb << 20,
            settings.checkpoint_total_mb << 20,
            settings.checkpoint_ttl_seconds,
        )

    def path(self, study: str, trial_id: int) -> Path:
        """Where trial `trial_id` of `study` keeps its checkpoint (names checked: a study
        name is a plain file name, so no path can leave the root)."""
        if not _NAME.fullmatch(study) or isinstance(trial_id, bool) or trial_id < 0:
            raise CheckpointError(f"no checkpoint path for study {study!r}, trial {trial_id!r}")
        return self.root / study / f"{int(trial_id)}{SUFFIX}"

    def save(self, study: str, trial_id: int, checkpoint: Checkpoint) -> bool:
        """Write `checkpoint` atomically; False (logged) when it is over `max_bytes`.

        `CheckpointError` for what no store could save: an array of Python objects, a name
        that is not a plain identifier, meta that is not JSON, a non-finite value.
        """
        payload = _encode(checkpoint)
        if len(payload) > self.max_bytes:
            log.warning(
                "checkpoint.too_large",
                study=study,
                trial_id=trial_id,
                bytes=len(payload),
                limit=self.max_bytes,
            )
            return False
        target = self.path(study, trial_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=SUFFIX, dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(payload)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self._bound_total(keep=target)
        return True

    def load(self, study: str, trial_id: int) -> Checkpoint | None:
        """The trial's checkpoint; None if there is none, it is too old, or it is unreadable
        (logged): a continuation then starts from the beginning."""
        path = self.path(study, trial_id)
        try:
            age = time.time() - path.stat().st_mtime
            if age > self.max_age_seconds:
                return None
            return _decode(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("checkpoint.unreadable", path=str(path), error=repr(exc))
            return None

    def delete(self, study: str, trial_id: int) -> None:
        """Remove the trial's checkpoint (it is told, or restarts from scratch)."""
        with contextlib.suppress(FileNotFoundError):
            self.path(study, trial_id).unlink()

    def sweep(self, study: str, keep: set[int]) -> int:
        """Remove the checkpoints of `study` whose trial is not in `keep` (no longer
        running), its stale temporary files, and every file past the age bound; the count."""
        removed = 0
        now = time.time()
        folder = self.root / study
        for path in self._files(folder, include_tmp=True):
            trial = path.name.removesuffix(SUFFIX)
            stale = path.name.startswith(".tmp-") or not trial.isdigit() or int(trial) not in keep
            with contextlib.suppress(FileNotFoundError):
                if stale or now - path.stat().st_mtime > self.max_age_seconds:
                    path.unlink()
                    removed += 1
        with contextlib.suppress(OSError):
            folder.rmdir()  # only if empty
        return removed + self._sweep_aged(now)

    def total_bytes(self) -> int:
        """The bytes of every checkpoint under the root."""
        return sum(size for _, _, size in self._listing())

    # --- internals ---------------------------------------------------------------------

    def _files(self, folder: Path, include_tmp: bool = False) -> list[Path]:
        try:
            entries = list(folder.iterdir())
        except (FileNotFoundError, NotADirectoryError):
            return []
        return [
            p
            for p in entries
            if p.name.endswith(SUFFIX) and (include_tmp or not p.name.startswith(".tmp-"))
        ]

    def _listing(self) -> list[tuple[float, Path, int]]:
        """(mtime, path, size) of every checkpoint under the root."""
        out = []
        try:
            folders = [f for f in self.root.iterdir() if f.is_dir()]
        except FileNotFoundError:
            return []
        for folder in folders:
            for path in self._files(folder):
                with contextlib.suppress(FileNotFoundError):
                    stat = path.stat()
                    out.append((stat.st_mtime, path, stat.st_size))
        return out

    def _sweep_aged(self, now: float) -> int:
        removed = 0
        for mtime, path, _ in self._listing():
            if now - mtime > self.max_age_seconds:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed += 1
        return removed

    def _bound_total(self, keep: Path) -> None:
        """Remove the oldest checkpoints (never `keep`) until the total fits its bound: those
        trials then continue from the beginning."""
        listing = sorted(self._listing())
        total = sum(size for _, _, size in listing)
        for _, path, size in listing:
            if total <= self.max_total_bytes:
                break
            if path == keep:
                continue
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                log.warning("checkpoint.evicted", path=str(path), bytes=size)
            total -= size


def _encode(checkpoint: Checkpoint) -> bytes:
    """The checkpoint as the bytes of an ``.npz`` file (no pickle anywhere)."""
    if isinstance(checkpoint.step, bool) or not isinstance(checkpoint.step, int):
        raise CheckpointError(f"step must be an int, got {checkpoint.step!r}")
    if not math.isfinite(float(checkpoint.value)):
        raise CheckpointError(f"value must be finite, got {checkpoint.value!r}")
    try:
        document = json.dumps(
            {"step": checkpoint.step, "value": float(checkpoint.value), "meta": checkpoint.meta},
            allow_nan=False,
        )
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint meta must be JSON: {exc}") from exc
    arrays: dict[str, np.ndarray] = {}
    for name, value in checkpoint.arrays.items():
        array = np.asarray(value)
        if not _ARRAY_NAME.fullmatch(name) or name == META_KEY:
            raise CheckpointError(f"array name {name!r}: letters, digits, '_', '.', '-' only")
        if array.dtype.hasobject:
            raise CheckpointError(f"array {name!r} holds Python objects: plain dtypes only")
        arrays[name] = array
    arrays[META_KEY] = np.frombuffer(document.encode(), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **arrays)
    return buffer.getvalue()


def _decode(payload: bytes) -> Checkpoint:
    """A checkpoint from `_encode`'s bytes; ValueError for anything else (a pickled object
    array among them: `allow_pickle=False`)."""
    with np.load(io.BytesIO(payload), allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    document = json.loads(arrays.pop(META_KEY).tobytes().decode())
    step, value = document["step"], document["value"]
    if isinstance(step, bool) or not isinstance(step, int) or not isinstance(value, float):
        raise ValueError("checkpoint document has no int step and float value")
    return Checkpoint(step, value, arrays, document.get("meta"))
