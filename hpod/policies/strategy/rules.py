"""The rule-based strategy selector: the fallback of the learned policy and its baseline.

It encodes what is measured on this kind of machine (shared/MEASURED.md) and in the benchmark:
on smooth continuous spaces CMA-ES reaches TPE's final quality many times sooner; on mixed,
categorical or conditional spaces multivariate TPE is better; when trials report per epoch,
pruning pays; a data ladder pays only where a small fraction is much cheaper than the full
data; early in a study, before any model can be trusted, a low-discrepancy design explores
best. Several objectives go to NSGA-II.
"""

from __future__ import annotations

from hpod.policies.strategy.actions import BUILTIN, SpaceShape, Strategy

#: Trials told before a model-based sampler takes over from the opening design.
OPENING_TRIALS = 10


def choose(
    shape: SpaceShape,
    told: int,
    ladder_pays: bool | None = None,
    strategies: tuple[Strategy, ...] = BUILTIN,
) -> Strategy:
    """The strategy the rules pick for a study of `shape` after `told` trials.

    `ladder_pays` is the subsampling policy's verdict (None while it is still measuring).
    """
    by_name = {s.name: s for s in strategies}

    def pick(*names: str) -> Strategy:
        for name in names:
            strategy = by_name.get(name)
            if strategy is not None and strategy.mask_reason(shape) is None:
                return strategy
        return by_name["random"]

    if shape.n_directions > 1:
        return pick("nsga2", "tpe")
    if told < OPENING_TRIALS and not shape.n_conditional:
        return pick("qmc", "random")
    continuous = shape.n_continuous >= 0.8 * shape.n_params and not shape.n_conditional
    if shape.fidelity == "epochs":
        return pick("cmaes-median" if continuous else "tpe-median", "tpe-median")
    if shape.fidelity == "data" and ladder_pays is not False:
        return pick("tpe-halving-ladder", "tpe-multivariate")
    if continuous and shape.n_params >= 2:
        return pick("cmaes", "tpe-multivariate")
    return pick("tpe-multivariate", "tpe")
