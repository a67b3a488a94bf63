"""Learning: fit the policy's networks to the replay buffer (PyTorch, off the daemon).

The policy is a contextual bandit: each network predicts the reward of a (study state,
strategy) pair, and the agent picks the strategy with the best prediction. An ensemble of
networks, each trained on its own bootstrap sample of the buffer, gives the spread the agent
reads as uncertainty (where networks disagree it lets the rules decide).

Learning on the daemon's own experience must never make the policy worse (issue 14), so:

- local experiences are judged over the same horizon as the shipped ones: the daemon's buffer
  holds one line per window, and the learner turns each into the mean reward of that window
  and the next ones of the same study that kept the strategy and the mode, up to `HORIZON`
  windows, as `train.py` does for its counterfactual branches;
- each network draws its own bootstrap of the shipped experiences and, apart, of the local
  ones, and the local rows together weigh at most `LOCAL_CAP` of the fit: repeating every
  local row ~60 times made all five networks see the same rows, stop disagreeing, and the
  agent's quorum mean nothing;
- the new weights are installed only if they do not regress on the check suite
  (`check.py`); a refusal keeps the weights in force and is reported, with the figures, in
  ``learner.json`` (the agent logs it and `hpod policy status` shows it).

This module is the only one that imports torch. The daemon runs it as a separate process
(``python -m hpod.policies.strategy.learner --policy-dir DIR``) after enough new experience:
learning never blocks the event loop and torch never enters the daemon's memory. Training is
seeded and single-threaded, so the same buffer gives the same weights.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hpod.policies.strategy import model
from hpod.policies.strategy.check import CheckSize, check
from hpod.policies.strategy.replay import Experience, read_experiences
from hpod.policies.strategy.reward import target

NETWORKS = model.NETWORKS
HIDDEN = model.HIDDEN
#: Windows a local experience spans, as the shipped ones (`train.HORIZON`; a test checks).
HORIZON = 3
#: The local experiences' share of the fit: n / (n + LOCAL_HALF) of `LOCAL_CAP`, so a few
#: studies move the policy a little and many never more than a quarter.
LOCAL_CAP = 0.25
LOCAL_HALF = 100
#: Passes over the experiences (the shipped weights' training; ~17 CPU s on 13,371 rows).
EPOCHS = 60


def local_share(n_local: int) -> float:
    """The share of the fit the local experiences weigh together."""
    return LOCAL_CAP * n_local / (n_local + LOCAL_HALF) if n_local else 0.0


def over_horizon(windows: Sequence[Experience], horizon: int = HORIZON) -> list[Experience]:
    """The daemon's one-window experiences as experiences over `horizon` windows: each
    window's, averaged with the next windows of its study (in the buffer's order) that kept
    its strategy and mode, up to `horizon` in all; a study that ended or switched sooner
    gives fewer, as a branch that ran out of budget does in training."""
    by_study: dict[str, list[Experience]] = {}
    for e in windows:
        by_study.setdefault(e.study, []).append(e)
    out = []
    for run in by_study.values():
        for i, first in enumerate(run):
            span = [first]
            for later in run[i + 1 : i + horizon]:
                if (later.strategy, later.mode) != (first.strategy, first.mode):
                    break
                span.append(later)
            n = len(span)
            out.append(
                Experience(
                    study=first.study,
                    mode=first.mode,
                    strategy=first.strategy,
                    features=first.features,
                    action=first.action,
                    reward=sum(e.reward for e in span) / n,
                    improvement=sum(e.improvement for e in span) / n,
                    compute=sum(e.compute for e in span) / n,
                    trials=sum(e.trials for e in span),
                    at=first.at,
                )
            )
    return out


def train(
    experiences: Sequence[Experience],
    seed: int = 0,
    version: int = 1,
    epochs: int = EPOCHS,
    networks: int = NETWORKS,
    local: Sequence[Experience] = (),
    **meta: Any,
) -> dict[str, Any]:
    """Fit an ensemble to `experiences` (and the daemon's `local` ones, bootstrapped apart and
    weighing `local_share` of the fit together); returns the JSON of a weights file."""
    import torch

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    if not experiences and not local:
        raise ValueError("no experience to learn from")
    if not experiences:  # only local experience: it is the whole fit
        experiences, local = local, ()
    x = torch.tensor([[*e.features, *e.action] for e in experiences], dtype=torch.float32)
    y = torch.tensor([target(e.reward) for e in experiences], dtype=torch.float32)
    x_local = torch.tensor([[*e.features, *e.action] for e in local], dtype=torch.float32)
    y_local = torch.tensor([target(e.reward) for e in local], dtype=torch.float32)
    share = local_share(len(local))
    # Each local row's weight, so that the local rows weigh `share` of the fit together.
    weight = share / (1 - share) * len(x) / len(local) if local else 0.0
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
        ws = torch.ones(len(xs))
        if local:
            # Its own bootstrap of the local experiences: a network that did not draw an
            # experience does not learn it, so the networks disagree where local data is thin.
            drawn = torch.randint(0, len(x_local), (len(x_local),), generator=generator)
            xs = torch.cat([xs, x_local[drawn]])
            ys = torch.cat([ys, y_local[drawn]])
            ws = torch.cat([ws, torch.full((len(drawn),), weight)])
        scale = float(ws.mean())
        optimiser = torch.optim.Adam(net.parameters(), lr=2e-3, weight_decay=1e-4)
        batch = 256
        for _ in range(epochs):
            order = torch.randperm(len(xs), generator=generator)
            for start in range(0, len(xs), batch):
                idx = order[start : start + batch]
                optimiser.zero_grad()
                predicted = net(xs[idx]).squeeze(-1)
                if local:
                    loss = (ws[idx] * (predicted - ys[idx]) ** 2).mean() / scale
                else:  # the shipped training, as it always was (byte-identical weights)
                    loss = torch.nn.functional.mse_loss(predicted, ys[idx])
                loss.backward()
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
        len(experiences) + len(local),
        seed=seed,
        epochs=epochs,
        loss=round(sum(losses) / len(losses), 5),
        **({"local_share": round(share, 4)} if local else {}),
        created_at=meta.pop("created_at", time.time()),
        **meta,
    )


def in_force(policy_dir: Path, shipped_replay: Path) -> model.Ensemble | None:
    """The ensemble the agent decides with: the local weights if usable, else the shipped
    ones, else none (the rules)."""
    for path in (policy_dir / "weights.json", shipped_replay.with_name("weights.json")):
        with contextlib.suppress(Exception):  # any unusable file: the next one down
            return model.load(path)
    return None


def learn(
    policy_dir: Path,
    shipped_replay: Path,
    seed: int = 0,
    size: CheckSize | None = None,
    epochs: int = EPOCHS,
) -> dict[str, Any]:
    """Train on the shipped buffer and the local one (`epochs` passes); install the weights
    in `policy_dir` with the next version only if they pass the check suite (all of it
    unless `size` says less). Returns the learner's report (also written to
    ``learner.json``): ``installed``, and the check's figures."""
    started = time.time()
    windows = read_experiences(policy_dir / "replay.jsonl")
    local = over_horizon(windows)
    shipped = read_experiences(shipped_replay)
    version = 1
    for path in (policy_dir / "weights.json", shipped_replay.with_name("weights.json")):
        with contextlib.suppress(Exception):
            version = max(version, model.load(path).version + 1)
    weights = train(shipped, seed=seed, version=version, epochs=epochs, local=local, origin="local")
    current = in_force(policy_dir, shipped_replay)
    result = check(model.parse(weights), current, size)
    if result.passed:
        model.save(policy_dir / "weights.json", weights)
    report = {
        "finished_at": time.time(),
        "seconds": round(time.time() - started, 2),
        "version": version,
        "installed": result.passed,
        "in_force": None if current is None else current.version,
        "check": result.to_json(),
        "experiences": {"shipped": len(shipped), "local": len(local), "windows": len(windows)},
        "local_share": weights.get("local_share", 0.0),
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
    parser.add_argument("--check-tasks", type=int, help="the check suite's first N tasks")
    parser.add_argument("--check-seeds", type=int, help="its first N seeds per task")
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="passes over the data")
    args = parser.parse_args(argv)
    if hasattr(os, "nice"):
        os.nice(10)  # learning is background work: trials and the daemon come first
    try:
        size = CheckSize(
            **{k: v for k, v in (("tasks", args.check_tasks), ("seeds", args.check_seeds)) if v}
        )
        report = learn(args.policy_dir, args.shipped_replay, args.seed, size, args.epochs)
    except Exception as exc:  # the daemon reads the reason from learner.json
        (args.policy_dir / "learner.json").write_text(
            json.dumps({"finished_at": time.time(), "error": f"{type(exc).__name__}: {exc}"})
        )
        raise
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
