"""Continuation (issue 13, item 2): the checkpoint store's bounds, atomicity and refusal of
pickle; the promotion rule's decisions; resumable objectives that train exactly as
uninterrupted ones; and the plan that switches continuation on."""

from __future__ import annotations

import asyncio
import io
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hpod.checkpoints import Checkpoint, CheckpointError, CheckpointStore
from hpod.daemon.promotion import Promotions, Record
from hpod.modes import load_modes
from hpod.policies.compose import continuation_applies, resolve_plan
from hpod.schema import StudySpec
from hpod.workers.context import NoPruning, TrialContext
from hpod.workers.evaluation import Continuation, evaluate_continued, resumable
from hpod.workers.objectives.gradient_boosting import gradient_boosting, gradient_boosting_rounds
from hpod.workers.objectives.mlp import mlp_digits
from hpod.workers.objectives.sgd import sgd_classifier

LADDER = (1 / 9, 1 / 3, 1.0)


def state(step: int = 3, value: float = 0.5, size: int = 10) -> Checkpoint:
    return Checkpoint(step, value, {"w": np.arange(size, dtype=np.float64)}, {"t": 1.5})


class TestCheckpointStore:
    """Checkpoints are plain arrays + JSON, bounded, atomic, deleted and swept."""

    def test_a_checkpoint_comes_back_as_saved(self, tmp_path: Path) -> None:
        store = CheckpointStore(tmp_path)
        assert store.load("s", 1) is None
        assert store.save("s", 1, state())
        back = store.load("s", 1)
        assert back is not None and back.step == 3 and back.value == 0.5
        assert back.meta == {"t": 1.5}
        np.testing.assert_array_equal(back.arrays["w"], np.arange(10.0))
        assert (tmp_path / "s" / "1.npz").is_file()

    def test_arrays_of_python_objects_are_refused_and_never_unpickled(self, tmp_path: Path) -> None:
        store = CheckpointStore(tmp_path)
        with pytest.raises(CheckpointError, match="Python objects"):
            store.save("s", 1, Checkpoint(1, 0.1, {"o": np.array([{"a": 1}], dtype=object)}))
        with pytest.raises(CheckpointError, match="JSON"):
            store.save("s", 1, Checkpoint(1, 0.1, {}, {"x": object()}))
        # A file someone wrote with a pickled object array is not loaded (allow_pickle=False).
        path = store.path("s", 2)
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.savez(
            buffer,
            __hpod__=np.frombuffer(b'{"step":1,"value":0.1}', np.uint8),
            evil=np.array([object()], dtype=object),
        )
        path.write_bytes(buffer.getvalue())
        assert store.load("s", 2) is None

    def test_a_path_never_leaves_the_root(self, tmp_path: Path) -> None:
        store = CheckpointStore(tmp_path)
        for study in ("../x", "a/b", ""):
            with pytest.raises(CheckpointError):
                store.path(study, 1)
        with pytest.raises(CheckpointError):
            store.path("s", -1)

    def test_one_checkpoint_over_its_bound_is_not_saved(self, tmp_path: Path) -> None:
        store = CheckpointStore(tmp_path, max_bytes=2000)
        assert store.save("s", 1, state(size=10))
        assert not store.save("s", 1, state(step=9, size=1000))
        back = store.load("s", 1)
        assert back is not None and back.step == 3  # the old one stays

    def test_the_total_bound_removes_the_oldest_others(self, tmp_path: Path) -> None:
        one = len(
            (lambda s: (s.save("x", 0, state(size=500)), s.path("x", 0).read_bytes()))(
                CheckpointStore(tmp_path / "probe")
            )[1]
        )
        store = CheckpointStore(tmp_path / "root", max_total_bytes=int(one * 2.5))
        for trial in range(4):
            assert store.save("s", trial, state(size=500))
            old = time.time() - 100 + trial
            os.utime(store.path("s", trial), (old, old))
        assert store.load("s", 3) is not None and store.load("s", 2) is not None
        assert store.load("s", 0) is None and store.load("s", 1) is None
        assert store.total_bytes() <= int(one * 2.5)

    def test_a_failed_write_leaves_the_old_checkpoint_and_no_temporary_file(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        store = CheckpointStore(tmp_path)
        store.save("s", 1, state(step=3))

        def broken(src: Any, dst: Any) -> None:
            raise OSError("disk full")

        monkeypatch.setattr(os, "replace", broken)
        with pytest.raises(OSError):
            store.save("s", 1, state(step=6))
        monkeypatch.undo()
        back = store.load("s", 1)
        assert back is not None and back.step == 3
        assert [p.name for p in (tmp_path / "s").iterdir()] == ["1.npz"]

    def test_old_checkpoints_are_ignored_and_swept_with_those_of_ended_trials(
        self, tmp_path: Path
    ) -> None:
        store = CheckpointStore(tmp_path, max_age_seconds=60)
        for trial in (1, 2, 3):
            store.save("s", trial, state())
        old = time.time() - 120
        os.utime(store.path("s", 3), (old, old))
        assert store.load("s", 3) is None
        (tmp_path / "s" / ".tmp-left.npz").write_bytes(b"half")
        assert store.sweep("s", keep={1, 3}) == 3  # 2 ended, 3 too old, the temporary file
        assert store.load("s", 1) is not None
        store.delete("s", 1)
        store.delete("s", 1)  # twice is fine
        assert store.sweep("s", keep=set()) == 0
        assert not (tmp_path / "s").exists()


class TestPromotions:
    """Asynchronous successive halving with resumption: the best 1/eta at a rung go on."""

    def test_a_rung_promotes_its_best_third_once_three_reached_it(self) -> None:
        rungs = Promotions(LADDER, eta=3)
        rungs.paused(0, LADDER[0], 0.5, 1.0, 0.1)
        rungs.paused(1, LADDER[0], 0.3, 1.0, 0.1)
        assert rungs.next_promotion() is None  # 2 // 3 = 0 may go on
        rungs.paused(2, LADDER[0], 0.4, 1.0, 0.1)
        assert rungs.next_promotion() == (1, LADDER[1])
        rungs.dispatched(1, LADDER[1])
        assert rungs.next_promotion() is None  # the quota of one is used

    def test_a_trial_paused_long_ago_is_promoted_when_it_ranks_among_the_best(self) -> None:
        rungs = Promotions(LADDER, eta=3)
        for number, value in enumerate([0.2, 0.1, 0.9]):
            rungs.paused(number, LADDER[0], value, 1.0, 0.1)
        assert rungs.next_promotion() == (1, LADDER[1])
        rungs.dispatched(1, LADDER[1])
        for number, value in enumerate([0.8, 0.7, 0.95], start=3):
            rungs.paused(number, LADDER[0], value, 1.0, 0.1)
        # Six reached the rung: the best two are 1 (promoted) and 0, paused since the start.
        assert rungs.next_promotion() == (0, LADDER[1])

    def test_higher_rungs_go_first_and_maximize_ranks_the_other_way(self) -> None:
        rungs = Promotions(LADDER, eta=3, maximize=True)
        for number, value in enumerate([0.2, 0.1, 0.9]):
            rungs.paused(number, LADDER[0], value, 1.0, 0.1)
        for number, value in enumerate([0.5, 0.6, 0.4], start=3):
            rungs.paused(number, LADDER[1], value, 1.0, 0.1)
        assert rungs.next_promotion() == (4, 1.0)
        rungs.dispatched(4, 1.0)
        assert rungs.next_promotion() == (2, LADDER[1])

    def test_at_the_end_the_best_of_the_highest_rung_finishes_if_none_did(self) -> None:
        rungs = Promotions(LADDER, eta=3)
        rungs.paused(0, LADDER[0], 0.5, 1.0, 0.1)
        rungs.paused(1, LADDER[0], 0.4, 1.0, 0.1)
        assert rungs.next_promotion() is None
        assert rungs.next_promotion(final=True) == (1, LADDER[1])
        rungs.dispatched(1, LADDER[1])
        rungs.paused(1, LADDER[1], 0.3, 1.0, 0.2)
        assert rungs.next_promotion(final=True) == (1, 1.0)
        rungs.dispatched(1, 1.0)
        rungs.told(1, 0.25)
        assert rungs.next_promotion(final=True) is None  # a trial finished: 0 stays paused
        assert rungs.paused_numbers() == [0]

    def test_records_survive_a_restart_through_their_json(self) -> None:
        rungs = Promotions(LADDER, eta=3)
        record = rungs.paused(7, LADDER[0], 0.5, 2.0, 0.1, {"worker": "a", "resumed": 0})
        back = Record.from_json(record.as_json())
        assert back is not None and back.at == LADDER[0] and back.cpu == 2.0
        assert back.values == {LADDER[0]: 0.5} and back.history[0]["worker"] == "a"
        again = Promotions(LADDER, eta=3)
        for number, value in ((7, 0.5), (8, 0.2)):
            saved = Record.from_json(rungs.paused(number, LADDER[0], value, 1, 0.1).as_json())
            assert saved is not None
            again.load(number, saved, finished=False)
        again.load(9, Record(values={LADDER[0]: 0.9}), finished=True)
        assert again.next_promotion() == (8, LADDER[1])
        assert Record.from_json("junk") is None


def run_continued(fn: Any, params: dict[str, Any], kwargs: dict[str, Any], root: Path) -> list[Any]:
    store = CheckpointStore(root)
    return [
        evaluate_continued(fn, params, kwargs, NoPruning(), Continuation(store, "s", 1, to))
        for to in LADDER
    ]


@pytest.mark.parametrize(
    ("fn", "params", "kwargs"),
    [
        (mlp_digits, {"lr": 3e-3, "hidden": 32}, {"epochs": 3}),
        (gradient_boosting_rounds, {"max_iter": 27, "learning_rate": 0.2}, {"n_samples": 1000}),
        (
            sgd_classifier,
            {"learning_rate": "invscaling", "eta0": 0.1},
            {"passes": 9, "n_samples": 2000},
        ),
    ],
    ids=["mlp_digits", "gradient_boosting_rounds", "sgd_classifier"],
)
def test_a_continued_trial_trains_exactly_as_an_uninterrupted_one(
    fn: Any, params: dict[str, Any], kwargs: dict[str, Any], tmp_path: Path
) -> None:
    """Three tasks (to a ninth, a third, all of the steps), each resuming from the last
    one's checkpoint, end where one uninterrupted call ends; each trains only its part."""
    assert resumable(fn)
    straight = fn(TrialContext(params), **kwargs)
    if fn is gradient_boosting_rounds:  # the same model as the data objective's, by rounds
        assert straight == gradient_boosting(TrialContext(params), **kwargs)
        assert not resumable(gradient_boosting)  # its data ladder stays (see its docstring)
    evaluations = run_continued(fn, params, kwargs, tmp_path)
    assert evaluations[-1].values == [straight]
    resumed = [e.resumed_step for e in evaluations]
    reached = [e.step for e in evaluations]
    assert resumed[0] == 0 and resumed[1:] == reached[:-1]
    assert sum(e.data_evaluated for e in evaluations) == pytest.approx(1.0)
    assert not list(tmp_path.rglob("*.npz"))  # the last rung deleted the checkpoint


def test_a_task_run_twice_scores_its_checkpoint_without_training_again(tmp_path: Path) -> None:
    """A continued task whose checkpoint is already at its rung (its first run's result was
    lost) trains nothing and gives the same value."""
    store = CheckpointStore(tmp_path)
    params, kwargs = {"max_iter": 18}, {"n_samples": 1000}
    task = Continuation(store, "s", 1, LADDER[1])
    first = evaluate_continued(gradient_boosting, params, kwargs, NoPruning(), task)
    again = evaluate_continued(gradient_boosting, params, kwargs, NoPruning(), task)
    assert again.values == first.values and again.resumed_step == first.step == 6
    assert again.data_evaluated == 0.0


def test_outside_a_continued_study_the_context_runs_every_step() -> None:
    ctx = TrialContext({})
    assert ctx.steps(5) == range(1, 6) and ctx.resume() is None
    ctx.checkpoint(5, {"w": np.zeros(2)})
    assert ctx.saved is not None and ctx.saved.step == 5
    assert TrialContext({}, steps_to=1 / 9).steps(10) == range(1, 2)
    with pytest.raises(ValueError):
        ctx.steps(0)


def spec(**extra: Any) -> StudySpec:
    return StudySpec.model_validate(
        {
            "name": "s",
            "objective": "mlp_digits",
            "space": {"lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}},
            "budget": {"trials": 10},
            **extra,
        }
    )


def test_no_standard_mode_continues_and_a_modes_file_turns_it_on(tmp_path: Path) -> None:
    """Continuation is off in every packaged mode (it tied or lost against TPE with a pruner
    on the steps: docs/benchmarks.md); a modes file gives a mode rungs and it applies to
    resumable objectives only."""
    for name, mode in load_modes().items():
        plan = resolve_plan(spec(), name, mode)
        assert not continuation_applies(plan, resumable=True), name
    extra = tmp_path / "modes.toml"
    extra.write_text("[balanced]\ncontinuation = [0.111111, 0.333333, 1.0]\n")
    modes = load_modes(str(extra))
    for name, expected in (("balanced", True), ("fast", False), ("thorough", False)):
        plan = resolve_plan(spec(), name, modes[name])
        assert continuation_applies(plan, resumable=True) is expected, name
        assert not continuation_applies(plan, resumable=False)
    named = resolve_plan(spec(pruner={"name": "median"}), "balanced", modes["balanced"])
    assert not continuation_applies(named, resumable=True)  # its own pruner, every step
    two = resolve_plan(spec(directions=["minimize", "minimize"]), "balanced", modes["balanced"])
    assert not continuation_applies(two, resumable=True)


def test_the_daemon_learns_which_objectives_are_resumable_outside_its_process() -> None:
    """The daemon's probe reads ``hpod_resumable`` too, with the attribute the workers read:
    mlp_digits is resumable, gradient_boosting (its data ladder) and quadratic are not."""
    from hpod.daemon import declared as probe
    from hpod.workers.evaluation import RESUMABLE_ATTR

    assert probe.RESUMABLE_ATTR == RESUMABLE_ATTR

    async def ask() -> list[bool]:
        known = probe.DeclaredFidelities({})
        names = ("mlp_digits", "gradient_boosting", "quadratic", "no_such_objective")
        return list(await asyncio.gather(*(known.resumable(n) for n in names)))

    assert asyncio.run(ask()) == [True, False, False, False]
