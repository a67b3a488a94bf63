"""The result cache holds JSON, never pickle (issue 12, finding 10, the cache side)."""

from __future__ import annotations

import json
import sqlite3
import zlib
from pathlib import Path
from typing import Any

import diskcache
import pytest

from hpod.cache import ResultCache
from hpod.cache.results import LAYOUT


def _no_pickle(*_: Any, **__: Any) -> Any:
    raise AssertionError("pickle used by the result cache")


@pytest.fixture
def pickle_forbidden(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every pickle entry point diskcache's Disk reaches raises (``diskcache.core.pickle`` is
    the pickle module: patched for the test's duration)."""
    for name in ("dumps", "loads", "load", "dump"):
        monkeypatch.setattr(diskcache.core.pickle, name, _no_pickle)


def test_a_cache_round_trip_never_pickles_and_stores_json(
    tmp_path: Path, pickle_forbidden: None
) -> None:
    cache = ResultCache(tmp_path, 3600, 10)
    entry = {"values": [0.25, 1.5], "cpu": 0.75}
    large = {"values": [0.5], "cpu": None, "note": "x" * 100_000}  # big: a value file
    cache.put("k1", entry)
    cache.put("k2", large)
    cache.set_objective_version("quadratic", "3")
    assert cache.get("k1") == entry
    assert cache.get("k2") == large
    assert cache.objective_version("quadratic") == "3"
    assert cache.get("missing") is None
    cache.close()
    again = ResultCache(tmp_path, 3600, 10)
    assert again.get("k1") == entry
    again.close()
    # What is on disk: zlib-compressed JSON, in the index and in value files alike.
    with sqlite3.connect(tmp_path / LAYOUT / "cache.db") as db:
        rows = db.execute("SELECT key, value, filename FROM Cache").fetchall()
    assert len(rows) == 3
    for key, value, filename in rows:
        json.loads(zlib.decompress(key))
        blob = value if filename is None else (tmp_path / LAYOUT / filename).read_bytes()
        decoded = json.loads(zlib.decompress(blob))
        assert decoded in (entry, large, "3")
        assert not bytes(blob).startswith(b"\x80")  # no pickle protocol header


def test_an_entry_of_the_wrong_shape_is_a_miss(tmp_path: Path) -> None:
    cache = ResultCache(tmp_path, None, 10)
    for bad in ({"values": "x"}, {"values": [True]}, {"values": []}, [1.0], "x"):
        cache._cache.set("k", bad)
        assert cache.get("k") is None
    cache.close()


def test_a_pickled_cache_of_an_older_hpod_is_cleared_unread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The layout before JSONDisk: diskcache's default Disk (pickle) straight in the directory.
    old = diskcache.Cache(str(tmp_path))
    old.set("k1", {"values": [0.1], "cpu": 1.0})
    old.set("k2", {"values": [0.2], "blob": "y" * 100_000})  # a value file
    old.close()
    for name in ("dumps", "loads", "load", "dump"):
        monkeypatch.setattr(diskcache.core.pickle, name, _no_pickle)
    assert (tmp_path / "cache.db").exists()
    (tmp_path / "keep.txt").write_text("not diskcache's")
    cache = ResultCache(tmp_path, None, 10)
    assert not (tmp_path / "cache.db").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([LAYOUT, "keep.txt"])
    assert cache.get("k1") is None  # nothing was carried over, nothing unpickled
    assert cache.stats()["entries"] == 0
    assert "cache.legacy_cleared" in capsys.readouterr().out
    cache.put("k1", {"values": [0.3], "cpu": 1.0})
    assert cache.get("k1") == {"values": [0.3], "cpu": 1.0}
    cache.close()
