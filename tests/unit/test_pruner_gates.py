"""Gates on a step pruner: `ShareWarmup` (a share of the study's steps first) and
`AgreementGate` (only at steps whose values rank trials as their final values do).

The case that motivated them, as measured: on mlp_epochs (30 epochs) Optuna's
`MedianPruner()` pruned trials after their first epoch, where a large-batch network still
looks bad (rank agreement with the final values 0.10 there).
"""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from hpod.pruners import AgreementGate, ShareWarmup, build_pruners, should_prune

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _study_with_complete_trials(steps: int, n: int) -> optuna.Study:
    """`n` complete trials that reported a loss of 0.1 at every step 1..`steps`."""
    study = optuna.create_study(direction="minimize")
    for _ in range(n):
        trial = study.ask()
        for step in range(1, steps + 1):
            trial.report(0.1, step)
        study.tell(trial, 0.1)
    return study


def _reported(study: optuna.Study, values: list[float]) -> optuna.trial.FrozenTrial:
    trial = study.ask()
    for step, value in enumerate(values, start=1):
        trial.report(value, step)
    return study._storage.get_trial(trial._trial_id)


def test_a_trial_worse_than_the_median_is_kept_until_its_share_of_the_steps() -> None:
    study = _study_with_complete_trials(steps=30, n=6)
    pruners = build_pruners("median", {"warmup_share": 0.1})
    assert isinstance(pruners[0], ShareWarmup)
    # Worse than every complete trial at step 1 and 2: the plain median pruner stops it ...
    early = _reported(study, [2.3, 2.2])
    assert should_prune(study, early, build_pruners("median", {}))
    # ... the held-back one does not: 2 of 30 steps is below a tenth.
    assert not should_prune(study, early, pruners)
    # At step 3 (a tenth of 30) it decides as the median pruner does.
    later = _reported(study, [2.3, 2.2, 2.1])
    assert should_prune(study, later, pruners)
    good = _reported(study, [0.05, 0.05, 0.05])
    assert not should_prune(study, good, pruners)


def test_nothing_is_pruned_before_a_trial_has_completed() -> None:
    study = optuna.create_study(direction="minimize")
    for _ in range(6):  # pruned trials only: the study's steps are not known yet
        trial = study.ask()
        trial.report(0.1, 1)
        study.tell(trial, state=TrialState.PRUNED)
    pruner = ShareWarmup(optuna.pruners.MedianPruner(n_startup_trials=0), 0.25)
    assert not pruner.prune(study, _reported(study, [5.0]))


def test_share_zero_is_the_wrapped_pruner() -> None:
    study = _study_with_complete_trials(steps=30, n=6)
    bare = ShareWarmup(optuna.pruners.MedianPruner(), 0.0)
    assert bare.prune(study, _reported(study, [5.0]))
    assert not bare.prune(study, _reported(study, [0.01]))


def test_the_threshold_waits_out_the_warm_up_too() -> None:
    study = _study_with_complete_trials(steps=30, n=8)
    pruners = build_pruners("median", {"warmup_share": 0.1}, threshold=0.05, threshold_min_trials=6)
    assert len(pruners) == 2 and all(isinstance(p, ShareWarmup) for p in pruners)
    threshold = pruners[1]
    assert not threshold.prune(study, _reported(study, [0.5, 0.5]))
    assert threshold.prune(study, _reported(study, [0.5, 0.5, 0.5]))


def _study_where_step_one_misleads(n: int = 8) -> optuna.Study:
    """`n` complete trials whose order after step 1 is the reverse of their final order (a
    large-batch network starts slow and ends best), and agrees from step 2 on."""
    study = optuna.create_study(direction="minimize")
    for i in range(n):
        trial = study.ask()
        final = 0.1 + 0.01 * i
        trial.report(2.0 - 0.1 * i, 1)  # the best at the end is the worst after step 1
        trial.report(final + 0.05, 2)
        trial.report(final, 3)
        study.tell(trial, final)
    return study


def test_the_agreement_gate_keeps_a_trial_where_early_values_mislead() -> None:
    study = _study_where_step_one_misleads()
    plain = build_pruners("median", {})
    gated = build_pruners("median", {"min_agreement": 0.5})
    assert isinstance(gated[0], AgreementGate)
    slow_starter = _reported(study, [2.5])
    assert should_prune(study, slow_starter, plain)
    assert not should_prune(study, slow_starter, gated)  # rho at step 1 is -1
    # At step 2 the order agrees (rho 1): the gate lets the median decide.
    loser = _reported(study, [1.0, 0.9])
    assert should_prune(study, loser, gated)
    winner = _reported(study, [1.0, 0.05])
    assert not should_prune(study, winner, gated)


def test_the_agreement_gate_waits_for_enough_complete_trials() -> None:
    study = _study_where_step_one_misleads(n=4)
    gate = AgreementGate(optuna.pruners.MedianPruner(n_startup_trials=0), 0.5, min_trials=5)
    assert not gate.prune(study, _reported(study, [5.0, 5.0]))
