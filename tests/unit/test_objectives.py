"""The shipped objectives, called as a worker calls them: with a real TrialContext.

The registry test needs hpod installed in the venv (``pip install -e . --no-deps``), since
objective names come from the package's entry points.
"""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from hpod.workers.context import NoPruning, TrialContext, TrialPruned
from hpod.workers.objectives.analytic import BRANIN_MINIMUM, branin, quadratic
from hpod.workers.objectives.gradient_boosting import gradient_boosting
from hpod.workers.objectives.mlp import mlp_digits
from hpod.workers.objectives.svc import svc_breast_cancer
from hpod.workers.registry import ObjectiveRegistry

Objective = Callable[..., float]

# Few epochs keep the MLP tests fast; the behaviour under test does not depend on the count.
MLP_EPOCHS = 3


def run(objective: Objective, params: dict[str, Any], fidelity: float = 1.0, **kw: Any) -> float:
    """Evaluate `objective` once, with a fresh context and a non-pruning reporter."""
    return objective(TrialContext(params, fidelity, reporter=NoPruning()), **kw)


class PruneAfter:
    """A reporter whose pruner condemns the trial once `step` has been reported."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.reports: list[tuple[int, float]] = []

    def report(self, value: float, step: int) -> None:
        """Record the report, as a study's storage would."""
        self.reports.append((step, value))

    def should_prune(self) -> bool:
        """Prune as soon as the last reported step reaches `self.step`."""
        return bool(self.reports) and self.reports[-1][0] >= self.step


# --- analytic -----------------------------------------------------------------------------


def test_quadratic_is_zero_at_the_offset_and_sums_squares_elsewhere() -> None:
    """quadratic is 0 at the offset and the sum of squared distances to it elsewhere."""
    assert run(quadratic, {"a": 0.5, "b": 0.5}) == 0.0
    assert run(quadratic, {"a": 2.0, "b": -1, "kind": "ignored", "flag": True}) == 4.5
    assert run(quadratic, {"a": 3.0}, offset=1.0) == 4.0


def test_quadratic_without_numeric_params_is_refused() -> None:
    """quadratic refuses a space with nothing numeric rather than returning a perfect 0."""
    with pytest.raises(ValueError, match="numeric"):
        run(quadratic, {"kind": "rbf"})


def test_branin_reaches_its_known_minimum_at_all_three_minimisers() -> None:
    """branin is 0.397887 at its three global minimisers and about 308 in the worst corner."""
    for x1, x2 in [(-math.pi, 12.275), (math.pi, 2.275), (9.42478, 2.475)]:
        assert run(branin, {"x1": x1, "x2": x2}) == pytest.approx(BRANIN_MINIMUM, abs=1e-5)
    assert run(branin, {"x1": -5.0, "x2": 0.0}) == pytest.approx(308.129, abs=1e-3)


def test_branin_names_a_missing_parameter() -> None:
    """branin without x2 raises a ValueError that names x2."""
    with pytest.raises(ValueError, match="x2"):
        run(branin, {"x1": 1.0})


def test_analytic_objectives_accept_a_simulated_cost() -> None:
    """The sleep keyword is accepted (a short sleep) and a negative one is refused."""
    assert run(branin, {"x1": math.pi, "x2": 2.275}, sleep=0.01) < 0.4
    with pytest.raises(ValueError, match="sleep"):
        run(quadratic, {"a": 1.0}, sleep=-1)


# --- gradient boosting --------------------------------------------------------------------


def test_gradient_boosting_is_finite_and_deterministic() -> None:
    """Two evaluations with the same params give the same finite log-loss."""
    params = {"learning_rate": 0.1, "max_iter": 50, "max_depth": 4}
    first = run(gradient_boosting, params)
    assert math.isfinite(first)
    assert 0.0 < first < 0.5
    assert run(gradient_boosting, params) == first


def test_gradient_boosting_good_params_beat_bad_params() -> None:
    """Default boosting beats a model with a tiny learning rate and only 20 rounds."""
    good = run(gradient_boosting, {})
    bad = run(gradient_boosting, {"learning_rate": 0.01, "max_iter": 20})
    assert good < 0.2 < 0.5 < bad


def test_gradient_boosting_lower_fidelity_trains_on_fewer_rows() -> None:
    """A lower fidelity gives another, worse but deterministic, log-loss."""
    full = run(gradient_boosting, {})
    tenth = run(gradient_boosting, {}, fidelity=0.1)
    assert math.isfinite(tenth)
    assert tenth != full
    assert tenth > full
    assert run(gradient_boosting, {}, fidelity=0.1) == tenth


def test_gradient_boosting_keeps_every_class_at_a_tiny_fidelity() -> None:
    """The subsample is stratified: even 0.01 % of the rows keeps a row of each class."""
    assert math.isfinite(run(gradient_boosting, {}, fidelity=1e-4))


def test_gradient_boosting_data_size_comes_from_the_kwargs() -> None:
    """The study's kwargs change the generated data set, hence the score."""
    small = run(gradient_boosting, {"max_iter": 20}, n_samples=500, n_classes=3)
    assert math.isfinite(small)
    assert small != run(gradient_boosting, {"max_iter": 20})


# --- SVC ----------------------------------------------------------------------------------


def test_svc_is_finite_and_deterministic() -> None:
    """Two evaluations with the same params give the same finite error rate."""
    params = {"C": 3.0, "gamma": 0.02, "kernel": "rbf"}
    first = run(svc_breast_cancer, params)
    assert 0.0 <= first < 1.0
    assert run(svc_breast_cancer, params) == first


def test_svc_good_params_beat_bad_params() -> None:
    """C=1 with gamma='scale' errs about 2% of the time, C=1e-4 predicts one class (37%)."""
    good = run(svc_breast_cancer, {"C": 1.0, "gamma": "scale"})
    bad = run(svc_breast_cancer, {"C": 1e-4, "gamma": "scale"})
    assert good < 0.05
    assert bad > 0.3


def test_svc_accepts_every_kernel() -> None:
    """The linear and polynomial kernels (with a degree) give sensible error rates."""
    assert run(svc_breast_cancer, {"C": 0.1, "kernel": "linear"}) < 0.1
    assert run(svc_breast_cancer, {"C": 1.0, "gamma": 0.1, "kernel": "poly", "degree": 3}) < 0.1


def test_svc_refuses_an_unknown_kernel() -> None:
    """An unknown kernel name is a ValueError that lists the valid ones."""
    with pytest.raises(ValueError, match="kernel"):
        run(svc_breast_cancer, {"kernel": "sigmoidal"})


def test_svc_lower_fidelity_uses_fewer_rows() -> None:
    """A lower fidelity gives another finite error rate, and too low a one is refused."""
    full = run(svc_breast_cancer, {})
    fifth = run(svc_breast_cancer, {}, fidelity=0.2)
    assert 0.0 <= fifth < 1.0
    assert fifth != full
    with pytest.raises(ValueError, match="fidelity"):
        run(svc_breast_cancer, {}, fidelity=0.002)


# --- MLP ----------------------------------------------------------------------------------


def test_mlp_reports_once_per_epoch_and_returns_the_last_report() -> None:
    """mlp_digits reports steps 1..epochs and returns the last reported validation loss."""
    reporter = NoPruning()
    value = mlp_digits(TrialContext({}, 1.0, reporter=reporter), epochs=MLP_EPOCHS)
    assert [step for step, _ in reporter.reports] == list(range(1, MLP_EPOCHS + 1))
    assert all(math.isfinite(v) for _, v in reporter.reports)
    assert value == reporter.reports[-1][1]


def test_mlp_is_deterministic() -> None:
    """Two evaluations with the same params give the same finite validation loss."""
    params = {"lr": 3e-3, "hidden": 32, "layers": 2, "dropout": 0.2, "batch_size": 32}
    first = run(mlp_digits, params, epochs=MLP_EPOCHS)
    assert math.isfinite(first)
    assert run(mlp_digits, params, epochs=MLP_EPOCHS) == first


def test_mlp_good_params_beat_bad_params() -> None:
    """A learning rate of 3e-3 learns the digits; 1e-5 stays near chance (ln 10)."""
    good = run(mlp_digits, {"lr": 3e-3, "hidden": 64}, epochs=MLP_EPOCHS)
    bad = run(mlp_digits, {"lr": 1e-5, "hidden": 64}, epochs=MLP_EPOCHS)
    assert good < 0.5
    assert bad > 2.0


def test_mlp_lower_fidelity_uses_fewer_rows() -> None:
    """A lower fidelity gives another, worse, finite validation loss."""
    full = run(mlp_digits, {}, epochs=MLP_EPOCHS)
    fifth = run(mlp_digits, {}, fidelity=0.2, epochs=MLP_EPOCHS)
    assert math.isfinite(fifth)
    assert fifth > full


def test_mlp_raises_trial_pruned_when_the_pruner_says_so() -> None:
    """With a pruner that condemns the trial at step 2, training stops after epoch 2."""
    reporter = PruneAfter(step=2)
    with pytest.raises(TrialPruned):
        mlp_digits(TrialContext({}, 1.0, reporter=reporter), epochs=MLP_EPOCHS + 2)
    assert [step for step, _ in reporter.reports] == [1, 2]


def test_importing_the_mlp_objective_does_not_import_torch() -> None:
    """The daemon may import the objectives without loading torch (checked in a fresh process)."""
    code = (
        "import sys, hpod.workers.objectives.mlp, hpod.workers.registry; "
        "sys.exit('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr.decode()


# --- registry -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "function"),
    [
        ("quadratic", quadratic),
        ("branin", branin),
        ("gradient_boosting", gradient_boosting),
        ("svc_breast_cancer", svc_breast_cancer),
        ("mlp_digits", mlp_digits),
    ],
)
def test_registry_resolves_every_shipped_objective(name: str, function: Objective) -> None:
    """Each shipped objective is registered under its entry-point name."""
    assert ObjectiveRegistry().get(name) is function
