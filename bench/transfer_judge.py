"""Validation of the transfer judge's bounds (`hpod.transfer.agreement`) on sequences whose
seeds are disjoint from the reported ones of bench/transfer.py.

For each validation seed, every data set of bench/transfer.py's sequence and its control
(the bowl) is tuned cold (plain TPE, 30 trials, the study seed `study_seed(seed, d)`), and
each study's memory is built as the daemon builds it. Then, for every ordered pair (a study,
another data set's memory) and for the control against each boosting memory, the judge's
Spearman rho is computed over the study's first n own trials (TPE's random startup: what a
warm study's judge sees after its one transferred probe), n = 8 to 12. Printed: how often a
related source would be supported (rho >= z / sqrt(n - 1)) for several z, how often it would
be dropped (rho < -1.645 / sqrt(n - 1)), and the same for the unrelated control.

    python bench/transfer_judge.py --seeds 100 101 102 103

Not part of the test suite.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import optuna

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from transfer import CONTROL, DATASETS, OBJECTIVE, SPACE, boosting, bowl, study_seed  # noqa: E402

from hpod.engine import suggest  # noqa: E402
from hpod.schema import StudySpec  # noqa: E402
from hpod.transfer.agreement import (  # noqa: E402
    _spearman,
    critical,
    predict_ranks,
    support,
)
from hpod.transfer.memory import Observed, build_memory  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)
Z = (0.0, 0.52, 0.84, 1.28, 1.645)
NS = (8, 10, 12)


def tune(seed: int, d: int, trials: int) -> list[tuple[dict[str, Any], float]]:
    """A cold study (plain TPE) of data set d (CONTROL: the bowl): its (params, value)s."""
    space = StudySpec.model_validate(
        {"name": "v", "space": SPACE, "budget": {"trials": trials}}, strict=False
    ).space
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=study_seed(seed, d)))
    out = []
    for _ in range(trials):
        trial = study.ask()
        params = suggest(trial, space)
        value = bowl(params, {}) if d == CONTROL else boosting(params, DATASETS[d])
        study.tell(trial, value)
        out.append((params, value))
    return out


def rhos(seed: int, trials: int) -> dict[str, list[tuple[int, float]]]:
    """One validation seed: rho at each n for related pairs and for the control."""
    space = StudySpec.model_validate(
        {"name": "v", "space": SPACE, "budget": {"trials": trials}}, strict=False
    ).space
    runs = {d: tune(seed, d, trials) for d in [*range(len(DATASETS)), CONTROL]}
    memories = {
        d: build_memory(
            f"m{d}", OBJECTIVE, dict(space), ["minimize"], [Observed(p, [v]) for p, v in runs[d]]
        )
        for d in range(len(DATASETS))
    }
    out: dict[str, list[tuple[int, float]]] = {"related": [], "control": []}
    pairs = [(a, b) for a, b in itertools.permutations(range(len(DATASETS)), 2)]
    pairs += [(CONTROL, b) for b in range(len(DATASETS))]
    for a, b in pairs:
        memory = memories[b]
        assert memory is not None
        for n in NS:
            own = runs[a][:n]
            predicted = predict_ranks(memory.surface, [p for p, _ in own], dict(space))
            rho = _spearman(predicted, [v for _, v in own])
            out["control" if a == CONTROL else "related"].append(
                (n, math.nan if rho is None else rho)
            )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[100, 101, 102, 103])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    with ProcessPoolExecutor(args.jobs) as pool:
        results = list(pool.map(rhos, args.seeds, [args.trials] * len(args.seeds)))
    print(f"validation seeds {args.seeds}, {args.trials} trials a study")
    print(
        "| pairs | n | median rho | dropped (< -1.645/sqrt(n-1)) | "
        + " | ".join(f"supports z={z}" for z in Z)
        + " |"
    )
    print("|---|---|---|---|" + "---|" * len(Z))
    for kind in ("related", "control"):
        for n in NS:
            values = [r for res in results for m, r in res[kind] if m == n and not math.isnan(r)]
            values.sort()
            med = values[len(values) // 2]
            dropped = sum(r < -critical(n) for r in values) / len(values)
            sup = [sum(r >= support(n, z) for r in values) / len(values) for z in Z]
            print(
                f"| {kind} ({len(values)}) | {n} | {med:+.2f} | {dropped:.0%} | "
                + " | ".join(f"{s:.0%}" for s in sup)
                + " |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
