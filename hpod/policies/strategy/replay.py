"""The replay buffer: every decision's outcome, one JSON line each, kept on disk.

JSON lines because the buffer only grows by appends (one `write` + `fsync` per experience,
cheap and crash-safe: a torn last line is skipped on reading) and because an operator can read
and export it with any tool. The daemon's buffer lives in ``<data_dir>/policy/replay.jsonl``;
the package ships the training suite's buffer next to its weights, and learning uses both.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, TypeGuard, cast

import pydantic_core
import structlog

from hpod.errors import RequestRejected
from hpod.policies.strategy.actions import ACTION_FEATURE_NAMES
from hpod.policies.strategy.features import FEATURE_NAMES

log = structlog.get_logger("hpod.strategy")

#: The local buffer keeps at most this many experiences (the oldest go first).
MAX_LOCAL = 20_000


@dataclass(frozen=True)
class Experience:
    """One decision's outcome: what the study looked like, what was done, what it earned."""

    study: str
    mode: str
    strategy: str
    features: list[float]
    action: list[float]
    reward: float
    improvement: float
    compute: float
    trials: int
    at: float

    def to_json(self) -> dict[str, Any]:
        """The experience as one JSON object (numbers rounded: the buffer stays small)."""
        data = asdict(self)
        data["features"] = [round(x, 5) for x in self.features]
        data["action"] = [round(x, 5) for x in self.action]
        for key in ("reward", "improvement", "compute"):
            data[key] = round(float(data[key]), 6)
        return data

    @classmethod
    def from_json(cls, data: Any, where: str = "experience") -> Experience:
        """Validate one stored or imported experience; `RequestRejected` names the field."""
        if not isinstance(data, dict):
            raise RequestRejected("invalid", where, "must be a JSON object")
        for key, n in (("features", len(FEATURE_NAMES)), ("action", len(ACTION_FEATURE_NAMES))):
            vector = data.get(key)
            if (
                not isinstance(vector, list)
                or len(vector) != n
                or not all(_is_number(x) and math.isfinite(x) for x in vector)
            ):
                raise RequestRejected(
                    "invalid", f"{where}.{key}", f"must be a list of {n} finite numbers"
                )
        for key in ("reward", "improvement", "compute"):
            value = data.get(key)
            if not _is_number(value) or not math.isfinite(value):
                raise RequestRejected("invalid", f"{where}.{key}", "must be a finite number")
        for key in ("study", "mode", "strategy"):
            if not isinstance(data.get(key), str):
                raise RequestRejected("invalid", f"{where}.{key}", "must be a string")
        trials = data.get("trials") or 0
        if not _is_number(trials) or not isinstance(trials, int) or not 0 <= trials < 2**53:
            raise RequestRejected("invalid", f"{where}.trials", "must be a non-negative integer")
        at = data.get("at") or 0.0
        if not _is_number(at) or not math.isfinite(at) or abs(at) > 1e12:
            raise RequestRejected("invalid", f"{where}.at", "must be a finite number (a time)")
        return cls(
            study=data["study"],
            mode=data["mode"],
            strategy=data["strategy"],
            features=[float(x) for x in data["features"]],
            action=[float(x) for x in data["action"]],
            reward=float(data["reward"]),
            improvement=float(data["improvement"]),
            compute=float(data["compute"]),
            trials=trials,
            at=float(at),
        )


def _is_number(value: Any) -> TypeGuard[int | float]:
    """An int or float, not a bool (``True`` is an int to Python, not a number to JSON)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


class ReplayBuffer:
    """An append-only JSON-lines file of experiences."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, experience: Experience) -> None:
        """Add one experience durably (written and fsynced before this returns)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(experience.to_json(), separators=(",", ":")) + "\n"
        with open(self.path, "a", encoding="utf-8") as out:
            out.write(line)
            out.flush()
            os.fsync(out.fileno())

    def __iter__(self) -> Iterator[Experience]:
        return iter(read_experiences(self.path))

    def __len__(self) -> int:
        if not self.path.exists():
            return 0
        with open(self.path, "rb") as lines:
            return sum(1 for _ in lines)

    def replace(self, experiences: Iterable[Experience]) -> None:
        """Write the buffer anew (import, trimming), atomically."""
        write_experiences(self.path, experiences)

    def trim(self, keep: int = MAX_LOCAL) -> None:
        """Keep the newest `keep` experiences."""
        if len(self) > keep:
            self.replace(list(self)[-keep:])


def read_experiences(path: Path) -> list[Experience]:
    """The experiences in a buffer file (plain or gzipped); bad lines are skipped and
    logged, a missing file is empty."""
    if not path.exists():
        return []
    opener = gzip.open if path.suffix == ".gz" else open
    experiences = []
    # errors="replace": a damaged byte spoils its line (skipped below), not the whole read
    with opener(path, "rt", encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                experiences.append(Experience.from_json(json_line(line)))
            except (ValueError, RequestRejected) as exc:
                log.warning(
                    "strategy.replay_line_skipped", path=str(path), line=number, error=str(exc)
                )
    return experiences


def json_line(line: str) -> Any:
    """One buffer line parsed with a depth limit (pydantic-core's parser stops at 200
    levels with a `ValueError`, where the standard library's would raise `RecursionError`)."""
    return pydantic_core.from_json(line, allow_inf_nan=False)


def write_experiences(path: Path, experiences: Iterable[Experience]) -> None:
    """Write a buffer file atomically (gzipped when the name ends in .gz)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as raw:
        # mtime=0: the same experiences give the same bytes (the shipped buffer is checked
        # for reproducibility with `git diff`).
        binary = cast(
            IO[bytes],
            gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) if path.suffix == ".gz" else raw,
        )
        with io.TextIOWrapper(binary, encoding="utf-8") as out:
            for experience in experiences:
                out.write(json.dumps(experience.to_json(), separators=(",", ":")) + "\n")
    with open(tmp, "rb") as done:
        os.fsync(done.fileno())
    os.replace(tmp, path)
