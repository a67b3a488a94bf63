"""Storage faults (issue 12, findings 5 and 13): a failed journal write is recovered from,
a journal that does not parse is refused naming file, line and offset, and repaired keeping
every valid operation; a torn tail is cut as before."""

from __future__ import annotations

import asyncio
import errno
import json
import os
from pathlib import Path

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from hpod.daemon.store import StudyStore, is_storage_fault
from hpod.engine import make_storage
from hpod.journal import (
    JournalCorrupt,
    JournalGroupError,
    check_journal,
    repair_journal,
    storage_group,
)


def journal_with_trials(path: Path, n: int = 6) -> None:
    """A journal holding study `s` with `n` complete trials, written as hpod writes."""
    storage = make_storage(f"journal://{path}")
    study = optuna.create_study(
        study_name="s", storage=storage, sampler=optuna.samplers.RandomSampler(seed=0)
    )
    for _ in range(n):
        trial = study.ask()
        study.tell(trial, trial.suggest_float("x", -1.0, 1.0) ** 2)


def complete_trials(path: Path) -> int:
    """How many complete trials plain Optuna reads from the file."""
    storage = JournalStorage(JournalFileBackend(str(path)))
    trials = optuna.load_study(study_name="s", storage=storage).get_trials(deepcopy=False)
    return sum(t.state == TrialState.COMPLETE for t in trials)


def insert_line(path: Path, after: int, line: bytes) -> int:
    """Insert `line` after line `after` (1-based); returns the byte offset where it starts."""
    lines = path.read_bytes().splitlines(keepends=True)
    offset = sum(len(x) for x in lines[:after])
    path.write_bytes(b"".join(lines[:after]) + line + b"".join(lines[after:]))
    return offset


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        (b"this is not json\n", "not JSON"),
        (b'{"op_code":5,"worker_id":"w"\x00\x00\x00}\n', "NUL bytes"),
        (b"\xff\xfe{}\n", "not UTF-8"),
        (b'{"no":"op"}\n', "op_code"),
    ],
)
def test_a_bad_line_mid_file_is_refused_naming_file_line_and_offset(
    tmp_path: Path, bad: bytes, problem: str
) -> None:
    """Garbage, NUL bytes, bad UTF-8 or a JSON line that is no operation, in the middle of the
    file: `check_journal` names the file, the line and its byte offset (Optuna would stop
    with a bare UnicodeDecodeError, or drift silently)."""
    path = tmp_path / "studies.journal"
    journal_with_trials(path)
    offset = insert_line(path, 5, bad)
    with pytest.raises(JournalCorrupt) as refused:
        check_journal(str(path))
    assert refused.value.line == 6 and refused.value.offset == offset
    assert problem in refused.value.reason
    assert str(path) in str(refused.value) and "hpod journal repair" in str(refused.value)


def test_repair_keeps_every_valid_operation_and_moves_the_bad_lines_aside(
    tmp_path: Path,
) -> None:
    """Two bad lines: --dry-run reports them and changes nothing; the repair keeps all six
    trials, backs the original up whole, and writes the bad lines beside it."""
    path = tmp_path / "studies.journal"
    journal_with_trials(path)
    insert_line(path, 3, b"garbage\n")
    insert_line(path, 9, b"\x00\x00\x00\x00\n")
    original = path.read_bytes()
    report = repair_journal(str(path), dry_run=True)
    assert [b["line"] for b in report["bad_lines"]] == [4, 10]
    assert path.read_bytes() == original
    report = repair_journal(str(path))
    check_journal(str(path))
    assert complete_trials(path) == 6
    assert Path(report["backup"]).read_bytes() == original
    aside = [json.loads(x) for x in Path(report["bad_lines_file"]).read_text().splitlines()]
    assert [(b["line"], b["problem"]) for b in aside] == [
        (4, "not JSON (Expecting value: line 1 column 1 (char 0))"),
        (10, "NUL bytes"),
    ]


def test_a_file_cut_mid_line_keeps_every_complete_operation(tmp_path: Path) -> None:
    """A journal cut in the middle of a line (a writer killed mid-write): the check passes,
    every complete operation is read, and the next write cuts the torn tail first."""
    path = tmp_path / "studies.journal"
    journal_with_trials(path)
    data = path.read_bytes()
    last = data.rstrip(b"\n").rfind(b"\n") + 1  # the last line: the last trial's tell
    path.write_bytes(data[: last + 10])
    check_journal(str(path))
    assert complete_trials(path) == 5
    storage = make_storage(f"journal://{path}")
    study = optuna.load_study(study_name="s", storage=storage)
    study.tell(study.trials[-1].number, 0.5)
    check_journal(str(path))
    assert complete_trials(path) == 6


def test_a_failed_group_write_closes_the_backend_and_the_store_reads_the_file_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC on the group's write: the file is cut back to where the group began, the
    backend refuses further use (JournalGroupError), `StudyStore` reports the fault, builds
    a new storage from the file at the next call, and clears the fault once a write works."""
    from hpod import journal

    path = tmp_path / "studies.journal"
    journal_with_trials(path, 2)
    store = StudyStore(f"journal://{path}")
    size = path.stat().st_size

    def disk_full(fd: int, data: bytes) -> None:
        os.write(fd, data[:7])  # a prefix reaches the disk before the device is full
        raise OSError(errno.ENOSPC, "No space left on device")

    def ask_two() -> None:
        study = optuna.load_study(study_name="s", storage=store.storage)
        with storage_group(store.storage):
            study.ask()
            study.ask()

    monkeypatch.setattr(journal, "_write_all", disk_full)
    with pytest.raises(OSError) as failed:
        asyncio.run(store.call(ask_two))
    assert failed.value.errno == errno.ENOSPC and is_storage_fault(failed.value)
    assert path.stat().st_size == size  # the partial write was cut back
    assert store.fault is not None and "No space left" in store.fault
    broken = store.storage
    with pytest.raises(JournalGroupError):
        broken.get_all_studies()
    assert is_storage_fault(JournalGroupError("x"))
    # Space is back: the next call reads the file anew; the memory matches the file.
    monkeypatch.undo()
    n = asyncio.run(store.call(lambda: len(store.storage.get_all_trials(0))))
    assert store.storage is not broken and n == 2
    assert store.fault is not None  # a read is not a write: still failing as far as we know
    asyncio.run(store.call(ask_two))
    assert store.fault is None
    assert len(fresh := JournalStorage(JournalFileBackend(str(path))).get_all_trials(0)) == 4
    assert [t.number for t in fresh] == [0, 1, 2, 3]
    store.close()


def test_a_failed_single_write_is_cut_back_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outside a group (one operation, one write), EIO mid-write: the prefix is cut, the
    backend closed, and a plain reader of the file sees exactly what it held before."""
    from hpod import journal

    path = tmp_path / "studies.journal"
    journal_with_trials(path, 1)
    before = path.read_bytes()
    storage = make_storage(f"journal://{path}")

    def eio(fd: int, data: bytes) -> None:
        os.write(fd, data[:5])
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(journal, "_write_all", eio)
    with pytest.raises(OSError):
        storage.set_study_user_attr(0, "k", "v")
    assert path.read_bytes() == before
    with pytest.raises(JournalGroupError):
        storage.get_all_studies()


def test_a_journal_cut_at_a_line_boundary_is_refused_by_its_mark(tmp_path: Path) -> None:
    """A file cut between two lines parses, yet lost operations (issue 12: "a file cut
    mid-way starts silently, losing 104 trials"): the mark the daemon keeps beside it makes
    the start refuse it, naming both sizes; a repair (or deleting the mark) accepts it."""
    from hpod.daemon.service import StartRefused, check_storage

    path = tmp_path / "studies.journal"
    journal_with_trials(path)
    store = StudyStore(f"journal://{path}")
    asyncio.run(store.call(lambda: store.storage.get_all_studies()))
    asyncio.run(store.call(ask_in_group, store))  # a group: the store knows the file's end
    asyncio.run(store.call(store.mark))
    store.close()
    marked = json.loads(Path(f"{path}.mark").read_text())["size"]
    assert marked == path.stat().st_size
    check_storage(f"journal://{path}")
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-4]))  # whole lines: every line still parses
    check_journal(str(path))
    with pytest.raises(StartRefused) as refused:
        check_storage(f"journal://{path}")
    assert f"{path} is {path.stat().st_size} bytes" in str(refused.value)
    assert f"saw {marked} bytes" in str(refused.value)
    Path(f"{path}.mark").unlink()
    check_storage(f"journal://{path}")


def ask_in_group(store: StudyStore) -> None:
    """One ask in a write group, as the daemon's loops ask."""
    study = optuna.load_study(study_name="s", storage=store.storage)
    with storage_group(store.storage):
        study.ask()


def test_the_probe_clears_a_fault_once_storage_works_without_any_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a failed write with nothing more to write, `probe` (run by the daemon's ticker)
    finds the disk writable again and clears the fault, so /health is ok again; while the
    disk still refuses writes the fault stays."""
    from hpod import journal

    path = tmp_path / "studies.journal"
    journal_with_trials(path, 1)
    store = StudyStore(f"journal://{path}")

    def disk_full(fd: int, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(journal, "_write_all", disk_full)
    with pytest.raises(OSError):
        asyncio.run(store.call(ask_in_group, store))
    assert store.fault is not None
    real_write = os.write

    def full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    asyncio.run(store.call(store.probe))
    assert store.fault is not None
    monkeypatch.setattr(os, "write", real_write)
    asyncio.run(store.call(store.probe))
    assert store.fault is None and not Path(f"{path}.probe").exists()
    store.close()
