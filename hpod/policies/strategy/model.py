"""The learned policy's weights and its forward pass, in NumPy.

The networks are trained with PyTorch (`learner.py`), but the daemon only needs their forward
pass: a few small dense layers. Doing that in NumPy keeps torch (180 MB, 1.3 s to import) out
of the daemon, which decides a strategy every window of every study; torch is loaded only
where learning happens. Weights are stored as JSON, never pickled, and validated as a whole
before use: a file that is corrupt, truncated or made for other features is refused with the
reason, and the caller falls back to the rule-based selector.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hpod.policies.strategy.actions import ACTION_FEATURE_NAMES
from hpod.policies.strategy.features import FEATURE_NAMES

FORMAT = "hpod-strategy-weights/1"


class WeightsError(ValueError):
    """A weights file that cannot be used, with the reason."""


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


def parse(data: Any) -> Ensemble:
    """Validate weights (the JSON object of a weights file); `WeightsError` says why not."""
    if not isinstance(data, dict):
        raise WeightsError("not a JSON object")
    if data.get("format") != FORMAT:
        raise WeightsError(f"format is {data.get('format')!r}, expected {FORMAT!r}")
    if list(data.get("feature_names") or []) != list(FEATURE_NAMES):
        raise WeightsError("trained on other state features than this hpod computes")
    if list(data.get("action_feature_names") or []) != list(ACTION_FEATURE_NAMES):
        raise WeightsError("trained on other action features than this hpod computes")
    networks = data.get("networks")
    if not isinstance(networks, list) or not networks:
        raise WeightsError("no networks")
    if data.get("sha256") != checksum(networks):
        raise WeightsError("checksum mismatch: the file is damaged")
    parsed = [_network(n, layers) for n, layers in enumerate(networks)]
    version = data.get("version")
    if not isinstance(version, int) or version < 0:
        raise WeightsError("version must be a non-negative integer")
    return Ensemble(
        tuple(parsed),
        version,
        int(data.get("trained_on") or 0),
        {k: v for k, v in data.items() if k not in ("networks", "sha256")},
    )


def _network(n: int, layers: Any) -> tuple[Layer, ...]:
    """One network's layers, checked to chain from the input width to one output."""
    built = []
    fan_in = len(FEATURE_NAMES) + len(ACTION_FEATURE_NAMES)
    for k, layer in enumerate(layers if isinstance(layers, list) else []):
        try:
            weight = np.array(layer["weight"], dtype=np.float64)
            bias = np.array(layer["bias"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise WeightsError(f"network {n} layer {k}: {exc}") from exc
        if weight.ndim != 2 or weight.shape[1] != fan_in or bias.shape != (weight.shape[0],):
            raise WeightsError(f"network {n} layer {k}: shapes do not chain")
        if not (np.isfinite(weight).all() and np.isfinite(bias).all()):
            raise WeightsError(f"network {n} layer {k}: non-finite numbers")
        built.append(Layer(weight, bias))
        fan_in = weight.shape[0]
    if not built or fan_in != 1:
        raise WeightsError(f"network {n}: the last layer must have one output")
    return tuple(built)


def load(path: Path) -> Ensemble:
    """The ensemble stored at `path`; `WeightsError` if it is missing or unusable."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise WeightsError(f"cannot read: {exc.strerror or exc}") from exc
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise WeightsError(f"not JSON ({exc})") from exc
    return parse(data)


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
