# The two commands of the README: `make run` (demo study on the embedded default) and
# `make test` (the whole suite). Both install what they need into .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test lint bench policy recordings fuzz faults clean

$(STAMP): pyproject.toml examples/hpod-example-objective/pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch first: a bare `torch` requirement would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	# The worked example of docs/objectives.md, an objective in a distribution of its own.
	$(PY) -m pip install -q -e examples/hpod-example-objective
	touch $(STAMP)

install: $(STAMP)

run: install
	HPOD_DATA_DIR=$${HPOD_DATA_DIR:-$(CURDIR)/.hpod} $(VENV)/bin/hpod demo

test: install
	$(VENV)/bin/pytest

lint: install
	$(VENV)/bin/ruff check hpod tests bench
	$(VENV)/bin/ruff format --check hpod tests bench
	$(VENV)/bin/mypy hpod

# The benchmarks write their tables into docs/benchmarks.md: core and quality about 50
# minutes; savings (10 seeds, one and four workers) several hours on 2 cores; transfer (10
# sequences, without and with the prior, about 20 CPU minutes) 20 to 45 minutes on 2 cores.
bench: install
	$(PY) bench/core.py
	$(PY) bench/quality.py
	$(PY) bench/savings.py
	$(PY) bench/transfer.py --seeds 10 --trials 30 --both --write

# The strategy policy: train the shipped weights (seeded: the same weights every time), then
# judge them on the frozen held-out suite, 30 seeds; the tables go into docs/benchmarks.md.
# Both read the recorded real runs in hpod/data/strategy/recorded.json.gz (`make recordings`
# measures them again: CPU figures then move with the machine). Last, bench/learning_curve.py:
# 50 local studies with the learner and its gate, held-out regret before and after (~8 min).
policy: install
	$(VENV)/bin/hpod policy train
	$(PY) bench/strategy.py
	$(PY) bench/learning_curve.py

recordings: install
	$(PY) -m hpod.policies.strategy.recorded

# The long campaigns of issue 12 (docs/hardening.md writes down what they do and keeps their
# figures). Run as root: fuzz makes a RabbitMQ vhost with rabbitmqctl; faults also restarts
# RabbitMQ and PostgreSQL (every vhost and client on the machine) and mounts a small tmpfs.
fuzz: install
	$(PY) bench/fuzz.py --amqp 10000 --http 2000 --seed $${SEED:-1}

faults: install
	$(PY) bench/faults.py --daemon-kills 60 --worker-kills 20 --seed $${SEED:-1}

clean:
	rm -rf $(VENV) .hpod
