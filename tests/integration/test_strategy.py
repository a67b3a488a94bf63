"""The strategy policy in a real daemon with real workers: decisions at the start and every
window, a live switch that loses no trial, decisions and experience across a SIGKILL, corrupt
weights, and the policy's reset / export / import over HTTP and the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
from conftest import Daemon, DaemonFactory, eventually, quadratic_spec, watch

from hpod.engine import make_storage

#: The policy's window in the `fast` mode (trials told between two decisions).
FAST_WINDOW = 8


def spec(name: str, trials: int, **extra: Any) -> dict[str, Any]:
    """A quick quadratic study that leaves its sampler and pruner to the strategy policy."""
    return quadratic_spec(name, trials, **{"mode": "fast", "sampler": {"seed": 3}, **extra})


def study_attrs(daemon: Daemon, name: str) -> dict[str, Any]:
    """The study's user attributes, read with plain Optuna from the daemon's journal."""
    storage = make_storage(f"journal://{daemon.env['HPOD_DATA_DIR']}/studies.journal")
    return dict(optuna.load_study(study_name=name, storage=storage).user_attrs)


def trials(daemon: Daemon, name: str) -> list[optuna.trial.FrozenTrial]:
    """The study's trials, read with plain Optuna."""
    storage = make_storage(f"journal://{daemon.env['HPOD_DATA_DIR']}/studies.journal")
    return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)


def check_windows(decisions: list[dict[str, Any]], window: int) -> None:
    """One decision at the start, then at most one per window of told trials, each once its
    window is full."""
    assert decisions[0]["told"] == 0 and decisions[0]["trigger"] == "start"
    boundaries = [d["told"] // window for d in decisions]
    assert boundaries == sorted(set(boundaries)), decisions
    for d in decisions[1:]:
        assert d["trigger"] == "window" and d["told"] >= window


def log_events(daemon: Daemon) -> list[dict[str, Any]]:
    """The daemon's JSON log lines."""
    return [json.loads(line) for line in daemon.log().splitlines() if line.startswith("{")]


def wait_until(check: Any, daemon: Daemon, timeout: float = 120) -> None:
    """Poll `check()` until it holds; the daemon's log tail if it never does."""
    eventually(check, timeout, 0.2, lambda: daemon.log()[-3000:])


def test_an_auto_study_decides_at_the_start_and_every_window(start_daemon: DaemonFactory) -> None:
    """strategy auto: a decision at told 0 and one per full window, each published as
    `strategy.chosen`, kept on the study (`hpod:strategy`), scored once its window ended and
    handed to the policy as experience; the status shows them."""
    daemon = start_daemon()
    name = "auto-windows"
    events = watch(daemon, name)
    assert daemon.request("POST", "/studies", spec(name, 40))[0] == 201
    final = daemon.wait_study(name)
    assert final["n_trials"] == 40 and final["counts"] == {"complete": 40}
    events.join(timeout=30)

    attrs = study_attrs(daemon, name)
    decisions = attrs["hpod:strategy"]
    assert len(decisions) >= 4, decisions
    check_windows(decisions, FAST_WINDOW)
    assert all(d["source"] in {"policy", "rules", "explore"} for d in decisions)
    assert all(d["settled"] for d in decisions)
    assert all(d["reward"] is not None for d in decisions)
    assert attrs["hpod:strategy_current"]["strategy"] == decisions[-1]["strategy"]
    assert set(attrs["hpod:strategy_current"]["features"]) >= {"budget_used", "log_cost"}

    chosen = events.of("strategy.chosen")
    assert [e["told"] for e in chosen] == [d["told"] for d in decisions]
    assert [e["strategy"] for e in chosen] == [d["strategy"] for d in decisions]
    first, second = chosen[0], chosen[1]
    assert first["previous_reward"] is None and first["source"] == decisions[0]["source"]
    assert second["previous_reward"] == decisions[0]["reward"]
    assert {"reason", "scores", "features", "plan"} <= first.keys()

    shown = final["strategy"]
    assert shown["setting"] == "auto" and shown["current"] == decisions[-1]["strategy"]
    assert [d["told"] for d in shown["decisions"]] == [d["told"] for d in decisions]

    policy = daemon.get("/policy")
    assert policy["experiences"]["local"] == len(decisions)
    status, bundle = daemon.request("GET", "/policy/export")
    assert status == 200
    assert Counter(e["study"] for e in bundle["replay"]) == {name: len(decisions)}

    cli = subprocess.run(
        [sys.executable, "-m", "hpod", "status", name],
        env=daemon.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    assert f"strategy: {decisions[-1]['strategy']}" in cli.stdout
    assert "told  strategy" in cli.stdout


def test_a_live_strategy_switch_loses_no_trial(start_daemon: DaemonFactory) -> None:
    """Forced qmc, switched live to tpe over HTTP (and once more to auto through the queue's
    request envelope): every trial 0..N-1 exists, finished and was told once, the study ends
    at exactly its budget, and each switch is a decision of the study."""
    daemon = start_daemon()
    name = "switched"
    events = watch(daemon, name)
    body = spec(name, 60, strategy="qmc", max_concurrent=2, objective_kwargs={"sleep": 0.05})
    assert daemon.request("POST", "/studies", body)[0] == 201
    wait_until(lambda: sum(t.state.is_finished() for t in trials(daemon, name)) >= 12, daemon)
    status, reply = daemon.request("POST", f"/studies/{name}/strategy", {"strategy": "tpe"})
    assert status == 200, reply
    assert reply["result"]["strategy"]["current"] == "tpe"
    assert reply["result"]["strategy"]["setting"] == "tpe"
    wait_until(lambda: sum(t.state.is_finished() for t in trials(daemon, name)) >= 30, daemon)
    envelope = {"v": 1, "type": "study.strategy", "name": name, "strategy": "auto"}
    status, reply = daemon.request("POST", "/requests", envelope)
    assert status == 200, reply
    final = daemon.wait_study(name)
    events.join(timeout=30)

    assert final["n_trials"] == 60 and final["counts"] == {"complete": 60}
    done = trials(daemon, name)
    assert sorted(t.number for t in done) == list(range(60))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in done)
    told = Counter(e["trial"] for e in events.of("trial.completed"))
    assert sorted(told) == list(range(60)) and set(told.values()) == {1}

    decisions = study_attrs(daemon, name)["hpod:strategy"]
    assert decisions[0]["strategy"] == "qmc" and decisions[0]["source"] == "forced"
    switches = [d for d in decisions if d["trigger"] == "switch"]
    assert (switches[0]["strategy"], switches[0]["source"]) == ("tpe", "forced")
    assert switches[1]["source"] in {"policy", "rules", "explore"}
    assert decisions[decisions.index(switches[0]) - 1]["strategy"] == "qmc"
    assert switches[0]["plan"]["sampler"] == "tpe"
    assert len(events.of("strategy.chosen")) == len(decisions)


def test_strategy_settings_are_validated(start_daemon: DaemonFactory) -> None:
    """An unknown strategy, or a forced one over a spec's own sampler, is refused naming the
    field; a spec that names its sampler is driven by its mode, and says so."""
    daemon = start_daemon()
    status, reply = daemon.request("POST", "/studies", spec("bad", 4, strategy="oracle"))
    assert status == 400 and reply["error"]["field"] == "study.strategy"
    assert "unknown strategy 'oracle'" in reply["error"]["message"]
    assert "qmc" in reply["error"]["message"]
    own = spec("own-sampler", 4, strategy="qmc", sampler={"name": "random", "seed": 1})
    status, reply = daemon.request("POST", "/studies", own)
    assert status == 400 and reply["error"]["field"] == "study.strategy"
    own["strategy"] = "auto"
    assert daemon.request("POST", "/studies", own)[0] == 201
    final = daemon.wait_study("own-sampler")
    shown = final["strategy"]
    assert shown["current"] == "mode" and "sampler 'random'" in shown["reason"]
    assert len(shown["decisions"]) == 1
    status, reply = daemon.request("POST", "/studies/own-sampler/strategy", {"strategy": "x"})
    assert status == 409 and reply["error"]["code"] == "not_running"


def test_decisions_and_experience_survive_a_sigkill(
    tmp_path: Path, start_daemon: DaemonFactory
) -> None:
    """kill -9 mid-study, start again: the study goes on from its stored decisions, the
    experience recorded before the kill is still there, and no window counts twice."""
    data = tmp_path / "data"
    daemon = start_daemon(data_dir=data)
    name = "killed"
    body = spec(name, 48, max_concurrent=2, objective_kwargs={"sleep": 0.15})
    assert daemon.request("POST", "/studies", body)[0] == 201
    wait_until(lambda: daemon.get("/policy")["experiences"]["local"] >= 2, daemon)
    before = daemon.request("GET", "/policy/export")[1]["replay"]
    daemon.kill()
    decisions_at_kill = study_attrs(daemon, name)["hpod:strategy"]
    assert len(decisions_at_kill) >= 3

    daemon.start()
    final = daemon.wait_study(name)
    assert final["n_trials"] == 48
    assert sorted(t.number for t in trials(daemon, name)) == list(range(48))
    assert "strategy.resumed" in {e["event"] for e in log_events(daemon)}

    decisions = study_attrs(daemon, name)["hpod:strategy"]
    # The decisions made before the kill are kept as they were, none is made again.
    for kept, old in zip(decisions, decisions_at_kill, strict=False):
        assert (kept["told"], kept["first_trial"], kept["strategy"]) == (
            old["told"],
            old["first_trial"],
            old["strategy"],
        )
    firsts = [d["first_trial"] for d in decisions]
    assert firsts == sorted(set(firsts)), decisions
    check_windows(decisions, FAST_WINDOW)

    after = daemon.request("GET", "/policy/export")[1]["replay"]
    assert after[: len(before)] == before
    learnt = [d for d in decisions if d["reward"] is not None]
    assert len(after) == len(learnt), (len(after), decisions)
    assert daemon.get("/policy")["experiences"]["local"] == len(learnt)


def test_corrupt_weights_fall_back_to_the_shipped_weights(
    tmp_path: Path, start_daemon: DaemonFactory
) -> None:
    """Garbage in <data_dir>/policy/weights.json: the daemon starts, says which file it could
    not read, studies are decided with the shipped weights in force (issue 12: the next one
    down, not straight to the rules), and GET /policy shows why."""
    data = tmp_path / "data"
    (data / "policy").mkdir(parents=True)
    weights = data / "policy" / "weights.json"
    weights.write_text("{not json at all")
    daemon = start_daemon(data_dir=data)
    unreadable = [e for e in log_events(daemon) if e["event"] == "strategy.weights_unreadable"]
    assert unreadable and unreadable[0]["path"] == str(weights), daemon.log()[-2000:]
    policy = daemon.get("/policy")
    assert policy["fallback"] and str(weights) in policy["fallback"]
    assert policy["weights"] == "shipped"
    assert daemon.request("POST", "/studies", spec("ruled", 20))[0] == 201
    final = daemon.wait_study("ruled")
    assert final["n_trials"] == 20
    decisions = study_attrs(daemon, "ruled")["hpod:strategy"]
    assert len(decisions) >= 2 and {d["source"] for d in decisions} <= {
        "rules",
        "policy",
        "explore",
    }
    assert daemon.get("/health")["status"] == "ok"


def hpod_cli(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the `hpod` command against the daemon."""
    return subprocess.run(
        [sys.executable, "-m", "hpod", *args],
        env=daemon.env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_policy_reset_export_and_import(tmp_path: Path, start_daemon: DaemonFactory) -> None:
    """Export the learnt policy over the CLI, reset it, import it back over HTTP and the CLI;
    a bad bundle is refused with the field named and the policy in force stays."""
    daemon = start_daemon()
    assert daemon.request("POST", "/studies", spec("teacher", 24))[0] == 201
    daemon.wait_study("teacher")
    learnt = daemon.get("/policy")["experiences"]["local"]
    assert learnt >= 2

    bundle_file = tmp_path / "policy.json"
    out = hpod_cli(daemon, "policy", "export", str(bundle_file))
    assert out.returncode == 0, out.stderr
    bundle = json.loads(bundle_file.read_text())
    assert bundle["format"] == "hpod-policy/1" and len(bundle["replay"]) == learnt
    assert daemon.request("GET", "/policy/export", token=None)[0] == 401

    assert daemon.request("POST", "/policy/reset", token=None)[0] == 401
    out = hpod_cli(daemon, "policy", "reset")
    assert out.returncode == 0, out.stderr
    assert daemon.get("/policy")["experiences"]["local"] == 0

    status, reply = daemon.request("POST", "/policy/import", bundle)
    assert status == 200 and reply["experiences"]["local"] == learnt
    assert daemon.request("POST", "/policy/reset")[0] == 200
    out = hpod_cli(daemon, "policy", "import", str(bundle_file))
    assert out.returncode == 0, out.stderr
    assert daemon.get("/policy")["experiences"]["local"] == learnt

    status, reply = daemon.request("POST", "/policy/import", {**bundle, "format": "other/9"})
    assert status == 400 and reply["error"]["field"] == "bundle.format", reply
    broken = {**bundle, "replay": [{"study": "x"}]}
    status, reply = daemon.request("POST", "/policy/import", broken)
    assert status == 400 and reply["error"]["field"].startswith("bundle.replay[0]"), reply
    bad_file = tmp_path / "bad.json"
    bad_file.write_text(json.dumps({**bundle, "format": "other/9"}))
    out = hpod_cli(daemon, "policy", "import", str(bad_file))
    assert out.returncode == 1 and "bundle.format" in out.stderr
    assert daemon.get("/policy")["experiences"]["local"] == learnt

    out = hpod_cli(daemon, "policy", "status")
    assert out.returncode == 0 and f"{learnt} learnt here" in out.stdout, out.stdout


def test_the_daemon_learns_in_its_own_process_and_keeps_the_weights_across_a_restart(
    tmp_path: Path, start_daemon: DaemonFactory
) -> None:
    """After enough experience the learner process trains new weights (torch stays out of
    the daemon) and judges them on the check suite: installed, the daemon uses them and after
    kill -9 and a restart still does; refused (they would regress), the weights in force stay,
    the refusal is logged with its figures and `hpod policy status` shows it. Which one
    happens depends on the windows the real workers produced; both are checked in full.
    The check suite is cut to two tasks and one seed and training to 3 epochs (`policy_check_*`,
    `policy_learn_epochs`): the wiring is under test here; the check's verdicts are in the
    unit tests, the full suite's figures in bench/learning_gate.py."""
    import psutil

    data = tmp_path / "data"
    daemon = start_daemon(
        data_dir=data,
        policy_learn_every="3",
        policy_learned="true",
        policy_check_tasks="2",
        policy_check_seeds="1",
        policy_learn_epochs="3",
    )
    shipped_version = daemon.get("/policy")["version"]
    assert daemon.request("POST", "/studies", spec("learner", 40))[0] == 201
    daemon.wait_study("learner")

    def judged() -> bool:
        learning = daemon.get("/policy")["learning"]
        return not learning["running"] and "installed" in (learning["last"] or {})

    wait_until(judged, daemon, timeout=300)
    policy = daemon.get("/policy")
    last = policy["learning"]["last"]
    assert last["experiences"]["windows"] >= 3 and last["version"] > shipped_version
    assert last["check"]["studies"] == 2 * 1
    assert last["check"]["passed"] is last["installed"]
    event = "strategy.weights_installed" if last["installed"] else "strategy.weights_refused"
    logged = [e for e in log_events(daemon) if e["event"] == event]
    assert logged and logged[0]["check"] == last["check"], daemon.log()[-3000:]
    out = hpod_cli(daemon, "policy", "status")
    verdict = "installed" if last["installed"] else "refused (it would regress)"
    assert out.returncode == 0 and f"v{last['version']} {verdict}" in out.stdout, out.stdout
    weights = data / "policy" / "weights.json"
    if last["installed"]:
        assert (policy["weights"], policy["version"]) == ("local", last["version"])
        assert json.loads(weights.read_text())["trained_on"] > policy["experiences"]["shipped"]
    else:
        assert (policy["weights"], policy["version"]) == ("shipped", shipped_version)
        assert not weights.exists()
    assert daemon.proc is not None
    maps = psutil.Process(daemon.proc.pid).memory_maps()
    assert not any("libtorch" in m.path for m in maps), "torch was loaded into the daemon"

    local = policy["experiences"]["local"]
    daemon.kill()
    daemon.start()
    after = daemon.get("/policy")
    assert (after["weights"], after["version"]) == (policy["weights"], policy["version"])
    assert after["experiences"]["local"] == local
    assert daemon.request("POST", "/studies", spec("after-restart", 16))[0] == 201
    daemon.wait_study("after-restart")
    decisions = study_attrs(daemon, "after-restart")["hpod:strategy"]
    assert f"policy v{policy['version']}" in " ".join(d["reason"] for d in decisions)
