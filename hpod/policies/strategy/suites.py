"""Task suites for training, validating and judging the strategy policy, cheap enough to run
thousands of studies.

Each task is a space, an objective that can be evaluated at a fidelity (a data fraction or a
share of the epochs) and a cost in CPU seconds. Synthetic tasks stand for the kinds of
problem the strategies differ on: smooth or multimodal continuous functions, mixed and
conditional spaces, noise, data ladders, epoch curves where early epochs mislead; they
charge the cost model fitted on a recorded real objective (`costs.fitted`: fixed overhead,
exponent in the fraction, spread across configurations). Recorded tasks (`recorded_task`)
are shipped objectives run for real on a grid: real values, measured CPU.

The three suites (training, validation, held-out) are disjoint: see the note above
`training_suite`. `learning_family` is in none of them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

from hpod.policies.strategy import costs, recorded
from hpod.policies.strategy.actions import Fidelity
from hpod.schema import StudySpec

Params = dict[str, Any]
#: value(params, fidelity in (0, 1], noise generator or None for the noiseless value).
ValueFn = Callable[[Params, float, np.random.Generator | None], float]


@dataclass(frozen=True)
class Task:
    """One optimisation problem of a suite."""

    name: str
    family: str
    space: dict[str, Any]
    fidelity: Fidelity
    value: ValueFn
    #: Where its costs come from: the recorded objective whose fitted cost model it charges
    #: (`costs.fitted`), or, for a recorded task, its own recorded CPU.
    profile: str
    #: Reports per evaluation, for epoch fidelity.
    epochs: int = 0
    optimum: float | None = None
    #: The study's declared budget in trials (what the rule reads of it).
    budget_trials: int = 40
    #: Whether value and cost are looked up in recorded real runs (`recorded.lookup`).
    recorded: bool = False

    def cost(self, params: Params, fidelity: float) -> float:
        """CPU seconds of one evaluation at `fidelity` (epochs: of the run up to it)."""
        if self.recorded:
            return recorded.lookup(self.name, params, fidelity)[1]
        return costs.fitted(self.profile).cost(params, fidelity)

    @property
    def unit(self) -> float:
        """CPU seconds of a typical full evaluation: the budget's unit."""
        return costs.fitted(self.profile).unit

    def spec(self, name: str | None = None) -> StudySpec:
        """The task as a study spec (what the features of a study read)."""
        return StudySpec.model_validate(
            {
                "name": name or self.name,
                "space": self.space,
                "budget": {"trials": self.budget_trials},
            }
        )


def _floats(d: int, low: float, high: float, prefix: str = "x") -> dict[str, Any]:
    return {f"{prefix}{i}": {"type": "float", "low": low, "high": high} for i in range(d)}


def _vector(params: Params, d: int, prefix: str = "x") -> np.ndarray:
    return np.array([float(params[f"{prefix}{i}"]) for i in range(d)])


def _noisy(f: Callable[[np.ndarray], float], d: int, sigma: float) -> ValueFn:
    def value(params: Params, fidelity: float, rng: np.random.Generator | None) -> float:
        y = f(_vector(params, d))
        return y + (sigma * float(rng.normal()) if rng is not None and sigma else 0.0)

    return value


# --- function families ---------------------------------------------------------------------


def ellipsoid(x: np.ndarray) -> float:
    d = len(x)
    scales = 10 ** (3 * np.arange(d) / max(1, d - 1))
    return float(np.sum(scales * (x - 0.5) ** 2))


def rosenbrock(x: np.ndarray) -> float:
    return float(np.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2))


def rastrigin(x: np.ndarray) -> float:
    return float(10 * len(x) + np.sum(x**2 - 10 * np.cos(2 * math.pi * x)))


def ackley(x: np.ndarray) -> float:
    d = len(x)
    a = -20 * math.exp(-0.2 * math.sqrt(float(np.sum(x**2)) / d))
    return float(a - math.exp(float(np.sum(np.cos(2 * math.pi * x))) / d) + 20 + math.e)


def levy(x: np.ndarray) -> float:
    w = 1 + (x - 1) / 4
    term = np.sum((w[:-1] - 1) ** 2 * (1 + 10 * np.sin(math.pi * w[:-1] + 1) ** 2))
    return float(
        math.sin(math.pi * w[0]) ** 2
        + term
        + (w[-1] - 1) ** 2 * (1 + math.sin(2 * math.pi * w[-1]) ** 2)
    )


def styblinski_tang(x: np.ndarray) -> float:
    return float(np.sum(x**4 - 16 * x**2 + 5 * x) / 2 + 39.16617 * len(x))


def griewank(x: np.ndarray) -> float:
    i = np.arange(1, len(x) + 1)
    return float(1 + np.sum(x**2) / 4000 - np.prod(np.cos(x / np.sqrt(i))))


def hartmann6(x: np.ndarray) -> float:
    alpha = np.array([1.0, 1.2, 3.0, 3.2])
    a = np.array(
        [
            [10, 3, 17, 3.5, 1.7, 8],
            [0.05, 10, 17, 0.1, 8, 14],
            [3, 3.5, 1.7, 10, 17, 8],
            [17, 8, 0.05, 10, 0.1, 14],
        ]
    )
    p = 1e-4 * np.array(
        [
            [1312, 1696, 5569, 124, 8283, 5886],
            [2329, 4135, 8307, 3736, 1004, 9991],
            [2348, 1451, 3522, 2883, 3047, 6650],
            [4047, 8828, 8732, 5743, 1091, 381],
        ]
    )
    return float(-np.sum(alpha * np.exp(-np.sum(a * (x - p) ** 2, axis=1))) + 3.32237)


def schwefel_sum(x: np.ndarray) -> float:
    return float(sum(np.sum(x[: i + 1]) ** 2 for i in range(len(x))))


def continuous(
    name: str,
    family: str,
    f: Callable[[np.ndarray], float],
    d: int,
    box: tuple[float, float],
    sigma: float = 0.0,
    optimum: float | None = 0.0,
    profile: str = "hgb_data",
) -> Task:
    return Task(
        name, family, _floats(d, *box), "none", _noisy(f, d, sigma), profile, optimum=optimum
    )


# --- mixed and conditional spaces -----------------------------------------------------------


def mixed(
    name: str,
    family: str,
    d_float: int,
    d_int: int,
    n_cat: int,
    seed: int,
    profile: str = "pipeline_data",
) -> Task:
    """Floats, integers and categoricals: each categorical choice shifts the optimum and
    scales the value, so the categoricals matter as much as the numbers."""
    rng = np.random.default_rng(seed)
    centre = rng.uniform(0.2, 0.8, d_float + d_int)
    effects = rng.uniform(0.0, 2.0, (n_cat, 4))
    space: dict[str, Any] = _floats(d_float, 0.0, 1.0)
    space |= {f"n{i}": {"type": "int", "low": 0, "high": 20} for i in range(d_int)}
    space |= {
        f"c{i}": {"type": "categorical", "choices": ["a", "b", "c", "d"]} for i in range(n_cat)
    }

    def value(params: Params, fidelity: float, rng: np.random.Generator | None) -> float:
        x = [float(params[f"x{i}"]) for i in range(d_float)]
        x += [float(params[f"n{i}"]) / 20 for i in range(d_int)]
        base = float(np.sum((np.array(x) - centre) ** 2)) * 4
        cats = sum(effects[i]["abcd".index(params[f"c{i}"])] for i in range(n_cat))
        return base + float(cats)

    return Task(
        name, family, space, "none", value, profile, optimum=float(effects.min(axis=1).sum())
    )


def conditional(name: str, family: str, seed: int, profile: str = "pipeline_data") -> Task:
    """A choice of model kind, each with parameters of its own (conditional parameters)."""
    rng = np.random.default_rng(seed)
    offsets = {"linear": 0.6, "tree": 0.0, "kernel": 0.3}
    centres = {k: rng.uniform(0.2, 0.8, 3) for k in offsets}
    space: dict[str, Any] = {"kind": {"type": "categorical", "choices": list(offsets)}}
    for kind in offsets:
        for i in range(3):
            space[f"{kind}_{i}"] = {
                "type": "float",
                "low": 0.0,
                "high": 1.0,
                "condition": {"param": "kind", "values": [kind]},
            }

    def value(params: Params, fidelity: float, rng: np.random.Generator | None) -> float:
        kind = params["kind"]
        x = np.array([float(params[f"{kind}_{i}"]) for i in range(3)])
        return offsets[kind] + float(np.sum((x - centres[kind]) ** 2)) * 3

    return Task(name, family, space, "none", value, profile, optimum=0.0)


# --- fidelities ------------------------------------------------------------------------------


def data_ladder(name: str, family: str, d: int, profile: str, bias: float, seed: int) -> Task:
    """A model fitted on a fraction of the data: the low-fraction value is the full value,
    worse by a bias that shrinks with the fraction, plus a configuration-dependent distortion
    (low fidelities rank configurations only roughly). It costs what the recorded objective
    `profile` costs (`costs.fitted`: overhead, exponent, spread across configurations)."""
    rng = np.random.default_rng(seed)
    centre = rng.uniform(0.2, 0.8, d)
    tilt = rng.normal(0, 1, d)
    space = _floats(d, 0.0, 1.0)
    space["lr"] = {"type": "float", "low": 1e-4, "high": 1.0, "log": True}

    def value(params: Params, fidelity: float, rng: np.random.Generator | None) -> float:
        x = _vector(params, d)
        lr = math.log10(float(params["lr"])) / 4 + 1  # in [0, 1]
        full = float(np.sum((x - centre) ** 2)) + 0.5 * (lr - 0.6) ** 2
        distortion = 0.3 * float(np.tanh(tilt @ (x - 0.5)))
        gap = (1 - fidelity) ** 0.7
        noise = 0.02 * float(rng.normal()) / math.sqrt(fidelity) if rng is not None else 0.0
        return float(full + gap * (bias + distortion) + noise)

    return Task(name, family, space, "data", value, profile, optimum=0.0)


def epoch_curves(
    name: str,
    family: str,
    d: int,
    epochs: int,
    seed: int,
    deceptive: float,
    profile: str = "mlp_epochs",
) -> Task:
    """Training curves: a configuration's loss falls towards its final value at a speed of
    its own; with `deceptive` > 0, configurations that converge slowly finish best (early
    epochs mislead an aggressive pruner)."""
    rng = np.random.default_rng(seed)
    centre = rng.uniform(0.2, 0.8, d)
    space = _floats(d, 0.0, 1.0)

    def value(params: Params, fidelity: float, rng: np.random.Generator | None) -> float:
        x = _vector(params, d)
        final = float(np.sum((x - centre) ** 2))
        speed = 2 + 6 * float(x[0]) * (1 - deceptive) + 6 * (1 - float(x[0])) * deceptive
        curve = math.exp(-speed * fidelity) * (1 + final)
        noise = 0.01 * float(rng.normal()) if rng is not None else 0.0
        return final + curve + noise

    return Task(name, family, space, "epochs", value, profile, epochs=epochs, optimum=None)


# --- small real ML tasks ----------------------------------------------------------------------


@cache
def _digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    return tuple(train_test_split(x / 16, y, test_size=0.3, random_state=0))


def sgd_digits() -> Task:
    """Logistic regression by SGD on the digits, evaluated after each epoch (error rate)."""
    space = {
        "alpha": {"type": "float", "low": 1e-6, "high": 1e-1, "log": True},
        "eta0": {"type": "float", "low": 1e-4, "high": 1.0, "log": True},
        "schedule": {
            "type": "categorical",
            "choices": ["constant", "optimal", "invscaling", "adaptive"],
        },
        "penalty": {"type": "categorical", "choices": ["l2", "l1", "elasticnet"]},
    }
    epochs = 10

    def value(params: Params, fidelity: float, rng: np.random.Generator | None) -> float:
        return _sgd_curve(
            float(params["alpha"]), float(params["eta0"]), params["schedule"], params["penalty"]
        )[max(0, round(fidelity * epochs) - 1)]

    return Task("sgd_digits", "ml_sgd", space, "epochs", value, "mlp_epochs", epochs=epochs)


@cache
def _sgd_curve(alpha: float, eta0: float, schedule: str, penalty: str) -> tuple[float, ...]:
    import warnings

    from sklearn.linear_model import SGDClassifier

    xtr, xte, ytr, yte = _digits()
    model = SGDClassifier(
        loss="log_loss",
        alpha=alpha,
        eta0=eta0,
        learning_rate=schedule,
        penalty=penalty,
        random_state=0,
    )
    errors = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(10):
            model.partial_fit(xtr, ytr, classes=np.arange(10))
            errors.append(1.0 - float(model.score(xte, yte)))
    return tuple(errors)


def svc_cancer() -> Task:
    """An RBF SVC on the breast-cancer data, fitted on a nested fraction of the rows; it costs
    what the recorded pipeline (SVC among its models) costs."""
    space = {
        "C": {"type": "float", "low": 1e-3, "high": 1e3, "log": True},
        "gamma": {"type": "float", "low": 1e-5, "high": 1.0, "log": True},
        "scale": {"type": "categorical", "choices": ["standard", "minmax", "none"]},
    }

    def value(params: Params, fidelity: float, rng: np.random.Generator | None) -> float:
        return _svc_error(
            float(params["C"]), float(params["gamma"]), params["scale"], round(fidelity, 4)
        )

    return Task("svc_cancer", "ml_svc", space, "data", value, "pipeline_data")


@cache
def _svc_error(c: float, gamma: float, scale: str, fraction: float) -> float:
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import MinMaxScaler, StandardScaler
    from sklearn.svm import SVC

    x, y = load_breast_cancer(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.4, random_state=0, stratify=y)
    n = max(20, int(len(xtr) * fraction))
    steps: list[Any] = {"standard": [StandardScaler()], "minmax": [MinMaxScaler()], "none": []}[
        scale
    ]
    model = make_pipeline(*steps, SVC(C=c, gamma=gamma))
    model.fit(xtr[:n], ytr[:n])
    return 1.0 - float(model.score(xte, yte))


# --- recorded real objectives -----------------------------------------------------------------


def recorded_task(name: str) -> Task:
    """A shipped objective as recorded (`recorded.py`): its declared space, the value and the
    measured CPU of the nearest grid point; its optimum the best recorded full value."""
    rec = recorded.by_name(name)

    def value(params: Params, fidelity: float, rng: np.random.Generator | None) -> float:
        return recorded.lookup(name, params, fidelity)[0]

    return Task(
        name,
        f"recorded_{rec.objective}",
        recorded.space(rec),
        rec.fidelity,
        value,
        name,
        epochs=rec.epochs,
        optimum=None,
        recorded=True,
    )


# --- the suites --------------------------------------------------------------------------------
#
# Three disjoint suites. Training: what `hpod policy train` learns from. Validation: what
# every design choice (features, horizon, quorum, the cost models) is judged on; new
# instances of the training generators and families of its own. Held-out: frozen, judged
# only at the end; no task comes from a training generator (mixed, conditional, data_ladder,
# epoch_curves) or a training family, and its ML tasks are recorded real runs of the shipped
# objectives with their measured CPU.


def training_suite() -> list[Task]:
    """What `hpod policy train` learns from."""
    return [
        continuous("ellipsoid_4", "ellipsoid", ellipsoid, 4, (-1.0, 2.0)),
        continuous("ellipsoid_8", "ellipsoid", ellipsoid, 8, (-1.0, 2.0), profile="rf_data"),
        continuous("rosenbrock_3", "rosenbrock", rosenbrock, 3, (-2.0, 2.0)),
        continuous("rosenbrock_6", "rosenbrock", rosenbrock, 6, (-2.0, 2.0), profile="rf_data"),
        continuous("rastrigin_4", "rastrigin", rastrigin, 4, (-5.12, 5.12)),
        continuous("ackley_5", "ackley", ackley, 5, (-5.0, 5.0), profile="mlp_epochs"),
        continuous("ackley_5_noisy", "ackley", ackley, 5, (-5.0, 5.0), sigma=0.5),
        continuous("ellipsoid_2_noisy", "ellipsoid", ellipsoid, 2, (-1.0, 2.0), sigma=5.0),
        continuous("ellipsoid_6_noisy", "ellipsoid", ellipsoid, 6, (-1.0, 2.0), sigma=20.0),
        mixed("mixed_4f2i2c", "mixed", 4, 2, 2, seed=1),
        mixed("mixed_1f1i4c", "mixed", 1, 1, 4, seed=2, profile="rf_data"),
        mixed("mixed_3f0i3c", "mixed", 3, 0, 3, seed=21),
        mixed("mixed_2f3i1c", "mixed", 2, 3, 1, seed=22, profile="hgb_data"),
        mixed("mixed_6f2i1c", "mixed", 6, 2, 1, seed=23),
        conditional("conditional_a", "conditional", seed=3),
        conditional("conditional_b", "conditional", seed=24, profile="rf_data"),
        data_ladder("data_rf", "data_ladder", 3, "rf_data", bias=0.4, seed=4),
        data_ladder("data_hgb", "data_ladder", 3, "hgb_data", bias=0.4, seed=5),
        data_ladder("data_pipeline", "data_ladder", 5, "pipeline_data", bias=0.2, seed=25),
        epoch_curves("epochs_honest", "epochs", 3, 12, seed=6, deceptive=0.0),
        epoch_curves("epochs_deceptive", "epochs", 3, 12, seed=7, deceptive=0.8),
        epoch_curves("epochs_long", "epochs", 2, 20, seed=26, deceptive=0.3),
        sgd_digits(),
    ]


def zakharov(x: np.ndarray) -> float:
    s = float(np.sum(0.5 * np.arange(1, len(x) + 1) * x))
    return float(np.sum(x**2) + s**2 + s**4)


def dixon_price(x: np.ndarray) -> float:
    i = np.arange(2, len(x) + 1)
    return float((x[0] - 1) ** 2 + np.sum(i * (2 * x[1:] ** 2 - x[:-1]) ** 2))


def validation_suite() -> list[Task]:
    """What design choices are judged on: never the held-out suite."""
    return [
        continuous("zakharov_4", "zakharov", zakharov, 4, (-5.0, 10.0)),
        continuous("dixon_price_5", "dixon_price", dixon_price, 5, (-10.0, 10.0), optimum=None),
        continuous("rastrigin_6_noisy", "rastrigin", rastrigin, 6, (-5.12, 5.12), sigma=1.0),
        mixed("mixed_3f1i2c_val", "mixed", 3, 1, 2, seed=31),
        conditional("conditional_val", "conditional", seed=34),
        data_ladder("data_val", "data_ladder", 4, "hgb_data", bias=0.6, seed=32),
        epoch_curves("epochs_val", "epochs", 3, 16, seed=33, deceptive=0.5),
        svc_cancer(),
    ]


def held_out_suite() -> list[Task]:
    """What the benchmark judges on, frozen: no family, generator or ML task of the other
    suites; its ML tasks are recorded real runs (real values, measured CPU)."""
    return [
        continuous("levy_4", "levy", levy, 4, (-10.0, 10.0)),
        continuous("styblinski_tang_5", "styblinski_tang", styblinski_tang, 5, (-5.0, 5.0)),
        continuous("griewank_6_noisy", "griewank", griewank, 6, (-50.0, 50.0), sigma=0.05),
        continuous("hartmann_6", "hartmann", hartmann6, 6, (0.0, 1.0)),
        recorded_task("rf_data"),
        recorded_task("hgb_data"),
        recorded_task("pipeline_data"),
        recorded_task("mlp_epochs"),
    ]


SUITES = {"training": training_suite, "validation": validation_suite, "held-out": held_out_suite}


def learning_family(n: int) -> list[Task]:
    """A family in no suite (cumulative-sum quadratics of varied dimension), for judging
    online learning: `n` tasks, different each."""
    return [
        continuous(
            f"schwefel_sum_{i}", "schwefel_sum", schwefel_sum, 3 + i % 4, (-3.0, 3.0 + 0.5 * i)
        )
        for i in range(n)
    ]
