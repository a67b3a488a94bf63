"""The worked example of docs/objectives.md: an objective packaged as its own distribution.

`make install` installs examples/hpod-example-objective in editable mode, so in CI its entry
point is already registered. Where it is not installed (a developer's shared venv), the test
installs it into a temporary folder (``pip install --target``, no dependencies, no build
isolation: nothing is downloaded) and puts that folder on the daemon's ``PYTHONPATH``, which
the local workers inherit, so the venv itself is never changed.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Daemon, hpod_env

import hpod
from hpod.client import Client

SOURCE_ROOT = Path(hpod.__file__).resolve().parent.parent
EXAMPLE = SOURCE_ROOT / "examples" / "hpod-example-objective"
DISTRIBUTION = "hpod-example-objective"

SPEC = {
    "name": "example-forest",
    "objective": "example_forest",
    "objective_kwargs": {"folds": 3, "seed": 0},
    "space": {
        "n_estimators": {"type": "int", "low": 10, "high": 40},
        "max_depth": {"type": "int", "low": 2, "high": 16},
        "max_features": {"type": "float", "low": 0.05, "high": 1.0},
    },
    "budget": {"trials": 8},
    "sampler": {"name": "random", "seed": 0},
}


@pytest.fixture(scope="module")
def example_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """What to prepend to PYTHONPATH so that the example's entry point is registered:
    nothing when it is installed, else a folder it was just installed into."""
    try:
        importlib.metadata.distribution(DISTRIBUTION)
        return ""
    except importlib.metadata.PackageNotFoundError:
        pass
    target = tmp_path_factory.mktemp("example-objective")
    # Built from a copy: a build writes build/ and *.egg-info next to the sources.
    source = shutil.copytree(EXAMPLE, target / "source")
    offline = ["--no-deps", "--no-build-isolation", "--no-index", "--target", str(target)]
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", *offline, str(source)],
        check=True,
        capture_output=True,
        timeout=180,
    )
    return str(target)


@pytest.fixture
def example_daemon(example_path: str, tmp_path: Path) -> Iterator[Daemon]:
    """`hpod run` on the embedded broker with two local workers that see the example."""
    env = hpod_env(tmp_path / "data")
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (example_path, str(SOURCE_ROOT), env.get("PYTHONPATH", "")) if p
    )
    daemon = Daemon([sys.executable, "-m", "hpod", "run"], env, tmp_path / "daemon.log")
    daemon.start()
    yield daemon
    daemon.stop()


def test_the_example_objective_is_listed_and_runs_a_study_to_a_best_value(
    example_daemon: Daemon,
) -> None:
    """`hpod objectives` lists example_forest with its declared fidelity, version and kwargs;
    a study of it through the daemon and its local workers completes with a best value (an
    error rate in [0, 1)) and its best parameters."""
    listing = subprocess.run(
        [sys.executable, "-m", "hpod", "objectives"],
        env=example_daemon.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    row = next(line.split(maxsplit=3) for line in listing.splitlines() if "example_forest" in line)
    assert row == ["example_forest", "data", "1", "folds, seed"]

    with Client(example_daemon.url, token=example_daemon.token) as client:
        assert client.create_study(SPEC)["created"]
        final = client.wait(SPEC["name"], timeout=120)
    assert final["state"] == "completed", example_daemon.log()[-3000:]
    assert final["n_trials"] == 8
    assert set(final["counts"]) <= {"complete", "pruned"}, final["counts"]
    assert 0.0 <= final["best"]["value"] < 1.0
    assert set(final["best"]["params"]) == set(SPEC["space"])
