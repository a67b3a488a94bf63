"""Content-addressed results of evaluations, in a diskcache on local disk.

The key hashes everything that decides an evaluation's result: the objective's name and
version, the data fingerprint (its keyword arguments, which choose the data set and its
seed), the parameters in canonical form and the fidelity (data fraction). Registered
objectives are deterministic given those (their seeds are keyword arguments); an objective
that is not declares ``hpod_deterministic = False`` and is never cached.

diskcache (SQLite underneath) is safe for several processes and threads, persists across
restarts, and enforces the TTL and size limit itself (oldest entries culled first). Keys and
values are stored as JSON (`diskcache.JSONDisk`), never pickled.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

import diskcache
import structlog

log = structlog.get_logger("hpod.cache")

#: The one word for the cache wherever a trial meets it: the caching policy's name, the reason
#: it gives when it answers a trial (`SkipEvaluation.reason`, which /metrics counts as a hit)
#: and the key of a trial's cost that says "hit" or "partial".
CACHE = "cache"

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


#: The cache's own folder under the configured directory: diskcache with `JSONDisk`. Before
#: it, values were pickled by diskcache's default `Disk` straight in the directory; such a
#: cache is cleared on open (see `_clear_legacy`), never read, so nothing is ever unpickled.
LAYOUT = "json-v1"
#: zlib level of the JSON values (1: fastest; results are small).
COMPRESS_LEVEL = 1
#: Names diskcache's `Disk` created in the old layout: the SQLite index and the folders of
#: value files (two hexadecimal digits).
_LEGACY_FILES = ("cache.db", "cache.db-wal", "cache.db-shm")
_LEGACY_FOLDER = re.compile(r"[0-9a-f]{2}")


class ResultCache:
    """Cached evaluation results; safe to share between studies and processes.

    Values are JSON (diskcache's `JSONDisk`: JSON with zlib), never pickle: the cache is
    shared by processes and kept on disk, and unpickling what is found there would run
    whatever code it names."""

    def __init__(self, directory: Path, ttl_seconds: float | None, size_mb: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        _clear_legacy(directory)
        self.directory = directory
        self.ttl = ttl_seconds
        self._cache = diskcache.Cache(
            str(directory / LAYOUT),
            disk=diskcache.JSONDisk,
            disk_compress_level=COMPRESS_LEVEL,
            size_limit=size_mb * 1024 * 1024,
        )
        self._cache.stats(enable=True)

    def get(self, key: str) -> dict[str, Any] | None:
        """The entry stored under `key`, or None (also for an expired one, or one that is not
        the shape `put` stores: a list of numbers as ``values``)."""
        entry = self._cache.get(key)
        if not isinstance(entry, dict) or not _numbers(entry.get("values")):
            return None
        return entry

    def put(self, key: str, entry: dict[str, Any]) -> None:
        """Store `entry` (plain JSON data) under `key`."""
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


def _numbers(values: Any) -> bool:
    """A non-empty list of numbers (not bools)."""
    return (
        isinstance(values, list)
        and bool(values)
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    )


def _clear_legacy(directory: Path) -> None:
    """Remove a cache of an older hpod from `directory` (pickled values): its files are
    deleted unread, and the removal is logged. Only diskcache's own names are touched."""
    if not (directory / "cache.db").exists():
        return
    for name in _LEGACY_FILES:
        (directory / name).unlink(missing_ok=True)
    for child in directory.iterdir():
        if child.is_dir() and _LEGACY_FOLDER.fullmatch(child.name):
            shutil.rmtree(child, ignore_errors=True)
    log.warning(
        "cache.legacy_cleared",
        directory=str(directory),
        reason="an older hpod's result cache (pickled values) is never read; results are "
        "cached anew, as JSON, in " + str(directory / LAYOUT),
    )
