"""One plan, composed in one place: mode + spec + strategy + the objective's fidelity.

Every plan a study runs under comes from here (issue 13, item 1):

1. `resolve_plan`: the mode's knobs, with what the spec sets explicitly (sampler, pruner,
   ``max_concurrent``) winning over them. This is the plan under strategy ``mode``. Its
   continuation rungs apply to objectives that declare ``hpod_resumable``
   (`continuation_applies`); a strategy keeps them.
2. `compose`: the mode's step pruner in place of its pruner on an objective that reports
   steps of its own (`step_pruner_applies`), then the strategy in force laid over that
   plan. Its sampler always replaces the mode's. Its pruner and data ladder replace the
   mode's only where they apply: a strategy chosen by ``auto`` that prunes nothing, or has
   no ladder, keeps the mode's pruner (the step pruner on steps), or ladder, when the
   objective's fidelity lets them work. A strategy never silently drops pruning; a
   strategy the study forces gets exactly what it names.
3. `ladder_off`: a data ladder measured not to pay (`hpod.policies.ladder_payoff`) is
   dropped from whichever plan is in force: trials go to the full data, the pruner stays.
   So is one that ``auto``'s rule finds no room for in the study's budget
   (`StrategyLayer.ladder_room`, `hpod.policies.strategy.rules.ladder_has_room`).

A study's loop (`hpod.daemon.studies.StudyRun`) keeps what its strategy decisions lay over
the mode's plan as a `StrategyLayer` and composes its plan in one place, `StrategyLayer.over`.

The fidelity is the one the objective declares (``hpod_fidelity``, known before the first
trial), else the one its trials show (`features.infer_fidelity`), else unknown (None).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from hpod.modes import Mode
from hpod.policies.plan import Plan
from hpod.policies.strategy.actions import Fidelity, Strategy
from hpod.schema import StudySpec

#: The pruners whose options a spec may set (Optuna's median family).
MEDIAN_FAMILY = ("median", "percentile", "patient")


def resolve_plan(spec: StudySpec, mode_name: str, mode: Mode) -> Plan:
    """The plan of `spec` under `mode`: the spec's explicit sampler, pruner and
    max_concurrent win over the mode's."""
    sampler = spec.sampler.name or mode.sampler
    sampler_options = dict(mode.sampler_options) if spec.sampler.name is None else {}
    if spec.pruner is not None:
        pruner = spec.pruner.name
        pruner_options: dict[str, Any] = (
            {
                "n_startup_trials": spec.pruner.n_startup_trials,
                "n_warmup_steps": spec.pruner.n_warmup_steps,
            }
            if pruner in MEDIAN_FAMILY
            else {}
        )
    else:
        pruner, pruner_options = mode.pruner, dict(mode.pruner_options)
    return Plan(
        mode=mode_name,
        sampler=sampler,
        sampler_options=sampler_options,
        seed=spec.sampler.seed,
        pruner=pruner,
        pruner_options=pruner_options,
        threshold=mode.threshold,
        threshold_min_trials=mode.threshold_min_trials,
        ladder=tuple(mode.ladder),
        policies=frozenset(mode.policies),
        parallelism=spec.max_concurrent or mode.parallelism,
        batch_seconds=mode.batch_seconds,
        max_pack=mode.max_pack,
        single_objective=len(spec.directions) == 1,
        strategy_window=mode.strategy_window,
        # The fold rule is the mode's pruner for objectives over folds: a spec naming its
        # own pruner gets that pruner instead.
        fold_margin=mode.fold_margin if spec.pruner is None and len(spec.directions) == 1 else 0.0,
        transfer_share=mode.transfer_share,
        transfer_prior=mode.transfer_prior,
        # A spec that names its pruner gets that pruner on every step, not promotions.
        steps_ladder=tuple(mode.continuation) if spec.pruner is None else (),
        eta=mode.continuation_eta,
        # Likewise the mode's step pruner: it replaces only the mode's own pruner.
        step_pruner=mode.step_pruner if spec.pruner is None else None,
        step_pruner_options=dict(mode.step_pruner_options) if spec.pruner is None else {},
    )


def compose(
    mode_plan: Plan,
    strategy: Strategy | None,
    fidelity: Fidelity | None,
    *,
    keep_mode_pruning: bool,
    ladder_off: bool = False,
) -> Plan:
    """`mode_plan`, with its step pruner on a step `fidelity` (`for_fidelity`), and
    `strategy` laid over it (no other change when there is no strategy), and with its data
    ladder dropped when `ladder_off` (see `drop_ladder`).

    The strategy's sampler, pruner and ladder replace the mode's, and the mode's other knobs,
    the spec's seed and parallelism stay. With `keep_mode_pruning` (a strategy chosen by
    ``auto``) and an objective of known fidelity, a strategy without a pruner keeps the
    mode's, and one without a ladder keeps the mode's ladder on an objective that subsamples
    and is pruned (see `mode_pruner_applies` and `mode_ladder_applies`).
    """
    mode_plan = for_fidelity(mode_plan, fidelity)
    if strategy is None:
        return drop_ladder(mode_plan) if ladder_off else mode_plan
    pruner, pruner_options = strategy.pruner, dict(strategy.pruner_options)
    ladder = tuple(strategy.ladder)
    kept = []
    if keep_mode_pruning and fidelity is not None:
        if pruner == "none" and mode_pruner_applies(mode_plan, fidelity):
            pruner, pruner_options = mode_plan.pruner, dict(mode_plan.pruner_options)
            kept.append("pruner")
        if len(ladder) == 1 and pruner != "none" and mode_ladder_applies(mode_plan, fidelity):
            ladder = tuple(mode_plan.ladder)
            kept.append("ladder")
    extra: dict[str, Any] = {**mode_plan.extra, "strategy": strategy.name}
    if kept:
        extra["kept_from_mode"] = kept
    plan = replace(
        mode_plan,
        sampler=strategy.sampler,
        sampler_options=dict(strategy.sampler_options),
        pruner=pruner,
        pruner_options=pruner_options,
        ladder=ladder,
        extra=extra,
        # A forced strategy gets exactly what it names; `auto` keeps the mode's fold rule.
        fold_margin=mode_plan.fold_margin if keep_mode_pruning else 0.0,
    )
    return drop_ladder(plan) if ladder_off else plan


@dataclass(frozen=True)
class StrategyLayer:
    """What a study's strategy decisions lay over its mode's plan: the strategy in force
    (None: the mode's own sampler, pruner and ladder), the objective's fidelity the plan is
    composed for, and whether the mode's pruning is kept where the strategy has none (a
    strategy chosen by ``auto``)."""

    strategy: Strategy | None = None
    fidelity: Fidelity | None = None
    keep_mode_pruning: bool = False
    #: Whether the study's budget leaves a data ladder room to pay (`auto`'s rule,
    #: `rules.ladder_has_room`): without it the plan runs on the full data.
    ladder_room: bool = True

    def over(self, mode_plan: Plan, *, ladder_off: bool = False) -> Plan:
        """The plan `mode_plan` becomes under this layer (`compose`)."""
        plan = compose(
            mode_plan,
            self.strategy,
            self.fidelity,
            keep_mode_pruning=self.keep_mode_pruning,
            ladder_off=ladder_off,
        )
        if self.ladder_room:
            return plan
        return _on_full_data(plan, "ladder_room", False)


def drop_ladder(plan: Plan) -> Plan:
    """`plan` on the full data: its ladder measured not to pay. The pruner stays (it still
    applies to objectives that report steps of their own)."""
    return _on_full_data(plan, "ladder_off", True)


def _on_full_data(plan: Plan, why: str, value: bool) -> Plan:
    """`plan` without its data ladder (none to drop: unchanged), `extra[why] = value` saying
    why, and "ladder" no longer among what it kept from the mode."""
    if len(plan.ladder) < 2:
        return plan
    extra = {**plan.extra, why: value}
    kept = [k for k in extra.pop("kept_from_mode", []) if k != "ladder"]
    if kept:
        extra["kept_from_mode"] = kept
    return replace(plan, ladder=(1.0,), extra=extra)


def step_pruner_applies(mode_plan: Plan, fidelity: Fidelity | None) -> bool:
    """Whether the mode's step pruner replaces its pruner: the mode has one and the objective
    reports steps of its own (epochs, passes, rounds: fidelity "epochs"), not a data ladder's
    rungs. On unknown fidelity (None) the mode's pruner stays."""
    return mode_plan.step_pruner is not None and fidelity == "epochs"


def for_fidelity(mode_plan: Plan, fidelity: Fidelity | None) -> Plan:
    """`mode_plan` with its step pruner as the pruner where `step_pruner_applies`."""
    if not step_pruner_applies(mode_plan, fidelity):
        return mode_plan
    return replace(
        mode_plan,
        pruner=str(mode_plan.step_pruner),
        pruner_options=dict(mode_plan.step_pruner_options),
        extra={**mode_plan.extra, "pruner_for": "steps"},
    )


def mode_pruner_applies(mode_plan: Plan, fidelity: Fidelity) -> bool:
    """Whether the mode's pruner can stop trials: it has one, the objective reports something
    to prune on (a data ladder's rungs or its own epochs), and the study has one objective."""
    return mode_plan.pruner != "none" and fidelity != "none" and mode_plan.single_objective


def mode_ladder_applies(mode_plan: Plan, fidelity: Fidelity) -> bool:
    """Whether the mode's data ladder can work: it has rungs below full data, the objective
    subsamples, and the study has one objective."""
    return len(mode_plan.ladder) > 1 and fidelity == "data" and mode_plan.single_objective


def continuation_applies(plan: Plan, resumable: bool) -> bool:
    """Whether a study continues its trials instead of re-training them: the plan has
    continuation rungs below the last, the objective declares ``hpod_resumable``, the
    pruning policy is in force and the study has one objective. Then the continuation
    rungs replace the data ladder and the step pruner (a strategy's sampler still applies).
    """
    return (
        len(plan.steps_ladder) > 1 and resumable and plan.single_objective and plan.uses("pruning")
    )


def compose_plan(
    spec: StudySpec,
    mode_name: str,
    mode: Mode,
    strategy: Strategy | None = None,
    fidelity: Fidelity | None = None,
    *,
    keep_mode_pruning: bool = False,
) -> Plan:
    """The whole composition in one call: `spec` under `mode`, `strategy` laid over it."""
    return compose(
        resolve_plan(spec, mode_name, mode),
        strategy,
        fidelity,
        keep_mode_pruning=keep_mode_pruning,
    )
