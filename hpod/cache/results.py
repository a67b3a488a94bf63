"""Content-addressed results of evaluations, in a diskcache on local disk.

The key hashes everything that decides an evaluation's result: the objective's name and
version, the data fingerprint (its keyword arguments, which choose the data set and its
seed), the parameters in canonical form and the fidelity (data fraction). Registered
objectives are deterministic given those (their seeds are keyword arguments); an objective
that is not declares ``hpod_deterministic = False`` and is never cached.

diskcache (SQLite underneath) is safe for several processes and threads, persists across
restarts, and enforces the TTL and size limit itself (oldest entries culled first).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import diskcache

_VERSION_PREFIX = "objective-version:"


def cache_key(
    objective: str,
    version: str,
    kwargs: dict[str, Any],
    params: dict[str, Any],
    fidelity: float,
) -> str:
    """The content address of one evaluation."""
    material = json.dumps(
        {
            "objective": objective,
            "version": version,
            "data": kwargs,
            "params": params,
            "fidelity": round(fidelity, 6),
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(material.encode()).hexdigest()


class ResultCache:
    """Cached evaluation results; safe to share between studies and processes."""

    def __init__(self, directory: Path, ttl_seconds: float | None, size_mb: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.ttl = ttl_seconds
        self._cache = diskcache.Cache(str(directory), size_limit=size_mb * 1024 * 1024)
        self._cache.stats(enable=True)

    def get(self, key: str) -> dict[str, Any] | None:
        """The entry stored under `key`, or None (also for an expired one)."""
        entry = self._cache.get(key)
        return entry if isinstance(entry, dict) else None

    def put(self, key: str, entry: dict[str, Any]) -> None:
        """Store `entry` (plain JSON-like data) under `key`."""
        self._cache.set(key, entry, expire=self.ttl)

    def objective_version(self, objective: str) -> str | None:
        """The version of `objective` the workers last reported (None before any result)."""
        value = self._cache.get(_VERSION_PREFIX + objective)
        return str(value) if value is not None else None

    def set_objective_version(self, objective: str, version: str) -> None:
        """Remember the version the workers run: lookups use it from now on."""
        if self._cache.get(_VERSION_PREFIX + objective) != version:
            self._cache.set(_VERSION_PREFIX + objective, version)

    def stats(self) -> dict[str, Any]:
        """Entries, bytes on disk, hits and misses since the statistics were enabled."""
        hits, misses = self._cache.stats(enable=True)
        return {
            "directory": str(self.directory),
            "entries": len(self._cache),
            "bytes": self._cache.volume(),
            "hits": hits,
            "misses": misses,
            "ttl_seconds": self.ttl,
            "size_limit_bytes": self._cache.size_limit,
        }

    def clear(self) -> int:
        """Remove every entry; the number removed."""
        return int(self._cache.clear())

    def close(self) -> None:
        """Release the underlying SQLite connections."""
        self._cache.close()
