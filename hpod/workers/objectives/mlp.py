"""A small PyTorch MLP on the digits data set: the objective that reports and can be pruned.

``load_digits`` ships inside scikit-learn (1797 8x8 images, 10 classes), so nothing is
downloaded. The network trains for a few epochs and reports its validation loss after each
one, so the study's pruner can stop hopeless trials early: this is the objective that
exercises ``ctx.report`` / ``ctx.should_prune`` end to end. One evaluation of 10 epochs
takes well under a second on one CPU thread.

The fidelity is the share of the *training* rows used; the validation rows never change.

torch is imported inside the functions, never at module level: the daemon must never load
torch (hundreds of megabytes and seconds of start-up, and a dependency it has no use for),
even if it imports this module, e.g. to read a docstring; only the worker processes that
actually run this objective pay for it, once, on their first trial.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
from pydantic import Field

from hpod.workers.context import TrialContext, TrialPruned
from hpod.workers.registry import ObjectiveKwargs

if TYPE_CHECKING:  # for annotations only: no torch import at run time (see module docstring)
    import torch

Split = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def mlp_digits(
    ctx: TrialContext,
    *,
    epochs: int = 10,
    validation_fraction: float = 0.25,
    seed: int = 0,
) -> float:
    """Validation cross-entropy of an MLP trained on the digits; lower is better.

    Parameters read from ``ctx.params`` (all optional) and the recommended search space:

    - ``lr``: float, log, [1e-4, 1e-1] (default 1e-3) — AdamW learning rate
    - ``hidden``: int, log, [16, 256] (default 64) — units per hidden layer
    - ``layers``: int, [1, 3] (default 2) — hidden layers
    - ``dropout``: float, [0, 0.5] (default 0.1)
    - ``weight_decay``: float, log, [1e-6, 1e-2] (default 1e-4) — AdamW decoupled decay
    - ``batch_size``: categorical, [32, 64, 128, 256] (default 64)

    With 10 epochs the defaults score 0.17 and tuned settings about 0.09; a learning rate of
    1e-4 leaves it at 1.94 (chance level is ln 10 = 2.30), and large, deep networks with
    lr >= 1e-2 diverge to 2.3 and more.

    After every epoch the validation loss is reported with ``step`` = the number of epochs
    completed (1..epochs, the resource count a Hyperband pruner expects), and the trial
    raises `TrialPruned` as soon as ``ctx.should_prune()`` says so.

    Keyword arguments (the study's ``objective_kwargs``): ``epochs`` (10),
    ``validation_fraction`` (0.25) and ``seed`` (0, for the split, the weights, dropout and
    the batch order). The result is deterministic for given params, fidelity and kwargs.
    """
    # Imported here, not at module level: the daemon must never load torch, even when it
    # imports this module (see the module docstring). Only a worker running a trial pays.
    import torch

    torch.set_num_threads(1)  # one worker process per core: don't oversubscribe the CPU
    torch.manual_seed(int(seed))
    p = ctx.params
    layers = int(p.get("layers", 2))
    if layers < 1 or int(epochs) < 1:
        raise ValueError(f"layers and epochs must be at least 1, got {layers} and {epochs}")
    batch_size = int(p.get("batch_size", 64))

    x_train, y_train, x_val, y_val = _tensors(ctx, float(validation_fraction), int(seed))
    model = _network(
        x_train.shape[1], int(p.get("hidden", 64)), layers, float(p.get("dropout", 0.1))
    )
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=float(p.get("lr", 1e-3)),
        weight_decay=float(p.get("weight_decay", 1e-4)),
    )
    loss_fn = torch.nn.CrossEntropyLoss()
    order = torch.Generator().manual_seed(int(seed))

    resumed = ctx.resume()
    if resumed is not None:
        _restore(resumed.arrays, model, optimizer, order)
    epoch = ctx.resumed_step
    val_loss: float | None = None
    for epoch in ctx.steps(int(epochs)):
        model.train()
        shuffled = torch.randperm(len(x_train), generator=order)
        for start in range(0, len(shuffled), batch_size):
            rows = shuffled[start : start + batch_size]
            optimizer.zero_grad()
            loss_fn(model(x_train[rows]), y_train[rows]).backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            val_loss = float(loss_fn(model(x_val), y_val))
        ctx.report(val_loss, epoch)
        if ctx.should_prune():
            raise TrialPruned(f"pruned after epoch {epoch} with validation loss {val_loss:.4f}")
    if val_loss is None:  # resumed at (or past) this rung already: score the restored model
        model.eval()
        with torch.no_grad():
            val_loss = float(loss_fn(model(x_val), y_val))
    ctx.checkpoint(epoch, _state(model, optimizer, order))
    return val_loss


mlp_digits.hpod_fidelity = "epochs"  # type: ignore[attr-defined]
#: Continued by epochs: the state is the weights, AdamW's moments and both RNG states, as
#: plain arrays (`hpod.checkpoints`), so a resumed trial trains exactly as an uninterrupted one.
mlp_digits.hpod_resumable = True  # type: ignore[attr-defined]


def _state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, order: torch.Generator
) -> dict[str, np.ndarray]:
    """Everything training needs to go on, as named NumPy arrays (no pickle)."""
    import torch  # lazily, like in `mlp_digits`

    arrays = {f"model.{k}": v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    for index, slots in optimizer.state_dict()["state"].items():
        for key, value in slots.items():
            arrays[f"optim.{index}.{key}"] = torch.as_tensor(value).detach().cpu().numpy()
    arrays["rng.global"] = torch.get_rng_state().numpy()
    arrays["rng.order"] = order.get_state().numpy()
    return arrays


def _restore(
    arrays: Mapping[str, np.ndarray],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    order: torch.Generator,
) -> None:
    """Load `_state`'s arrays back into a freshly built model, optimizer and generator."""
    import torch  # lazily, like in `mlp_digits`

    model.load_state_dict(
        {
            k.removeprefix("model."): torch.as_tensor(v)
            for k, v in arrays.items()
            if k.startswith("model.")
        }
    )
    slots: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in arrays.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            slots.setdefault(int(index), {})[name] = torch.as_tensor(value)
    optimizer.load_state_dict(
        {"state": slots, "param_groups": optimizer.state_dict()["param_groups"]}
    )
    torch.set_rng_state(torch.as_tensor(arrays["rng.global"]))
    order.set_state(torch.as_tensor(arrays["rng.order"]))


class MlpKwargs(ObjectiveKwargs):
    """`mlp_digits`'s keyword arguments."""

    epochs: int = Field(default=10, ge=1, le=1000)
    validation_fraction: float = Field(default=0.25, ge=0.05, le=0.9)
    seed: int = Field(default=0, ge=0, le=2**63 - 1)


mlp_digits.hpod_kwargs = MlpKwargs  # type: ignore[attr-defined]


def _network(inputs: int, hidden: int, layers: int, dropout: float) -> torch.nn.Module:
    """`layers` blocks of Linear -> ReLU -> Dropout, then a linear layer to the 10 classes."""
    import torch  # lazily, like in `mlp_digits`

    blocks: list[torch.nn.Module] = []
    width = inputs
    for _ in range(layers):
        blocks += [torch.nn.Linear(width, hidden), torch.nn.ReLU(), torch.nn.Dropout(dropout)]
        width = hidden
    blocks.append(torch.nn.Linear(width, 10))
    return torch.nn.Sequential(*blocks)


def _tensors(
    ctx: TrialContext, validation_fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training rows (subsampled by fidelity) and validation rows, standardised, as tensors.

    The scaling statistics come from the training rows actually used, as they would in a
    real pipeline; constant pixels (the digits' borders) keep a scale of 1.
    """
    import torch  # lazily, like in `mlp_digits`

    x_train, x_val, y_train, y_val = _data(validation_fraction, seed)
    x_train, y_train = ctx.subsample(x_train, y_train)
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std[std == 0] = 1.0
    return (
        torch.as_tensor((x_train - mean) / std, dtype=torch.float32),
        torch.tensor(y_train, dtype=torch.long),  # a copy: the cached labels are read-only
        torch.as_tensor((x_val - mean) / std, dtype=torch.float32),
        torch.tensor(y_val, dtype=torch.long),
    )


@lru_cache(maxsize=4)
def _data(validation_fraction: float, seed: int) -> Split:
    """The digits, split into train and validation (stratified); built once per process.

    Cached because every trial asks for the same data; read-only so no trial can alter it.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    parts: Split = tuple(
        train_test_split(
            np.asarray(x, dtype=np.float64),
            np.asarray(y),
            test_size=validation_fraction,
            random_state=seed,
            stratify=y,
        )
    )
    for array in parts:
        array.flags.writeable = False
    return parts
