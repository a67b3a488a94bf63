"""Group commit on the journal file: one durable write per group, readable by plain Optuna."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import IO, Any

import optuna
import pytest
from conftest import eventually
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from hpod.engine import KernelJournalLock, make_storage
from hpod.journal import GroupCommitJournalBackend, JournalGroupError, storage_group


def grouping_storage(path: Path) -> JournalStorage:
    """The storage make_storage builds for ``journal://path``."""
    backend = GroupCommitJournalBackend(str(path), lock_obj=KernelJournalLock(str(path)))
    return JournalStorage(backend)


def fresh_trials(path: Path, study: str = "s") -> list[FrozenTrial]:
    """The study's trials as plain Optuna reads them from the file, in a new storage."""
    storage = JournalStorage(JournalFileBackend(str(path)))
    return optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)


def summary(trials: list[FrozenTrial]) -> list[tuple[Any, ...]]:
    """What two readers of one journal must agree on, trial by trial."""
    return [(t.number, t.state, t.params, t.values, t.user_attrs) for t in trials]


def run_trials(study: optuna.Study, n: int, who: str = "main") -> list[float]:
    """`n` random-sampler ask+tell trials; their objective values."""
    values = []
    for _ in range(n):
        trial = study.ask()
        x = trial.suggest_float("x", -1.0, 1.0)
        trial.set_user_attr("who", who)
        study.tell(trial, x * x)
        values.append(x * x)
    return values


def new_study(storage: optuna.storages.BaseStorage) -> optuna.Study:
    return optuna.create_study(
        study_name="s", storage=storage, sampler=optuna.samplers.RandomSampler(seed=0)
    )


# A second process: make_storage on the same journal, then for each line "N" on stdin it runs N
# trials ungrouped and answers "done"; with "block" it announces itself before one trial and
# creates the marker file once that trial is written.
CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import optuna
    from hpod.engine import make_storage

    storage = make_storage(sys.argv[1])
    study = optuna.load_study(
        study_name="s", storage=storage, sampler=optuna.samplers.RandomSampler(seed=1)
    )

    def trial():
        t = study.ask()
        t.set_user_attr("who", "child")
        study.tell(t, t.suggest_float("x", -1.0, 1.0) ** 2)

    print("ready", flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if cmd[0] == "block":
            print("writing", flush=True)
            trial()
            Path(cmd[1]).touch()
        else:
            for _ in range(int(cmd[0])):
                trial()
        print("done", flush=True)
    """
)


def start_child(path: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, f"journal://{path}"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert expect(proc.stdout) == "ready"
    return proc


def waits_for_lock(path: Path, pid: int) -> bool:
    """Whether process `pid` is blocked waiting for the journal's flock (a ``->`` line of
    /proc/locks on the lock file's inode): it has reached the lock, which it cannot take."""
    inode = os.stat(f"{path}.flock").st_ino
    with open("/proc/locks") as locks:
        return any(
            fields[1] == "->" and fields[5] == str(pid) and fields[6].endswith(f":{inode}")
            for fields in (line.split() for line in locks)
        )


def expect(stream: IO[str] | None) -> str:
    assert stream is not None
    return stream.readline().strip()


def send(proc: subprocess.Popen[str], line: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(line + "\n")
    proc.stdin.flush()


def stop(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    assert proc.wait(timeout=60) == 0


class TestGroup:
    """Inside a group logs stay in memory; at exit they reach the file in one write."""

    def test_200_trials_reach_the_file_only_at_exit(self, tmp_path: Path) -> None:
        """Nothing is written inside the group; afterwards plain Optuna reads all 200 trials."""
        path = tmp_path / "j.log"
        storage = grouping_storage(path)
        study = new_study(storage)
        before = path.read_bytes()
        with storage_group(storage):
            values = run_trials(study, 200)
            assert path.read_bytes() == before
            assert fresh_trials(path) == []
        trials = fresh_trials(path)
        assert [t.number for t in trials] == list(range(200))
        assert all(t.state == TrialState.COMPLETE for t in trials)
        assert [t.value for t in trials] == values
        assert summary(trials) == summary(study.get_trials())
        # Optuna's line format: one compact JSON object per line.
        lines = path.read_bytes().splitlines(keepends=True)
        assert all(line.endswith(b"\n") for line in lines)
        assert all(
            json.dumps(json.loads(line), separators=(",", ":")).encode() + b"\n" == line
            for line in lines
        )

    def test_a_nested_group_commits_with_the_outer_one(self, tmp_path: Path) -> None:
        path = tmp_path / "j.log"
        storage = grouping_storage(path)
        study = new_study(storage)
        with storage_group(storage):
            with storage_group(storage):
                run_trials(study, 3)
            assert fresh_trials(path) == []
            run_trials(study, 2)
        assert len(fresh_trials(path)) == 5

    def test_outside_a_group_each_call_is_written_at_once(self, tmp_path: Path) -> None:
        path = tmp_path / "j.log"
        study = new_study(grouping_storage(path))
        trial = study.ask()
        assert [t.state for t in fresh_trials(path)] == [TrialState.RUNNING]
        study.tell(trial, 1.0)
        assert [t.value for t in fresh_trials(path)] == [1.0]

    def test_an_exception_in_the_group_still_commits_what_it_buffered(self, tmp_path: Path) -> None:
        """Trials told, a trial left running and a log Optuna rejected on replay all land."""
        path = tmp_path / "j.log"
        storage = grouping_storage(path)
        study = new_study(storage)
        with pytest.raises(RuntimeError, match="boom"), storage_group(storage):
            run_trials(study, 5)
            running = study.ask()
            running.suggest_float("x", -1.0, 1.0)
            # Replaying this log raises (incompatible distribution) after it was appended,
            # as with Optuna's own backend: it stays in the journal and every reader skips it.
            with pytest.raises(ValueError):
                storage.set_trial_param(
                    study.ask()._trial_id, "x", 0.0, optuna.distributions.IntDistribution(0, 3)
                )
            raise RuntimeError("boom")
        trials = fresh_trials(path)
        assert [t.state for t in trials] == [TrialState.COMPLETE] * 5 + [TrialState.RUNNING] * 2
        assert summary(trials) == summary(study.get_trials())
        # The storage goes on: its view and the file still agree after another group.
        with storage_group(storage):
            study.tell(running, 0.5)
        assert summary(fresh_trials(path)) == summary(study.get_trials())

    def test_a_failed_fsync_raises_rolls_back_and_closes_the_backend(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        path = tmp_path / "j.log"
        storage = grouping_storage(path)
        study = new_study(storage)
        before = path.read_bytes()

        def failing_fsync(fd: int) -> None:
            raise OSError(5, "Input/output error")

        with pytest.raises(OSError, match="Input/output"), storage_group(storage):
            run_trials(study, 3)
            monkeypatch.setattr(os, "fsync", failing_fsync)
        monkeypatch.undo()
        assert path.read_bytes() == before
        with pytest.raises(JournalGroupError):
            study.ask()
        # The file is whole: a new storage carries on from it.
        again = optuna.load_study(study_name="s", storage=grouping_storage(path))
        run_trials(again, 1)
        assert [t.number for t in fresh_trials(path)] == [0]

    def test_a_second_writer_without_the_lock_is_refused(self, tmp_path: Path) -> None:
        """A writer that appends without the journal's lock (plain Optuna's backend, with a
        symlink lock of its own) while a group is open: the group's log numbers assumed the
        file stood still, so none of its logs is written, the backend closes, and a new
        storage reads the file as it is: the other writer's trial after ours."""
        path = tmp_path / "j.log"
        storage = grouping_storage(path)
        study = new_study(storage)
        run_trials(study, 1)
        intruder = optuna.load_study(
            study_name="s",
            storage=JournalStorage(JournalFileBackend(str(path))),
            sampler=optuna.samplers.RandomSampler(seed=1),
        )
        with (
            pytest.raises(JournalGroupError, match="not using the same lock"),
            storage_group(storage),
        ):
            run_trials(study, 2)
            run_trials(intruder, 1, who="intruder")
        with pytest.raises(JournalGroupError):
            study.ask()
        assert [t.user_attrs["who"] for t in fresh_trials(path)] == ["main", "intruder"]
        again = optuna.load_study(study_name="s", storage=grouping_storage(path))
        run_trials(again, 1)
        assert [t.user_attrs["who"] for t in fresh_trials(path)] == ["main", "intruder", "main"]

    def test_a_torn_last_line_is_dropped_before_writing(self, tmp_path: Path) -> None:
        """A writer killed mid-write leaves half a line; the next write must not fuse with it."""
        path = tmp_path / "j.log"
        storage = grouping_storage(path)
        study = new_study(storage)
        run_trials(study, 1)
        with path.open("ab") as f:
            f.write(b'{"op_code":4,"worker_id":"dead","stu')
        with storage_group(storage):
            run_trials(study, 2)
        run_trials(study, 1)  # ungrouped, after another torn line
        with path.open("ab") as f:
            f.write(b'{"op_code":4,')
        run_trials(study, 1)
        assert [t.number for t in fresh_trials(path)] == [0, 1, 2, 3, 4]
        assert summary(fresh_trials(path)) == summary(study.get_trials())


class TestOtherProcesses:
    """Another process writing through make_storage() between and during our groups."""

    def test_trials_of_both_processes_interleave_consistently(self, tmp_path: Path) -> None:
        path = tmp_path / "j.log"
        storage = grouping_storage(path)
        study = new_study(storage)
        child = start_child(path)
        try:
            for _ in range(4):
                with storage_group(storage):
                    run_trials(study, 10)
                send(child, "7")
                assert expect(child.stdout) == "done"
            # The child's last trials are learned by the first read inside a group.
            with storage_group(storage):
                run_trials(study, 10)
        finally:
            stop(child)
        trials = fresh_trials(path)
        assert [t.number for t in trials] == list(range(78))
        assert all(t.state == TrialState.COMPLETE for t in trials)
        assert [t.user_attrs["who"] for t in trials] == (["main"] * 10 + ["child"] * 7) * 4 + [
            "main"
        ] * 10
        assert all(t.value == t.params["x"] ** 2 for t in trials)
        assert summary(trials) == summary(study.get_trials())

    def test_concurrent_writer_and_groups_agree(self, tmp_path: Path) -> None:
        """The child writes freely while we run groups: nothing lost, numbers unique."""
        path = tmp_path / "j.log"
        storage = grouping_storage(path)
        study = new_study(storage)
        child = start_child(path)
        try:
            send(child, "60")
            for _ in range(6):
                with storage_group(storage):
                    run_trials(study, 10)
            assert expect(child.stdout) == "done"
        finally:
            stop(child)
        trials = fresh_trials(path)
        assert [t.number for t in trials] == list(range(120))
        assert sorted(t.user_attrs["who"] for t in trials) == ["child"] * 60 + ["main"] * 60
        assert all(t.state == TrialState.COMPLETE and t.value == t.params["x"] ** 2 for t in trials)
        assert summary(trials) == summary(study.get_trials())

    def test_an_open_group_holds_off_other_writers(self, tmp_path: Path) -> None:
        """The child's write returns only after our group exits, and lands after it."""
        path = tmp_path / "j.log"
        marker = tmp_path / "written"
        storage = grouping_storage(path)
        study = new_study(storage)
        child = start_child(path)
        try:
            with storage_group(storage):
                run_trials(study, 3)
                send(child, f"block {marker}")
                assert expect(child.stdout) == "writing"
                eventually(lambda: waits_for_lock(path, child.pid), 30, 0.02)
                assert not marker.exists()
                run_trials(study, 2)
            assert expect(child.stdout) == "done"
            assert marker.exists()
        finally:
            stop(child)
        trials = fresh_trials(path)
        assert [t.user_attrs["who"] for t in trials] == ["main"] * 5 + ["child"]
        assert [t.number for t in trials] == list(range(6))


class TestStorageGroup:
    def test_rdb_storage_is_a_harmless_no_op(self, tmp_path: Path) -> None:
        storage = make_storage(f"sqlite:///{tmp_path / 'x.db'}")
        study = new_study(storage)
        with storage_group(storage):
            values = run_trials(study, 5)
        assert [t.value for t in study.get_trials()] == values

    def test_journal_storage_on_optuna_backend_is_a_no_op(self, tmp_path: Path) -> None:
        path = tmp_path / "j.log"
        study = new_study(JournalStorage(JournalFileBackend(str(path))))
        with storage_group(study._storage):
            run_trials(study, 1)
            assert len(fresh_trials(path)) == 1

    def test_make_storage_groups_journal_urls(self, tmp_path: Path) -> None:
        storage = make_storage(f"journal://{tmp_path / 'j.log'}")
        assert isinstance(storage, JournalStorage)
        assert isinstance(storage._backend, GroupCommitJournalBackend)


class TestSingleWriterFastPath:
    """Logs replayed without a parse, reads skipped when the file has not grown: what the
    writer holds in memory is what plain Optuna reads from the file."""

    def trials_of_every_kind(self, study: optuna.Study) -> None:
        """Trials through every replayed operation, and through the parsed ones."""
        storage = study._storage
        with storage_group(storage):
            for i in range(6):
                trial = study.ask()
                trial.suggest_float("x", -1.0, 1.0)
                trial.suggest_int("n", 1, 9)
                trial.suggest_categorical("c", ["a", "b", None])
                trial.report(0.5 * i, step=i)
                trial.set_user_attr("cost", {"rungs": (0.25, 1.0), "time": {"eval": 0.1}})
                if i % 3 == 0:
                    study.tell(trial, float(i))
                elif i % 3 == 1:
                    study.tell(trial, state=TrialState.PRUNED)
                else:
                    study.tell(trial, state=TrialState.FAIL)
        enqueued = optuna.trial.create_trial(
            params={"x": 0.5},
            distributions={"x": optuna.distributions.FloatDistribution(-1.0, 1.0)},
            value=2.0,
            intermediate_values={3: 1.0},
        )
        study.add_trial(enqueued)  # a template trial: a parsed log
        with storage_group(storage):  # outside a group's first read: the stat path
            trial = study.ask()
            trial.suggest_float("x", -1.0, 1.0)
        study.tell(trial, float("inf"))  # ungrouped: one durable append

    def test_the_writers_view_is_the_files(self, tmp_path: Path) -> None:
        path = tmp_path / "j.log"
        study = new_study(grouping_storage(path))
        self.trials_of_every_kind(study)
        mine = study.get_trials(deepcopy=False)
        assert len(mine) == 8
        assert summary(mine) == summary(fresh_trials(path))
        assert [t.intermediate_values for t in mine] == [
            t.intermediate_values for t in fresh_trials(path)
        ]
        # As JSON gives them back: a tuple is a list, an int key a str.
        assert mine[0].user_attrs["cost"] == {"rungs": [0.25, 1.0], "time": {"eval": 0.1}}

    def test_a_restarted_writer_reads_the_same_and_goes_on(self, tmp_path: Path) -> None:
        path = tmp_path / "j.log"
        first = new_study(grouping_storage(path))
        self.trials_of_every_kind(first)
        before = summary(first.get_trials(deepcopy=False))
        # A restart: a new storage (as the daemon builds) reads the file, then writes on.
        again = optuna.load_study(
            study_name="s",
            storage=grouping_storage(path),
            sampler=optuna.samplers.RandomSampler(seed=2),
        )
        assert summary(again.get_trials(deepcopy=False)) == before
        with storage_group(again._storage):
            run_trials(again, 3, who="restarted")
        assert summary(again.get_trials(deepcopy=False)) == summary(fresh_trials(path))
        assert len(fresh_trials(path)) == 11

    def test_a_write_by_another_process_is_read(self, tmp_path: Path) -> None:
        """The stat check sees the file grow: the fast path never hides another writer."""
        path = tmp_path / "j.log"
        study = new_study(grouping_storage(path))
        run_trials(study, 2)
        assert len(study.get_trials(deepcopy=False)) == 2
        child = start_child(path)
        try:
            send(child, "3")
            assert expect(child.stdout) == "done"
        finally:
            stop(child)
        trials = study.get_trials(deepcopy=False)
        assert [t.user_attrs["who"] for t in trials] == ["main"] * 2 + ["child"] * 3
        assert summary(trials) == summary(fresh_trials(path))

    def test_only_logs_json_gives_back_unchanged_skip_the_parse(self) -> None:
        import numpy as np

        from hpod.journal import _replayable

        param = {"op_code": 5, "worker_id": "w", "trial_id": 1, "param_name": "x"}
        param |= {"param_value_internal": 0.5, "distribution": "{}"}
        assert _replayable(param) == param
        state = {"op_code": 6, "worker_id": "w", "trial_id": 1, "values": [1.0]}
        assert _replayable(state | {"state": TrialState.COMPLETE}) == state | {"state": 1}
        assert _replayable(param | {"param_value_internal": np.float64(0.5)}) is None
        assert _replayable(state | {"values": (1.0,)}) is None
        attr = {"op_code": 8, "worker_id": "w", "trial_id": 1, "user_attr": {"a": 1}}
        assert _replayable(attr) is None  # user attributes: any JSON, always parsed
