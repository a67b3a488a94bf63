"""Samplers hpod builds around Optuna's: a GP that runs in its own process, and a CMA-ES with
a space-filling opening, a warm start and restarts (see docs/policies.md, "auto")."""
