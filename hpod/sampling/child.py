"""The sampler process: Optuna's GPSampler outside the daemon (`python -m hpod.sampling.child`).

Optuna's GP sampler needs PyTorch (180 MB mapped, over a second to import, and a fit that
costs tenths of a second of CPU per trial); the daemon must stay small and its Optuna thread
free. So the daemon's `ProcessGPSampler` sends each request here as one JSON line on stdin
(`hpod.sampling.wire`) and reads the answer on stdout: the next point, and the CPU seconds
this process spent finding it. The process is stateless between requests: each builds an
in-memory study from the trials sent, so a restarted process answers the same.

It says ``{"ready": ...}`` once torch is loaded, answers ``{"ok": false, "error": ...}`` to a
request it cannot serve, and exits when stdin closes (the daemon stopping).
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from typing import Any, BinaryIO

from hpod.sampling import wire

#: Seeds of the per-request sampler are drawn from the study's seed and its trial count, so
#: a study with a seed gets the same points again, and two requests never share a stream.
SEED_MODULUS = 2**32


def _setup() -> None:
    """Load torch now (so the first request is not the one that pays) on one thread: the
    machine's cores belong to the workers."""
    import optuna
    import torch

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore")


def answer(message: dict[str, Any]) -> dict[str, Any]:
    """The next point for the request `message` (internal representation), with its CPU."""
    import optuna
    from optuna.samplers import GPSampler
    from optuna.trial import TrialState, create_trial

    started = time.process_time()
    if message.get("v") != wire.PROTOCOL:
        raise wire.WireError(f"protocol {message.get('v')!r}, expected {wire.PROTOCOL}")
    space = wire.read_space(message.get("space"))
    directions = message.get("directions")
    if not isinstance(directions, list) or not directions:
        raise wire.WireError("directions: not a list")
    rows = message.get("trials")
    if not isinstance(rows, list):
        raise wire.WireError("trials: not a list")
    seed = message.get("seed")
    if seed is not None:
        seed = (int(seed) * 1_000_003 + len(rows)) % SEED_MODULUS
    names = list(space)
    study = optuna.create_study(directions=directions, sampler=optuna.samplers.RandomSampler())
    trials = []
    for row in rows:
        xs = zip(names, row["x"], strict=True)
        params = {n: space[n].to_external_repr(float(x)) for n, x in xs}
        state = TrialState[row["state"]]
        values = row["values"] if state == TrialState.COMPLETE else None
        trials.append(create_trial(params=params, distributions=space, values=values, state=state))
    study.add_trials(trials)
    trial_id = study._storage.create_new_trial(study._study_id)
    frozen = study._storage.get_trial(trial_id)
    sampler = GPSampler(
        seed=seed,
        n_startup_trials=1,
        deterministic_objective=bool(message.get("deterministic_objective")),
        warn_independent_sampling=False,
    )
    params = sampler.sample_relative(study, frozen, space)
    internal = {n: space[n].to_internal_repr(params[n]) for n in names}
    return {"ok": True, "params": internal, "cpu": time.process_time() - started}


def serve(stdin: BinaryIO, stdout: BinaryIO) -> None:
    """Answer requests line by line until stdin closes."""
    stdout.write(wire.encode({"ready": True, "pid": os.getpid(), "v": wire.PROTOCOL}))
    stdout.flush()
    for line in stdin:
        if not line.strip():
            continue
        try:
            reply = answer(wire.decode(line))
        except Exception as exc:  # one bad request must not end the process
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000]}
        stdout.write(wire.encode(reply))
        stdout.flush()


def main() -> None:
    """Entry point of the sampler process."""
    _setup()
    serve(sys.stdin.buffer, sys.stdout.buffer)


if __name__ == "__main__":
    main()
