"""Transfer across studies: every finished study leaves a memory that warm-starts the next.

Pure parts (no daemon, no I/O): `memory` (the record of a finished study), `similarity`
(which past studies resemble a new one), `mapping` (past configurations carried into a new
space, and how many), `agreement` (whether a past study's surface agrees with the new
study's first results), `prior` (past surfaces shown to TPE as prior trials, never stored).
`store` reads and writes them in an Optuna storage.

`hpod.daemon.transfer` drives them from a study's loop (spec field `transfer`, docs/transfer.md);
`bench/transfer.py` drives the same parts in-process (docs/benchmarks.md, "Transfer").
"""
