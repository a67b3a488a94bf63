"""Task suites for training and judging the strategy policy, cheap enough to run thousands
of studies.

Each task is a space, an objective that can be evaluated at a fidelity (a data fraction or a
share of the epochs) and a cost model in full evaluations. Synthetic tasks stand for the
kinds of problem the strategies differ on: smooth or multimodal continuous functions,
mixed and conditional spaces, noise, data ladders that pay (cost grows faster than the rows)
or do not (fixed costs dominate), epoch curves where early epochs mislead. Two small real
ML tasks (scikit-learn) evaluate for real; their cost is the modelled one (rows, epochs), not
the measured CPU, so a run is reproducible on a noisy machine.

The training suite and the held-out suite share no function family and no ML task; the
`LEARNING` family is in neither, for the benchmark's learning curve.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

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
    #: Cost of one evaluation at a fidelity, in full evaluations (1.0 at full fidelity).
    cost: Callable[[float], float]
    #: Reports per evaluation, for epoch fidelity.
    epochs: int = 0
    optimum: float | None = None

    def spec(self, name: str | None = None) -> StudySpec:
        """The task as a study spec (what the features of a study read)."""
        return StudySpec.model_validate(
            {"name": name or self.name, "space": self.space, "budget": {"trials": 1000}}
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
) -> Task:
    return Task(
        name,
        family,
        _floats(d, *box),
        "none",
        _noisy(f, d, sigma),
        lambda _: 1.0,
        optimum=optimum,
    )


# --- mixed and conditional spaces -----------------------------------------------------------


def mixed(name: str, family: str, d_float: int, d_int: int, n_cat: int, seed: int) -> Task:
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
        name, family, space, "none", value, lambda _: 1.0, optimum=float(effects.min(axis=1).sum())
    )


def conditional(name: str, family: str, seed: int) -> Task:
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

    return Task(name, family, space, "none", value, lambda _: 1.0, optimum=0.0)


# --- fidelities ------------------------------------------------------------------------------


def data_ladder(name: str, family: str, d: int, alpha: float, bias: float, seed: int) -> Task:
    """A model fitted on a fraction of the data: the low-fraction value is the full value,
    worse by a bias that shrinks with the fraction, plus a configuration-dependent distortion
    (low fidelities rank configurations only roughly). A fraction f costs f**alpha."""
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

    return Task(name, family, space, "data", value, lambda f: f**alpha, optimum=0.0)


def epoch_curves(name: str, family: str, d: int, epochs: int, seed: int, deceptive: float) -> Task:
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

    return Task(name, family, space, "epochs", value, lambda f: f, epochs=epochs, optimum=None)


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

    return Task("sgd_digits", "ml_sgd", space, "epochs", value, lambda f: f, epochs=epochs)


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
    """An RBF SVC on the breast-cancer data, fitted on a nested fraction of the rows; a
    fraction costs its square (kernel methods grow faster than their rows)."""
    space = {
        "C": {"type": "float", "low": 1e-3, "high": 1e3, "log": True},
        "gamma": {"type": "float", "low": 1e-5, "high": 1.0, "log": True},
        "scale": {"type": "categorical", "choices": ["standard", "minmax", "none"]},
    }

    def value(params: Params, fidelity: float, rng: np.random.Generator | None) -> float:
        return _svc_error(
            float(params["C"]), float(params["gamma"]), params["scale"], round(fidelity, 4)
        )

    return Task("svc_cancer", "ml_svc", space, "data", value, lambda f: f**2)


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


# --- the suites --------------------------------------------------------------------------------


def training_suite() -> list[Task]:
    """What `hpod policy train` learns from."""
    return [
        continuous("ellipsoid_4", "ellipsoid", ellipsoid, 4, (-1.0, 2.0)),
        continuous("ellipsoid_8", "ellipsoid", ellipsoid, 8, (-1.0, 2.0)),
        continuous("rosenbrock_3", "rosenbrock", rosenbrock, 3, (-2.0, 2.0)),
        continuous("rosenbrock_6", "rosenbrock", rosenbrock, 6, (-2.0, 2.0)),
        continuous("rastrigin_4", "rastrigin", rastrigin, 4, (-5.12, 5.12)),
        continuous("ackley_5", "ackley", ackley, 5, (-5.0, 5.0)),
        continuous("ackley_5_noisy", "ackley", ackley, 5, (-5.0, 5.0), sigma=0.5),
        continuous("ellipsoid_2_noisy", "ellipsoid", ellipsoid, 2, (-1.0, 2.0), sigma=5.0),
        continuous("ellipsoid_6_noisy", "ellipsoid", ellipsoid, 6, (-1.0, 2.0), sigma=20.0),
        mixed("mixed_4f2i2c", "mixed", 4, 2, 2, seed=1),
        mixed("mixed_1f1i4c", "mixed", 1, 1, 4, seed=2),
        mixed("mixed_3f0i3c", "mixed", 3, 0, 3, seed=21),
        mixed("mixed_2f3i1c", "mixed", 2, 3, 1, seed=22),
        mixed("mixed_6f2i1c", "mixed", 6, 2, 1, seed=23),
        conditional("conditional_a", "conditional", seed=3),
        conditional("conditional_b", "conditional", seed=24),
        data_ladder("data_pays", "data_ladder", 3, alpha=1.6, bias=0.4, seed=4),
        data_ladder("data_flat", "data_ladder", 3, alpha=0.25, bias=0.4, seed=5),
        data_ladder("data_mid", "data_ladder", 5, alpha=1.0, bias=0.2, seed=25),
        epoch_curves("epochs_honest", "epochs", 3, 12, seed=6, deceptive=0.0),
        epoch_curves("epochs_deceptive", "epochs", 3, 12, seed=7, deceptive=0.8),
        epoch_curves("epochs_long", "epochs", 2, 20, seed=26, deceptive=0.3),
        sgd_digits(),
    ]


def held_out_suite() -> list[Task]:
    """What the benchmark judges on: no family or ML task of the training suite."""
    return [
        continuous("levy_4", "levy", levy, 4, (-10.0, 10.0)),
        continuous("styblinski_tang_5", "styblinski_tang", styblinski_tang, 5, (-5.0, 5.0)),
        continuous("griewank_6_noisy", "griewank", griewank, 6, (-50.0, 50.0), sigma=0.05),
        continuous("hartmann_6", "hartmann", hartmann6, 6, (0.0, 1.0)),
        mixed("mixed_2f2i3c", "mixed_held_out", 2, 2, 3, seed=11),
        data_ladder("data_steep", "data_held_out", 4, alpha=2.0, bias=0.8, seed=12),
        epoch_curves("epochs_slow", "epochs_held_out", 4, 16, seed=13, deceptive=0.5),
        svc_cancer(),
    ]


def learning_family(n: int) -> list[Task]:
    """A family in neither suite (cumulative-sum quadratics of varied dimension), for the
    learning curve: `n` tasks, different each."""
    return [
        continuous(
            f"schwefel_sum_{i}", "schwefel_sum", schwefel_sum, 3 + i % 4, (-3.0, 3.0 + 0.5 * i)
        )
        for i in range(n)
    ]
