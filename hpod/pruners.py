"""Pruners built from a plan: Optuna's own, plus an aggressive relative threshold.

Steps follow Optuna's semantics: an objective reports ``(value, step)`` and the pruners
compare trials at the same step. On a data ladder the step is the percentage of the data a
rung used (11, 33, 100 for thirds of thirds), so trials on different ladders — a study whose
mode changed — still compare at the steps they share, and successive halving's rungs line up
with the ladder's. An objective that averages over cross-validation folds or instances
(``hpod_fidelity = "folds"``) reports one value per fold, at the fold's index as step, and is
pruned by `FoldPruner` instead of the plan's step pruners.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import optuna
from optuna.pruners import BasePruner
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from hpod.ranks import spearman


def fidelity_step(fraction: float) -> int:
    """The step at which a rung on `fraction` of the data reports: its percentage."""
    return max(1, round(fraction * 100))


def values_at(study: optuna.Study, trial: FrozenTrial, step: int) -> list[float]:
    """The values the study's other finished (complete or pruned) trials reported at `step`:
    what a trial's value there is judged against."""
    return [
        t.intermediate_values[step]
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        if step in t.intermediate_values and t.number != trial.number
    ]


class ThresholdPruner(BasePruner):
    """Prune a trial clearly worse than the best trial at the same step.

    Optuna's pruners compare with the median or a percentile; this one is the aggressive
    complement: once `min_trials` other trials have reported at a step, a trial worse than
    their best by more than `threshold` times |best| stops there.
    """

    def __init__(self, threshold: float, min_trials: int = 8) -> None:
        if threshold <= 0:
            raise ValueError(f"threshold must be positive, got {threshold}")
        self.threshold = threshold
        self.min_trials = min_trials

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        """Whether `trial`'s latest intermediate value is clearly worse than the best."""
        step = trial.last_step
        if step is None:
            return False
        value = trial.intermediate_values[step]
        if math.isnan(value):
            return True
        others = [v for v in values_at(study, trial, step) if not math.isnan(v)]
        if len(others) < self.min_trials:
            return False
        minimize = study.direction == StudyDirection.MINIMIZE
        best = min(others) if minimize else max(others)
        margin = self.threshold * max(abs(best), 1e-12)
        return value > best + margin if minimize else value < best - margin


class FoldPruner(BasePruner):
    """Prune a trial over folds (or instances) once it is clearly worse than the best trial.

    The trial has reported one value per fold at the fold's index as step, in a per-trial
    shuffled order; the best finished trial reported all ``N`` of them. After ``n`` folds the
    trial's mean over those folds is compared, fold by fold (paired), with the best's mean
    over the same folds. The trial stops when that difference exceeds ``k`` standard errors
    of its final mean difference, ``s * sqrt((N - n) / (N * n))``: ``s`` is the spread of a
    trial's per-fold differences from the best, pooled over the finished trials (each
    around its own mean difference), and the factor is what is still unknown of the final
    mean when ``N - n`` folds remain. It never prunes before ``min_folds`` folds, nor once
    all folds are in (the evaluation is paid for), nor before ``min_trials`` finished trials
    have measured the spread.

    With few folds (five, ten) Optuna's `WilcoxonPruner` cannot reach significance before
    the fourth or fifth fold; with more than `wilcoxon_above` folds this pruner hands the
    decision to it (a rank test needs no spread estimate and is robust to outlying folds).
    """

    def __init__(
        self,
        k: float,
        min_folds: int = 2,
        min_trials: int = 4,
        wilcoxon_above: int = 10,
        p_threshold: float = 0.1,
    ) -> None:
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        if min_folds < 1:
            raise ValueError(f"min_folds must be at least 1, got {min_folds}")
        self.k = k
        self.min_folds = min_folds
        self.min_trials = max(2, min_trials)
        self.wilcoxon_above = wilcoxon_above
        self.p_threshold = p_threshold
        self._wilcoxon: BasePruner | None = None

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        """Whether `trial`'s folds so far show it clearly worse than the best trial."""
        seen = {s: v for s, v in trial.intermediate_values.items() if math.isfinite(v)}
        if len(seen) < self.min_folds:
            return False
        finished = [
            t
            for t in study.get_trials(
                deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)
            )
            if t.number != trial.number and len(t.intermediate_values) >= 2
        ]
        complete = [t for t in finished if t.state == TrialState.COMPLETE and t.value is not None]
        if not complete:
            return False
        minimize = study.direction == StudyDirection.MINIMIZE
        best = (min if minimize else max)(complete, key=lambda t: float(t.value))  # type: ignore[arg-type]
        total = len(best.intermediate_values)
        if len(seen) >= total:
            return False  # every fold is in: pruning now would only throw the value away
        if total > self.wilcoxon_above:
            if self._wilcoxon is None:
                with warnings.catch_warnings():  # "experimental": Optuna is pinned below 6
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    self._wilcoxon = optuna.pruners.WilcoxonPruner(
                        p_threshold=self.p_threshold, n_startup_steps=self.min_folds
                    )
            return self._wilcoxon.prune(study, trial)
        return fold_rule(
            seen,
            best.intermediate_values,
            [t.intermediate_values for t in finished if t.number != best.number],
            k=self.k,
            min_folds=self.min_folds,
            min_trials=self.min_trials - 1,
            minimize=minimize,
        )


class ShareWarmup(BasePruner):
    """Let `pruner` decide only once a trial has run `share` of the study's steps.

    Optuna's ``n_warmup_steps`` is a step count, but a mode does not know how many epochs or
    passes each objective runs. The steps are read from the study instead: the most steps a
    complete trial reported. Before the first complete trial, nothing is pruned. Why: a
    network judged after its first epoch is judged on how fast it starts (large learning
    rates, small batches), not on where it ends; on mlp_epochs the median pruner at share 0
    pruned 59 of 74 trials after epoch 1 and ended worse than no pruning at equal compute.
    """

    def __init__(self, pruner: BasePruner, share: float) -> None:
        if not 0.0 <= share < 1.0:
            raise ValueError(f"warmup_share must be in [0, 1), got {share}")
        self.pruner = pruner
        self.share = share

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        """Whether the wrapped pruner stops `trial`, once it is past the warm-up share."""
        step = trial.last_step
        if step is None:
            return False
        if self.share > 0.0:
            steps = [
                t.last_step
                for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if t.last_step is not None
            ]
            if not steps or step < self.share * max(steps):
                return False
        return self.pruner.prune(study, trial)


class AgreementGate(BasePruner):
    """Let `pruner` decide at a step only where the study's values there rank its trials as
    their final values do.

    A pruner judges a trial by its value at an early step; that is only sound where the
    early order predicts the final one. This gate measures it on the study's own complete
    trials: Spearman's rho between their values at the trial's step and their final values,
    and lets the wrapped pruner decide only when rho is at least `min_agreement` (with at
    least `min_trials` complete trials that reported the step; fewer: no pruning). Measured
    on mlp_epochs (plain TPE, 227 complete trials of 30 epochs): rho 0.10 after epoch 1,
    0.45 after 5, 0.61 after 8, 0.83 after 15, where the median pruner, deciding from the
    first epoch, pruned 59 of 74 trials there and ended worse than no pruning at equal
    compute. Where the early steps do agree, pruning starts as early as before.
    """

    def __init__(self, pruner: BasePruner, min_agreement: float, min_trials: int = 5) -> None:
        if not -1.0 <= min_agreement <= 1.0:
            raise ValueError(f"min_agreement must be in [-1, 1], got {min_agreement}")
        self.pruner = pruner
        self.min_agreement = min_agreement
        self.min_trials = min_trials

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        """Whether the wrapped pruner stops `trial`, where the study's early order holds."""
        step = trial.last_step
        if step is None:
            return False
        pairs = [
            (t.intermediate_values[step], t.value)
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if step in t.intermediate_values and t.value is not None
        ]
        pairs = [(a, b) for a, b in pairs if math.isfinite(a) and math.isfinite(b)]
        if len(pairs) < self.min_trials:
            return False
        rho = spearman([a for a, _ in pairs], [b for _, b in pairs])
        if math.isnan(rho) or rho < self.min_agreement:
            return False
        return self.pruner.prune(study, trial)


def fold_rule(
    seen: dict[int, float],
    best: dict[int, float],
    others: list[dict[int, float]],
    *,
    k: float,
    min_folds: int,
    min_trials: int,
    minimize: bool,
) -> bool:
    """`FoldPruner`'s decision from plain numbers: a trial's values by fold (`seen`), the
    best trial's (`best`, every fold) and the other finished trials' (`others`, whose paired
    differences from the best measure the spread; at least `min_trials` of them)."""
    sign = 1.0 if minimize else -1.0
    total = len(best)
    folds = [f for f in seen if f in best]
    n = len(folds)
    if n < min_folds or n >= total:
        return False
    squares, dof, counted = 0.0, 0, 0
    for values in others:
        diffs = [values[f] - best[f] for f in values if f in best and math.isfinite(values[f])]
        if len(diffs) < 2:
            continue
        mean = sum(diffs) / len(diffs)
        squares += sum((d - mean) ** 2 for d in diffs)
        dof += len(diffs) - 1
        counted += 1
    if counted < min_trials or dof == 0:
        return False
    spread = math.sqrt(squares / dof)
    worse = sign * sum(seen[f] - best[f] for f in folds) / n
    margin = k * spread * math.sqrt((total - n) / (total * n))
    return worse > margin


def build_pruners(
    name: str,
    options: dict[str, Any],
    threshold: float = 0.0,
    threshold_min_trials: int = 8,
    ladder: list[float] | None = None,
) -> list[BasePruner]:
    """The pruners a plan names; a trial stops when any of them says so.

    On a data ladder, successive halving and Hyperband start at the first rung's step, so each
    rung of the ladder is one of their rungs. Two options of hpod's own, of `median`,
    `percentile` and `patient`, hold the pruner and the threshold back: ``warmup_share``
    until a trial has run that share of the study's steps (`ShareWarmup`), and
    ``min_agreement`` at steps whose values rank the study's complete trials as their final
    values do with a Spearman rho below it (`AgreementGate`). A third, ``threshold``, of any
    pruner, replaces the `threshold` argument (the mode's): a step pruner's options carry it
    so that an objective's own steps get a threshold of their own, 0 for none (fast keeps 5 %
    of |best| on its data ladder, none on epochs: on a loss near 0.1, 5 % of the best is a
    hair and pruned 141 of 150 trials on mlp_epochs).
    """
    options = dict(options)
    share = _number(options.pop("warmup_share", 0.0), "warmup_share")
    agreement = _number(options.pop("min_agreement", None), "min_agreement")
    step_threshold = _number(options.pop("threshold", None), "threshold")
    if step_threshold is not None:
        if not 0.0 <= step_threshold <= 10.0:
            raise ValueError(f"threshold must be in [0, 10] (0 = off), got {step_threshold:g}")
        threshold = step_threshold
    for key, given in (("warmup_share", share), ("min_agreement", agreement)):
        if given is not None and given != 0.0 and name not in ("median", "percentile", "patient"):
            raise ValueError(f"{key} applies to median, percentile and patient, not {name!r}")
    first_step = fidelity_step(ladder[0]) if ladder and len(ladder) > 1 else None
    pruner = _optuna_pruner(name, options, first_step)
    pruners: list[BasePruner] = [] if pruner is None else [pruner]
    if threshold > 0:
        pruners.append(ThresholdPruner(threshold, threshold_min_trials))
    # The threshold judges early steps as the median does: both wait out the warm-up and
    # the agreement gate.
    if share:
        pruners = [ShareWarmup(p, share) for p in pruners]
    if agreement is not None:
        pruners = [AgreementGate(p, agreement) for p in pruners]
    return pruners


def _number(value: Any, key: str) -> float | None:
    """A pruner option that must be a number (None stays None)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{key} must be a number, got {value!r}")
    return float(value)


def _optuna_pruner(name: str, options: dict[str, Any], first_step: int | None) -> BasePruner | None:
    """Optuna's pruner `name` with `options` (None for "none")."""
    if name == "median":
        return optuna.pruners.MedianPruner(**options)
    if name == "percentile":
        options.setdefault("percentile", 25.0)
        return optuna.pruners.PercentilePruner(**options)
    if name == "patient":
        patience = int(options.pop("patience", 3))
        min_delta = float(options.pop("min_delta", 0.0))
        wrapped = optuna.pruners.MedianPruner(**options)
        return optuna.pruners.PatientPruner(wrapped, patience, min_delta)
    if name == "successive_halving":
        if first_step is not None:
            options.setdefault("min_resource", first_step)
        return optuna.pruners.SuccessiveHalvingPruner(**options)
    if name == "hyperband":
        if first_step is not None:
            options.setdefault("min_resource", first_step)
            options.setdefault("max_resource", 100)
        return optuna.pruners.HyperbandPruner(**options)
    if name == "wilcoxon":
        return optuna.pruners.WilcoxonPruner(**options)
    if name != "none":
        raise ValueError(f"unknown pruner {name!r}")
    return None


def should_prune(study: optuna.Study, trial: FrozenTrial, pruners: list[BasePruner]) -> bool:
    """Ask each pruner in turn, as `study.pruner` (Hyperband reads its brackets from there)."""
    for pruner in pruners:
        study.pruner = pruner
        if pruner.prune(study, trial):
            return True
    return False
