"""Learning: fit the policy's networks to the replay buffer (PyTorch, off the daemon).

The policy is a contextual bandit: each network predicts the reward of a (study state,
strategy) pair, and the agent picks the strategy with the best prediction. An ensemble of
networks, each trained on its own bootstrap sample of the buffer, gives the spread the agent
reads as uncertainty (where networks disagree it lets the rules decide).

This module is the only one that imports torch. The daemon runs it as a separate process
(``python -m hpod.policies.strategy.learner --policy-dir DIR``) after enough new experience:
learning never blocks the event loop and torch never enters the daemon's memory. Training is
seeded and single-threaded, so the same buffer gives the same weights.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hpod.policies.strategy import model
from hpod.policies.strategy.replay import Experience, read_experiences

NETWORKS = model.NETWORKS
HIDDEN = model.HIDDEN
#: The daemon's own experiences make up this share of what the learner fits once there are
#: many; with n of them the share is n / (n + LOCAL_HALF), so a few studies already move the
#: policy (the shipped suite has thousands) without a handful of windows overturning it.
LOCAL_SHARE = 0.5
LOCAL_HALF = 100


def local_repeats(n_shipped: int, n_local: int) -> int:
    """How many times each local experience is repeated in the training set."""
    if not n_local or not n_shipped:
        return 1
    share = LOCAL_SHARE * n_local / (n_local + LOCAL_HALF)
    return max(1, round(share / (1 - share) * n_shipped / n_local))


def target(reward: float) -> float:
    """What the networks predict: the reward compressed (a few lucky windows with huge
    rewards must not dominate the fit); monotone, so the best action stays the best."""
    return math.copysign(math.log1p(10 * abs(reward)), reward)


def train(
    experiences: Sequence[Experience],
    seed: int = 0,
    version: int = 1,
    epochs: int = 60,
    networks: int = NETWORKS,
    **meta: Any,
) -> dict[str, Any]:
    """Fit an ensemble to `experiences`; returns the JSON of a weights file."""
    import torch

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    if not experiences:
        raise ValueError("no experience to learn from")
    x = torch.tensor([[*e.features, *e.action] for e in experiences], dtype=torch.float32)
    y = torch.tensor([target(e.reward) for e in experiences], dtype=torch.float32)
    width = x.shape[1]
    generator = torch.Generator().manual_seed(seed)
    trained = []
    losses = []
    for k in range(networks):
        torch.manual_seed(seed * 1000 + k)
        net = torch.nn.Sequential(
            torch.nn.Linear(width, HIDDEN),
            torch.nn.ReLU(),
            torch.nn.Linear(HIDDEN, HIDDEN),
            torch.nn.ReLU(),
            torch.nn.Linear(HIDDEN, 1),
        )
        sample = torch.randint(0, len(x), (len(x),), generator=generator)
        xs, ys = x[sample], y[sample]
        optimiser = torch.optim.Adam(net.parameters(), lr=2e-3, weight_decay=1e-4)
        batch = 256
        for _ in range(epochs):
            order = torch.randperm(len(xs), generator=generator)
            for start in range(0, len(xs), batch):
                idx = order[start : start + batch]
                optimiser.zero_grad()
                loss = torch.nn.functional.mse_loss(net(xs[idx]).squeeze(-1), ys[idx])
                loss.backward()  # type: ignore[no-untyped-call]
                optimiser.step()
        with torch.no_grad():
            losses.append(float(torch.nn.functional.mse_loss(net(x).squeeze(-1), y)))
        trained.append(
            [
                {"weight": layer.weight.tolist(), "bias": layer.bias.tolist()}
                for layer in net
                if isinstance(layer, torch.nn.Linear)
            ]
        )
    return model.serialise(
        trained,
        version,
        len(experiences),
        seed=seed,
        epochs=epochs,
        loss=round(sum(losses) / len(losses), 5),
        created_at=meta.pop("created_at", time.time()),
        **meta,
    )


def learn(policy_dir: Path, shipped_replay: Path, seed: int = 0) -> dict[str, Any]:
    """Train on the shipped buffer and the local one, and install the weights in
    `policy_dir` with the next version; returns what the learner reports of the run."""
    started = time.time()
    local = read_experiences(policy_dir / "replay.jsonl")
    shipped = read_experiences(shipped_replay)
    data = shipped + local * local_repeats(len(shipped), len(local))
    version = 1
    for path in (policy_dir / "weights.json", shipped_replay.with_name("weights.json")):
        with contextlib.suppress(model.WeightsError):
            version = max(version, model.load(path).version + 1)
    weights = train(data, seed=seed, version=version, origin="local")
    model.save(policy_dir / "weights.json", weights)
    report = {
        "finished_at": time.time(),
        "seconds": round(time.time() - started, 2),
        "version": version,
        "experiences": {"shipped": len(shipped), "local": len(local)},
        "loss": weights["loss"],
    }
    (policy_dir / "learner.json").write_text(json.dumps(report))
    return report


def main(argv: list[str] | None = None) -> int:
    """Entry point of the learner process the daemon starts."""
    parser = argparse.ArgumentParser(description="hpod strategy learner")
    parser.add_argument("--policy-dir", type=Path, required=True)
    parser.add_argument("--shipped-replay", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if hasattr(os, "nice"):
        os.nice(10)  # learning is background work: trials and the daemon come first
    try:
        report = learn(args.policy_dir, args.shipped_replay, args.seed)
    except Exception as exc:  # the daemon reads the reason from learner.json
        (args.policy_dir / "learner.json").write_text(
            json.dumps({"finished_at": time.time(), "error": f"{type(exc).__name__}: {exc}"})
        )
        raise
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
