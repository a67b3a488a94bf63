"""The sampler's view of a continued study (`hpod.sampling.paused`): paused trials read as
pruned at their rung values, the storage never changes, and Optuna's TPE (the installed
version) ranks them as it ranks pruned trials."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.samplers._tpe.sampler import _split_trials
from optuna.trial import TrialState

from hpod.daemon.promotion import Promotions
from hpod.daemon.store import StudyStore
from hpod.modes import load_modes
from hpod.policies.compose import resolve_plan
from hpod.sampling.paused import STEP_SCALE, PausedAsPruned, as_pruned
from hpod.schema import StudySpec

LADDER = (1 / 9, 1 / 3, 1.0)


def continued_study(
    values: dict[int, dict[float, float]], complete: dict[int, float]
) -> optuna.Study:
    """A study whose trials `values` names are RUNNING (paused) and `complete` COMPLETE."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for number in range(max([*values, *complete]) + 1):
        trial = study.ask({"x": optuna.distributions.FloatDistribution(0.0, 1.0)})
        if number in complete:
            study.tell(trial, complete[number])
    return study


class TestPromotionsView:
    """`Promotions.sampler_view` lists the continued trials not told, with their rung values."""

    def test_paused_and_promoted_trials_are_in_the_view_until_told(self) -> None:
        """A trial enters at its first rung, keeps its values while it runs to the next one,
        and leaves when it is told."""
        promotions = Promotions(LADDER, eta=3)
        promotions.dispatched(0, LADDER[0])
        assert promotions.sampler_view() == {}
        promotions.paused(0, LADDER[0], 0.5, 1.0, 0.1)
        promotions.paused(1, LADDER[0], 0.7, 1.0, 0.1)
        promotions.dispatched(0, LADDER[1])
        assert promotions.sampler_view() == {0: {LADDER[0]: 0.5}, 1: {LADDER[0]: 0.7}}
        promotions.paused(0, LADDER[1], 0.4, 1.0, 0.2)
        assert promotions.sampler_view()[0] == {LADDER[0]: 0.5, LADDER[1]: 0.4}
        promotions.told(0, 0.3)
        assert promotions.sampler_view() == {1: {LADDER[0]: 0.7}}

    def test_a_snapshot_is_never_changed_afterwards(self) -> None:
        """The Optuna thread may hold a view while the study loop records more."""
        promotions = Promotions(LADDER, eta=3)
        promotions.paused(0, LADDER[0], 0.5, 1.0, 0.1)
        snapshot = promotions.sampler_view()
        promotions.paused(1, LADDER[0], 0.6, 1.0, 0.1)
        promotions.told(0, None)
        assert snapshot == {0: {LADDER[0]: 0.5}}


class TestPausedAsPruned:
    """The wrapped sampler reads paused trials as pruned; the study itself is unchanged."""

    def test_paused_trials_read_as_pruned_at_their_rungs_and_others_unchanged(self) -> None:
        """Only the RUNNING trials the view names change state, with rung-scaled steps."""
        study = continued_study({0: {}, 1: {}}, {2: 0.1})
        paused = {0: {LADDER[0]: 0.5, LADDER[1]: 0.4}, 1: {}}
        view = PausedAsPruned(optuna.samplers.RandomSampler(), lambda: paused).view(study)
        states = {t.number: t.state for t in view._get_trials(deepcopy=False)}
        assert states == {0: TrialState.PRUNED, 1: TrialState.RUNNING, 2: TrialState.COMPLETE}
        shown = view._get_trials(states=(TrialState.PRUNED,))
        assert [t.number for t in shown] == [0]
        assert shown[0].intermediate_values == {
            round(LADDER[0] * STEP_SCALE): 0.5,
            round(LADDER[1] * STEP_SCALE): 0.4,
        }
        assert shown[0].params == study.trials[0].params
        assert [t.state for t in study.trials][:2] == [TrialState.RUNNING] * 2

    def test_tpe_ranks_the_leaders_of_the_highest_rung_among_its_good_trials(self) -> None:
        """Optuna's own split puts complete trials first, then pruned ones by the highest
        rung reached and their value there: the contract the view relies on."""
        paused = {0: {LADDER[0]: 0.2}, 1: {LADDER[0]: 0.3, LADDER[1]: 0.25}, 2: {LADDER[0]: 0.9}}
        study = continued_study(paused, {3: 0.1})
        view = PausedAsPruned(optuna.samplers.RandomSampler(), lambda: paused).view(study)
        trials = view._get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        below, above = _split_trials(view, trials, 2)
        assert [t.number for t in below] == [1, 3]
        assert [t.number for t in above] == [0, 2]

    def test_tpe_leaves_its_random_start_once_enough_trials_are_paused(self) -> None:
        """Ten paused trials end TPE's start-up: the next trial is modelled, not random."""
        paused = {n: {LADDER[0]: abs(n - 3) / 10} for n in range(10)}
        study = continued_study(paused, {})
        tpe = optuna.samplers.TPESampler(seed=0, n_startup_trials=10)
        seen: list[int] = []
        original = tpe._sample

        def counting(*args: object) -> object:
            seen.append(1)
            return original(*args)  # type: ignore[arg-type]

        tpe._sample = counting  # type: ignore[method-assign]
        study.sampler = PausedAsPruned(tpe, lambda: paused)
        study.ask({"x": optuna.distributions.FloatDistribution(0.0, 1.0)})
        assert seen, "TPE sampled at random: it did not count the paused trials"

    def test_the_pruned_copy_leaves_the_stored_trial_unchanged(self) -> None:
        """A copy, never the stored trial: the original keeps its state and reports."""
        study = continued_study({0: {}}, {})
        original = study.trials[0]
        copy = as_pruned(original, {1.0 / 9: 0.5})
        assert copy.state == TrialState.PRUNED and copy.params == original.params
        assert original.state == TrialState.RUNNING and original.intermediate_values == {}


def test_a_continued_study_s_sampler_reads_its_paused_trials(tmp_path: Path) -> None:
    """The daemon's store wraps the plan's sampler once a study loop hands it its paused
    trials, and asks then read them as pruned; a study without them keeps the bare sampler."""
    spec = StudySpec.model_validate(
        {
            "name": "s",
            "objective": "sgd_classifier",
            "space": {"alpha": {"type": "float", "low": 1e-6, "high": 1e-1, "log": True}},
            "budget": {"trials": 10},
        }
    )
    plan = resolve_plan(spec, "balanced", load_modes()["balanced"])
    store = StudyStore(f"journal://{tmp_path / 'j.log'}")
    store.create(spec)
    store.set_plan(spec, plan)
    assert not isinstance(store.open(spec).sampler, PausedAsPruned)
    paused: dict[int, dict[float, float]] = {}
    store.set_plan(spec, plan, lambda: paused)
    study = store.open(spec)
    assert isinstance(study.sampler, PausedAsPruned)
    asked = store.ask(spec)
    paused[asked.number] = {LADDER[0]: 0.5}
    seen = study.sampler.view(study)._get_trials(states=(TrialState.PRUNED,))
    assert [t.number for t in seen] == [asked.number]
    assert study.trials[asked.number].state == TrialState.RUNNING
