"""The static rule: what strategy ``auto`` uses (by default), from the space and the budget.

A cold study with a small budget cannot do much better than the best simple Optuna set-up
for its kind of problem, so ``auto`` picks that set-up, by a rule documented in
docs/policies.md and decided at the study's first decision from its declared space, budget
and objective fidelity (all known at the start):

- several objectives: NSGA-II;
- an objective with a fidelity (it reports epochs, or subsamples and the ladder has room
  and pays): multivariate TPE, and the mode's pruner and data ladder stay
  (`hpod.policies.compose` keeps them; GP and CMA-ES learn only from complete trials, TPE
  uses pruned ones);
- a data ladder has room only in a budget larger than `SMALL_BUDGET` evaluations (or none):
  its pay-off check needs nine ladder trials and three paired full evaluations per rung,
  and halving judges on a ninth of the data, where configurations rank only roughly. On
  the validation suite's data tasks (`bench/ladder_budget.py`) TPE on the ladder was never
  better than TPE on the full data at 10-80 evaluations, and the GP on the full data was
  better at 40; on the held-out gbm_large (20 evaluations) it pruned 8 of 21 trials and
  ended worse than plain TPE. So a subsampling objective with a small budget (or one in
  seconds not yet sized on `SIZING_MEASUREMENTS` measurements) is planned on the full data
  and chosen for as one without a fidelity (`ladder_has_room`; the study's loop drops the
  ladder from its plan);
- a numeric space (float and int parameters, at least `NUMERIC_SHARE` of them, no
  conditions) with a budget of at most `SMALL_BUDGET` evaluations (a trial limit, or a
  compute limit over the measured CPU of one evaluation), whose full evaluations are
  measured to cost at least `GP_MIN_EVALUATION_CPU`: Optuna's GP (in the sampler process),
  after a short Sobol opening — measured 1.13x plain TPE on HistGB with 16 evaluations,
  1.19x on an MLP; cheaper evaluations (or none measured yet): multivariate TPE;
- a numeric space whose budget is a limit in CPU or wall seconds not sized yet (on fewer
  than `SIZING_MEASUREMENTS` measured evaluations): multivariate TPE, until its size in
  evaluations is known (a limit in seconds is sized at the study's measured rate of trials
  told);
- a numeric space with a larger (or no) budget, two dimensions or more: CMA-ES after a
  Sobol opening, warm-started at its best point, with IPOP restarts — plain CMA-ES measured
  2.4-11.8x plain TPE on 5-D BBOB functions in long runs, and no better than TPE at 40
  evaluations (docs/benchmarks.md: a budget of 1.6 CPU seconds counted as "no trial
  budget" sent 5-D Rosenbrock and Rastrigin studies of ~40 evaluations to CMA-ES, worse
  than plain TPE);
- anything else (categorical, mixed or conditional spaces): multivariate TPE (grouped, so
  conditional parameters are modelled together).

The rule gives the same answer at every window of a study unless its budget, fidelity or
measured evaluation cost changes, so a study is never thrown between samplers. The learned
policy (opt-in, ``policy_learned``) starts from the rule's pick and leaves it only where its
networks agree.
"""

from __future__ import annotations

from hpod.policies.strategy.actions import BUILTIN, SIZING_MEASUREMENTS, SpaceShape, Strategy

#: Budgets of at most this many trials are small: the GP's model is worth its CPU there.
SMALL_BUDGET = 60
#: The GP is chosen only for objectives whose full evaluation costs at least this many CPU
#: seconds (measured on the study's complete trials). A GP suggestion cost hpod's sampler
#: process 0.06-0.10 CPU s at 5-8 dimensions and 20-60 trials (`bench/ladder_budget.py
#: --gp-cpu`, this 2-core machine under load), 0.5 s once, on 60 trials of the former
#: gradient-boosting demo, where it cost more than the 0.23 s evaluations it chose: at 1 s
#: an evaluation the model adds a tenth, at worst a half, to the objective's CPU. It was 2 s;
#: on the held-out gbm_large (1.7 CPU s a fit, 20 evaluations) plain GP was the best simple
#: set-up, at 1.43x plain TPE's total CPU with its sampler process. Until a full evaluation
#: is measured, TPE decides.
GP_MIN_EVALUATION_CPU = 1.0
#: A space is numeric when at least this share of its parameters are float or int.
NUMERIC_SHARE = 0.8


#: How a decision's reason names a fidelity ("epochs" covers any steps an objective reports:
#: epochs, passes, boosting rounds, CV folds).
FIDELITY_WORDS = {"epochs": "steps it reports", "data": "a data ladder that pays"}


def is_numeric(shape: SpaceShape) -> bool:
    """Float and int parameters (a few categoricals at most) and no conditions."""
    return not shape.n_conditional and shape.n_continuous >= NUMERIC_SHARE * shape.n_params


def is_small_budget(shape: SpaceShape) -> bool:
    """A budget of at most `SMALL_BUDGET` evaluations (its trial limit, or its compute limit
    in measured evaluations); no such limit is not small."""
    return shape.budget_evaluations is not None and shape.budget_evaluations <= SMALL_BUDGET


def ladder_has_room(shape: SpaceShape) -> bool:
    """Whether a data ladder may run in the study's budget: one of more than `SMALL_BUDGET`
    evaluations, or none; not a small one, nor one in seconds not yet sized (its first
    trials then go to the full data, which measures the evaluation that sizes it)."""
    return not shape.budget_pending and not is_small_budget(shape)


def budget_words(shape: SpaceShape) -> str:
    """The budget as a decision's reason names it."""
    if shape.budget_pending:
        if shape.budget_sized_on and shape.budget_evaluations is not None:
            return (
                f"~{shape.budget_evaluations:.0f} evaluations by a budget in seconds, sized on "
                f"{shape.budget_sized_on} of the {SIZING_MEASUREMENTS} measurements it waits for"
            )
        if shape.budget_evaluations is None:
            return "a budget in seconds, no evaluation measured yet"
        return (
            f"at most {shape.budget_evaluations:.0f} evaluations and a budget in seconds, "
            "no evaluation measured yet"
        )
    if shape.budget_evaluations is None:
        return "no trial or compute budget"
    if shape.budget_trials is not None and shape.budget_evaluations == shape.budget_trials:
        return f"{shape.budget_trials} trials"
    return f"~{shape.budget_evaluations:.0f} evaluations"


def rule(
    shape: SpaceShape,
    ladder_pays: bool | None = None,
    strategies: tuple[Strategy, ...] = BUILTIN,
) -> tuple[Strategy, str]:
    """The rule's strategy for a study of `shape`, and why.

    `ladder_pays` is the subsampling policy's verdict (None while it is still measuring): an
    objective that subsamples where the ladder does not pay, or has no room
    (`ladder_has_room`), counts as one without fidelity.
    """
    strategy, why = _rule(shape, ladder_pays, strategies)
    if (
        shape.fidelity == "data"
        and shape.n_directions == 1
        and ladder_pays is not False
        and not ladder_has_room(shape)
    ):
        why = f"no room for a data ladder in {budget_words(shape)}, full data; {why}"
    return strategy, why


def _rule(
    shape: SpaceShape, ladder_pays: bool | None, strategies: tuple[Strategy, ...]
) -> tuple[Strategy, str]:
    """`rule` without the word on the ladder."""
    by_name = {s.name: s for s in strategies}

    def pick(*names: str) -> Strategy:
        for name in names:
            strategy = by_name.get(name)
            if strategy is not None and strategy.mask_reason(shape) is None:
                return strategy
        return by_name.get("tpe") or by_name["random"]

    budget = budget_words(shape)
    if shape.n_directions > 1:
        return pick("nsga2", "tpe"), "several objectives: NSGA-II"
    fidelity = shape.fidelity == "epochs" or (
        shape.fidelity == "data" and ladder_pays is not False and ladder_has_room(shape)
    )
    if fidelity:
        words = FIDELITY_WORDS.get(str(shape.fidelity), "a fidelity")
        return pick("tpe-multivariate", "tpe"), (
            f"objective with {words}: multivariate TPE, which learns from "
            "pruned trials, under the mode's pruner and ladder"
        )
    if is_numeric(shape) and is_small_budget(shape):
        cpu = shape.evaluation_cpu
        if cpu is not None and cpu >= GP_MIN_EVALUATION_CPU:
            return pick("gp", "tpe-multivariate"), (
                f"numeric space, small budget ({budget}, <= {SMALL_BUDGET}), evaluations of "
                f"{cpu:.1f} CPU s: GP after a Sobol opening"
            )
        cost = "not measured yet" if cpu is None else f"{cpu:.2f} CPU s"
        return pick("tpe-multivariate", "tpe"), (
            f"numeric space, small budget ({budget}, <= {SMALL_BUDGET}), evaluations {cost} "
            f"(< {GP_MIN_EVALUATION_CPU:.0f} s: a GP would cost more than it saves): "
            "multivariate TPE"
        )
    if is_numeric(shape) and shape.budget_pending:
        return pick("tpe-multivariate", "tpe"), (
            f"numeric space, {budget}: multivariate TPE until the budget's size in "
            "evaluations is known"
        )
    if is_numeric(shape) and shape.n_params >= 2:
        return pick("cmaes", "tpe-multivariate"), (
            f"numeric space, long run ({budget}): CMA-ES after a Sobol opening, with restarts"
        )
    if is_numeric(shape):
        return pick("tpe-multivariate", "tpe"), f"one numeric parameter, long run ({budget}): TPE"
    return pick("tpe-multivariate", "tpe"), "categorical or conditional space: multivariate TPE"


def choose(
    shape: SpaceShape,
    told: int = 0,
    ladder_pays: bool | None = None,
    strategies: tuple[Strategy, ...] = BUILTIN,
) -> Strategy:
    """The rule's strategy for a study of `shape` (`told` is not used: the rule is static)."""
    return rule(shape, ladder_pays, strategies)[0]
