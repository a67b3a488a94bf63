"""The learned policy's weights and its forward pass, in NumPy.

The networks are trained with PyTorch (`learner.py`), but the daemon only needs their forward
pass: a few small dense layers. Doing that in NumPy keeps torch (180 MB, 1.3 s to import) out
of the daemon, which decides a strategy every window of every study; torch is loaded only
where learning happens. Weights are stored as JSON, never pickled, and validated as a whole
before use: read with a size and depth limit, checked against a strict model (types, bounded
finite numbers, exactly the architecture the agent reads: five networks of 64-64-1), and its
predictions on probe inputs must be finite, so a file that is corrupt, truncated, hostile or
made for other features is refused with the reason and the field (`WeightsError`, the only
exception `load` raises); the caller then falls back to the shipped weights or the rules.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pydantic_core
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hpod.policies.strategy.actions import ACTION_FEATURE_NAMES
from hpod.policies.strategy.features import FEATURE_NAMES

FORMAT = "hpod-strategy-weights/1"


#: A weights file larger than this is refused unread (the shipped one is ~300 kB).
MAX_FILE_BYTES = 2 * 1024 * 1024
#: The one architecture the agent reads: `NETWORKS` networks (its quorum is 4 of 5), each
#: two hidden ReLU layers of `HIDDEN` units and one output. Anything else is refused.
NETWORKS = 5
HIDDEN = 64
#: Bounds the schema checks before shapes are compared (so a hostile file fails fast).
MAX_NETWORKS = 32
MAX_LAYERS = 16
MAX_WIDTH = 4096
#: No weight or bias of a trained network comes near this (they are below 10); 1e300 would
#: overflow to infinity in the forward pass.
MAX_WEIGHT = 1e3
#: Predictions on the probe inputs must stay within this (the reward target is ~[-3, 3]).
MAX_OUTPUT = 1e3


class WeightsError(ValueError):
    """A weights file that cannot be used, with the reason and the field (dotted path,
    empty for the file as a whole)."""

    def __init__(self, reason: str, field: str = "") -> None:
        super().__init__(f"{field}: {reason}" if field else reason)
        self.reason = reason
        self.field = field


@dataclass(frozen=True)
class Layer:
    weight: np.ndarray  # (out, in)
    bias: np.ndarray  # (out,)


@dataclass(frozen=True)
class Ensemble:
    """Networks that each predict a (state, action) pair's reward; their spread says how
    sure the policy is."""

    networks: tuple[tuple[Layer, ...], ...]
    version: int
    trained_on: int
    meta: dict[str, Any]

    def predict(self, state: list[float], actions: list[list[float]]) -> np.ndarray:
        """Predicted reward of each action in `state`: shape (networks, actions)."""
        x = np.array([[*state, *a] for a in actions], dtype=np.float64)
        out = []
        for layers in self.networks:
            h = x
            for i, layer in enumerate(layers):
                h = h @ layer.weight.T + layer.bias
                if i < len(layers) - 1:
                    h = np.maximum(h, 0.0)
            out.append(h[:, 0])
        return np.stack(out)


def checksum(networks: Any) -> str:
    """SHA-256 of the networks' JSON (canonical form): detects a damaged file."""
    blob = json.dumps(networks, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


FiniteFloat = Annotated[float, Field(allow_inf_nan=False, ge=-MAX_WEIGHT, le=MAX_WEIGHT)]


class _LayerFile(BaseModel):
    """One dense layer as stored: numbers only, finite, nothing else."""

    model_config = ConfigDict(strict=True, extra="forbid")
    weight: list[list[FiniteFloat]] = Field(min_length=1, max_length=MAX_WIDTH)
    bias: list[FiniteFloat] = Field(min_length=1, max_length=MAX_WIDTH)


_NetworkFile = Annotated[list[_LayerFile], Field(min_length=1, max_length=MAX_LAYERS)]


class _WeightsFile(BaseModel):
    """The strict shape of a weights file (what `serialise` writes). Other keys (seed,
    epochs, loss, origin...) are kept as metadata; the ones read here must have their type:
    a file that says ``"trained_on": "lots"`` is refused, not trusted or crashed on."""

    model_config = ConfigDict(strict=True, extra="allow")
    format: str
    version: int = Field(ge=0, le=2**53)
    trained_on: int = Field(default=0, ge=0, le=2**53)
    feature_names: list[str]
    action_feature_names: list[str]
    networks: list[_NetworkFile] = Field(min_length=1, max_length=MAX_NETWORKS)
    sha256: str


def _first_error(exc: ValidationError) -> WeightsError:
    """The first problem pydantic found, as a `WeightsError` naming the field."""
    error = exc.errors(include_url=False)[0]
    field = ".".join(str(part) for part in error["loc"])
    return WeightsError(error["msg"], field)


def parse(data: Any) -> Ensemble:
    """Validate weights (the JSON object of a weights file); `WeightsError` says why not,
    naming the field. Nothing else escapes: any file, however malformed, is a refusal."""
    if not isinstance(data, dict):
        raise WeightsError("not a JSON object")
    if data.get("format") != FORMAT:
        raise WeightsError(f"is {data.get('format')!r}, expected {FORMAT!r}", "format")
    try:
        checked = _WeightsFile.model_validate(data)
    except ValidationError as exc:
        raise _first_error(exc) from exc
    if checked.feature_names != list(FEATURE_NAMES):
        raise WeightsError(
            "trained on other state features than this hpod computes", "feature_names"
        )
    if checked.action_feature_names != list(ACTION_FEATURE_NAMES):
        raise WeightsError(
            "trained on other action features than this hpod computes", "action_feature_names"
        )
    if checked.sha256 != checksum(data["networks"]):
        raise WeightsError("checksum mismatch: the file is damaged", "sha256")
    if len(checked.networks) != NETWORKS:
        raise WeightsError(
            f"{len(checked.networks)} networks; the agent reads exactly {NETWORKS}", "networks"
        )
    parsed = [_network(n, layers) for n, layers in enumerate(checked.networks)]
    ensemble = Ensemble(
        tuple(parsed),
        checked.version,
        checked.trained_on,
        {k: v for k, v in data.items() if k not in ("networks", "sha256")},
    )
    _check_outputs(ensemble)
    return ensemble


def _check_outputs(ensemble: Ensemble) -> None:
    """Refuse networks whose predictions on probe inputs (all features at -1, 0, 1 and a
    fixed mixture) are not finite or not within `MAX_OUTPUT`."""
    width_state, width_action = len(FEATURE_NAMES), len(ACTION_FEATURE_NAMES)
    mixture = np.random.default_rng(0).uniform(-1.0, 1.0, width_state + width_action)
    probes = [np.full(width_state + width_action, v) for v in (-1.0, 0.0, 1.0)] + [mixture]
    with np.errstate(all="ignore"):
        out = np.concatenate(
            [
                ensemble.predict(list(p[:width_state]), [list(p[width_state:])]).ravel()
                for p in probes
            ]
        )
    if not np.all(np.isfinite(out)) or np.any(np.abs(out) > MAX_OUTPUT):
        raise WeightsError(
            f"predictions not finite or beyond {MAX_OUTPUT:g} on probe inputs", "networks"
        )


def _network(n: int, layers: list[_LayerFile]) -> tuple[Layer, ...]:
    """One network's layers, checked to be exactly the architecture (`HIDDEN`, `HIDDEN`, 1)."""
    built = []
    fan_in = len(FEATURE_NAMES) + len(ACTION_FEATURE_NAMES)
    if len(layers) != 3:
        raise WeightsError(f"{len(layers)} layers; expected 3", f"networks.{n}")
    for k, layer in enumerate(layers):
        where = f"networks.{n}.{k}"
        width = 1 if k == len(layers) - 1 else HIDDEN
        if len(layer.weight) != width:
            raise WeightsError(f"must have {width} rows", f"{where}.weight")
        if any(len(row) != fan_in for row in layer.weight):
            raise WeightsError(f"every row must have {fan_in} numbers", f"{where}.weight")
        if len(layer.bias) != len(layer.weight):
            raise WeightsError(f"must have {len(layer.weight)} numbers", f"{where}.bias")
        built.append(
            Layer(np.array(layer.weight, dtype=np.float64), np.array(layer.bias, dtype=np.float64))
        )
        fan_in = len(layer.weight)
    if fan_in != 1:
        raise WeightsError("the last layer must have one output", f"networks.{n}")
    return tuple(built)


def loads(text: str | bytes, max_bytes: int = MAX_FILE_BYTES) -> Any:
    """Parse JSON of at most `max_bytes`, at most 200 levels deep (pydantic-core's parser
    stops there with an error, where the standard library's recursion would overflow the
    stack or raise ``RecursionError``); ``NaN``/``Infinity`` literals are refused.
    `WeightsError` for anything that is not such JSON."""
    if len(text) > max_bytes:
        raise WeightsError(f"larger than {max_bytes} bytes")
    try:
        return pydantic_core.from_json(text, allow_inf_nan=False)
    except ValueError as exc:
        raise WeightsError(f"not JSON ({exc})") from exc


def load(path: Path) -> Ensemble:
    """The ensemble stored at `path`; `WeightsError` if it is missing or unusable."""
    try:
        with open(path, "rb") as file:
            text = file.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise WeightsError(f"cannot read: {exc.strerror or exc}") from exc
    return parse(loads(text))


def serialise(
    networks: list[list[dict[str, list[Any]]]], version: int, trained_on: int, **meta: Any
) -> dict[str, Any]:
    """The JSON object of a weights file."""
    rounded = [
        [
            {
                "weight": [[_round(x) for x in row] for row in layer["weight"]],
                "bias": [_round(x) for x in layer["bias"]],
            }
            for layer in layers
        ]
        for layers in networks
    ]
    return {
        "format": FORMAT,
        "version": version,
        "trained_on": trained_on,
        "feature_names": list(FEATURE_NAMES),
        "action_feature_names": list(ACTION_FEATURE_NAMES),
        **meta,
        "networks": rounded,
        "sha256": checksum(rounded),
    }


def save(path: Path, data: dict[str, Any]) -> None:
    """Write a weights file atomically (a reader never sees half of it)."""
    parse(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, separators=(",", ":")), encoding="utf-8")
    with open(tmp, "rb") as done:
        os.fsync(done.fileno())
    os.replace(tmp, path)


def _round(x: float) -> float:
    value = float(x)
    return round(value, 7) if math.isfinite(value) else value
