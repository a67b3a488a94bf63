"""Samplers hpod builds around Optuna's: a GP that runs in its own process, and a CMA-ES with
a space-filling opening, a warm start and restarts (see docs/policies.md, "auto")."""

#: CPU seconds the sampler process spent choosing a trial's point (`hpod.sampling.process`),
#: stored on the trial for the efficiency report.
SAMPLER_CPU_ATTR = "hpod:sampler_cpu"
