"""Typed worker messages: tasks validated before anything runs, results checked against the
trial in flight, objective kwargs by each objective's schema, worker output as data."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from celery.exceptions import WorkerLostError

from hpod.config import Settings
from hpod.errors import RequestRejected
from hpod.messaging import EVALUATE_BATCH_TASK
from hpod.workers import tasks
from hpod.workers.messages import (
    Expected,
    TrialResult,
    check_result,
    parse_results,
    trusted_cost,
    validate,
)
from hpod.workers.objectives.analytic import quadratic
from hpod.workers.objectives.gradient_boosting import gradient_boosting
from hpod.workers.registry import ObjectiveRegistry, check_objective_kwargs

PARAMS = {"x": 0.25, "y": -1.0}


def task(**changes: Any) -> dict[str, Any]:
    """A task message as the daemon sends it."""
    body: dict[str, Any] = {
        "study": "s",
        "trial_id": 7,
        "number": 3,
        "params": PARAMS,
        "objective": "quadratic",
        "objective_kwargs": {},
        "attempt": 1,
        "plan": {"mode": "fast", "ladder": [1.0], "pruner": "none", "threshold": 0.0},
    }
    body.update(changes)
    return body


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path)


def test_a_valid_task_is_evaluated_and_answered_with_a_valid_result(settings: Settings) -> None:
    body = tasks.answer(settings, task(), "w1")
    assert body is not None
    result = validate(TrialResult, body)
    assert result.state == "complete" and result.values == [0.0625 + 2.25]
    assert result.params == PARAMS and result.trial_id == 7 and result.attempt == 1


def test_a_forged_task_with_pruner_options_as_kwargs_is_refused_before_anything_runs(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The exact finding: pruner_options went into the pruner's keyword arguments as given.
    Now they are a typed model: an unknown key (or one the pruner does not take) fails the
    trial with the field named; no pruner is built, no objective runs."""
    built: list[Any] = []
    monkeypatch.setattr(tasks, "build_pruners", lambda *a, **k: built.append(a) or [])
    forged = [
        {"pruner": "median", "pruner_options": {"wrapped_pruner": "x", "n_startup_trials": 1}},
        {"pruner": "median", "pruner_options": {"patience": 3}},
        {"pruner": "hyperband", "pruner_options": {"max_resource": 10**12}},
        {"pruner": "median", "pruner_options": {"n_warmup_steps": True}},
    ]
    for plan in forged:
        body = tasks.answer(settings, task(plan=plan), "w1")
        assert body is not None and body["state"] == "failed", body
        assert body["error"].startswith("invalid task: plan"), body["error"]
        assert "cost" not in body
    assert built == []
    assert "wrapped_pruner" in str(tasks.answer(settings, task(plan=forged[0]), "w1"))


def test_a_task_naming_no_trial_is_dropped_and_a_pack_answers_each_trial(
    settings: Settings,
) -> None:
    assert tasks.answer(settings, {"study": "s", "number": "x"}, "w1") is None
    pack = tasks.answer_pack(settings, {"trials": [task(), task(number=4, trial_id=8)]}, "w1")
    assert pack is not None and [r["number"] for r in pack["results"]] == [3, 4]
    assert tasks.answer_pack(settings, {"trials": [], "evil": 1}, "w1") is None


def test_a_task_given_up_after_its_worker_died_fails_every_trial_it_names() -> None:
    lost = WorkerLostError("Worker exited prematurely: exitcode 1")
    kwargs = {"trials": [task(), task(number=4, trial_id=8), {"junk": True}]}
    bodies = tasks.lost_answers(EVALUATE_BATCH_TASK, kwargs, lost, 3, "w1")
    assert [b["number"] for b in bodies] == [3, 4]
    for body in bodies:
        result = validate(TrialResult, body)
        assert result.state == "failed" and "died running this trial 3 time(s)" in str(result.error)


def genuine(**changes: Any) -> dict[str, Any]:
    """A result of trial 3 on the ladder (1/9, 1/3, 1), its first rung from the cache."""
    body: dict[str, Any] = {
        "v": 1,
        "study": "s",
        "trial_id": 7,
        "number": 3,
        "attempt": 1,
        "params": PARAMS,
        "state": "complete",
        "values": [0.5],
        "cost": {
            "cpu": 1.0,
            "data": 1.333,
            "rungs": [[0.111, 0.9, True, 0.0], [0.333, 0.7, False, 0.2], [1.0, 0.5, False, 0.8]],
            "fidelity": "data",
        },
    }
    body.update(changes)
    return body


EXPECTED = Expected(7, PARAMS, 2, 1, ladder=[0.111, 0.333, 1.0], cached={0.111: [0.9]})


def check(body: dict[str, Any], expected: Expected = EXPECTED) -> str | None:
    parsed = parse_results(json.dumps(body).encode())
    assert not parsed.rejected, parsed.rejected
    return check_result(parsed.results[0], expected)


def test_a_genuine_result_matches_its_trial_in_flight() -> None:
    assert check(genuine()) is None
    assert check(genuine(attempt=2)) is None  # a result of an earlier attempt is as good


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"trial_id": 8}, "trial_id 8"),
        ({"attempt": 3}, "attempt 3 was never dispatched"),
        ({"params": {"x": 0.25, "y": -1}}, "params differ"),  # an int is not the float given
        ({"params": {"x": 0.25}}, "params differ"),
    ],
)
def test_a_result_that_is_not_the_trial_in_flight_is_refused(
    changes: dict[str, Any], reason: str
) -> None:
    assert reason in str(check(genuine(**changes)))


def rungs(*rungs: list[Any]) -> dict[str, Any]:
    return {"cpu": 1.0, "data": 1.0, "rungs": list(rungs), "fidelity": "data"}


@pytest.mark.parametrize(
    ("cost", "reason"),
    [
        # A rung on a fraction the trial was never sent: it would go into the cache.
        (rungs([0.5, -1e9, False, 0.0], [1.0, 0.5, False, 0.8]), "not the trial's ladder"),
        # A rung claimed "from the cache" that the task never carried.
        (
            rungs([0.111, -1e9, True, 0.0], [0.333, -1e9, True, 0.0], [1.0, 0.5, False, 0.8]),
            "was not in the cache",
        ),
        (
            rungs([0.111, 0.1, True, 0.0], [0.333, 0.7, False, 0.2], [1.0, 0.5, False, 0.8]),
            "was not in the cache",
        ),
        # A full-data rung that is not the value told.
        (
            rungs([0.111, 0.9, True, 0.0], [0.333, 0.7, False, 0.2], [1.0, -1e9, False, 0.8]),
            "full-data rung",
        ),
    ],
)
def test_cache_poisoning_through_cost_rungs_is_refused(cost: dict[str, Any], reason: str) -> None:
    assert reason in str(check(genuine(cost=cost)))


def test_rungs_of_a_trial_whose_ladder_is_unknown_never_reach_the_cache() -> None:
    recovered = Expected(7, PARAMS, 1, 1)  # after a restart the task plan is not kept
    parsed = parse_results(json.dumps(genuine(cost=rungs([0.5, -1e9, False, 0.0]))).encode())
    result = parsed.results[0]
    assert check_result(result, recovered) is None
    cost = trusted_cost(result, recovered)
    assert cost is not None and cost["rungs"] == [] and cost["pruned_at"] is None


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (genuine(cost={"cpu": "lots", "rungs": [[1]]}), "cost.cpu"),  # made GET .../NAME 500
        (genuine(cost={"cpu": 1.0, "overhead": 5}), "cost.overhead"),
        (genuine(number=True), "number"),
        (
            json.dumps(genuine()).replace("[0.5]", "[1e400]").encode(),
            "values.0: Input should be a finite number",
        ),
        (genuine(values=None), "needs values"),
        (genuine(state="failed"), "carries no values"),
        (genuine(error="x" * 9000), "error"),
        ({"v": 1, "results": "nope"}, "results"),
        ([genuine()], "JSON object"),
    ],
)
def test_a_malformed_result_is_refused_with_the_field(body: Any, reason: str) -> None:
    parsed = parse_results(body if isinstance(body, bytes) else json.dumps(body).encode())
    assert not parsed.results and reason in parsed.rejected[0].reason, parsed.rejected


def test_one_bad_result_of_a_pack_loses_none_of_the_others() -> None:
    parsed = parse_results({"v": 1, "results": [genuine(), genuine(number=-1)]})
    assert [r.number for r in parsed.results] == [3] and len(parsed.rejected) == 1


def test_deep_or_huge_result_messages_are_refused_before_they_are_parsed() -> None:
    assert "not JSON" in parse_results(b"[" * 1000 + b"]" * 1000).rejected[0].reason
    assert "over the limit" in parse_results(b" " * (5 << 20)).rejected[0].reason


def test_gradient_boosting_with_a_billion_samples_is_refused_naming_the_field() -> None:
    with pytest.raises(RequestRejected) as refused:
        check_objective_kwargs(gradient_boosting, {"n_samples": 10**9})
    assert refused.value.code == "invalid"
    assert refused.value.field == "study.objective_kwargs.n_samples"
    with pytest.raises(RequestRejected) as refused:
        check_objective_kwargs(gradient_boosting, {"n_samples": 250_000, "n_features": 500})
    assert "n_samples x n_features" in refused.value.message
    check_objective_kwargs(gradient_boosting, {"n_samples": 600})


def test_every_shipped_objective_declares_its_kwargs_and_takes_its_defaults() -> None:
    registry = ObjectiveRegistry()
    for name in registry.names():
        fn = registry.get(name)
        assert getattr(fn, "hpod_kwargs", None) is not None, name
        check_objective_kwargs(fn, {})
        with pytest.raises(RequestRejected) as refused:
            check_objective_kwargs(fn, {"no_such_kwarg": 1})
        assert refused.value.field == "study.objective_kwargs.no_such_kwarg"
    with pytest.raises(RequestRejected):
        check_objective_kwargs(quadratic, {"sleep": True})  # a bool is not a number


def test_the_worker_checks_the_kwargs_again_before_calling(settings: Settings) -> None:
    body = tasks.answer(settings, task(objective_kwargs={"sleep": 10**9}), "w1")
    assert body is not None and body["state"] == "failed"
    assert "objective_kwargs.sleep" in body["error"]


def test_a_worker_line_is_data_of_one_daemon_record_never_a_record_of_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The log-injection line: a worker's stdout line starting with '{' was copied verbatim
    into the daemon's JSON log, a forged level and event included, and skipped redaction."""
    from hpod.daemon.local_workers import relay_line
    from hpod.logs import configure_logging

    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    configure_logging("json", "info")
    forged = (
        '{"level":"critical","event":"daemon.compromised","logger":"hpod.daemon",'
        '"broker":"amqp://hpod:hunter2@rabbit:5672/%2F"}'
    )
    relay_line(4242, forged.encode() + b"\n")
    relay_line(4242, b"worker: Warm shutdown (MainProcess)\n")
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    logging.getLogger().handlers.clear()
    assert [r["event"] for r in records] == ["worker.output", "worker.output"]
    assert records[0]["level"] == "error" and records[0]["pid"] == 4242
    assert "daemon.compromised" in records[0]["line"]
    assert "hunter2" not in out.getvalue()
    assert records[1]["line"] == "worker: Warm shutdown (MainProcess)"


def test_a_retried_task_does_not_run_a_trial_ended_at_its_allowance(settings: Settings) -> None:
    """A worker ended its process to stop a trial at its CPU allowance and marked it so: the
    task Celery sends again answers nothing; an unmarked running trial is evaluated, and a
    first run (not a retry) never looks."""
    import optuna

    from hpod.engine import make_storage

    storage = make_storage(settings.optuna_storage_url())
    study = optuna.create_study(study_name="s", storage=storage)
    marked, unmarked = study.ask(), study.ask()
    storage.set_trial_user_attr(marked._trial_id, tasks.STOPPED_ATTR, "budget")
    plan = {"ladder": [1.0], "cpu_allowance": 5.0}
    again = task(trial_id=marked._trial_id, plan=plan)
    assert tasks.answer(settings, again, "w1", retried=True) is None
    assert tasks.answer(settings, again, "w1")["state"] == "complete"  # type: ignore[index]
    other = task(trial_id=unmarked._trial_id, plan=plan)
    assert tasks.answer(settings, other, "w1", retried=True)["state"] == "complete"  # type: ignore[index]


def test_a_packs_trials_pass_on_what_they_left_of_their_cpu_allowances(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon splits a pack's share of a CPU budget evenly; on 5-D Rosenbrock (7-14 ms a
    trial) a trial above the mean was stopped at its even share, its CPU wasted, while the
    trials before it in the pack had left theirs unspent. Each trial now gets its own
    allowance plus what the earlier ones left; the pack's total never grows."""
    seen: list[float | None] = []
    spent = iter([0.004, 0.012, 0.010])

    def fake_answer(
        settings: Settings, message: dict[str, Any], worker: str, *args: Any
    ) -> dict[str, Any]:
        seen.append(message["plan"].get("cpu_allowance"))
        cpu = next(spent)
        return {"number": message["number"], "state": "complete", "cost": {"cpu": cpu}}

    monkeypatch.setattr(tasks, "answer", fake_answer)
    plan = {**task()["plan"], "cpu_allowance": 0.01}
    trials = [task(number=n, trial_id=n, plan=plan) for n in range(3)]
    pack = tasks.answer_pack(settings, {"trials": trials}, "w1")
    assert pack is not None and len(pack["results"]) == 3
    # 0.01; 0.01 + 0.006 left by the first; 0.01 + (0.016 - 0.012) left by the second
    assert seen == pytest.approx([0.01, 0.016, 0.014])
    # what the trials before spent plus this one's allowance never exceeds the pack's share
    before = [0.0, 0.004, 0.016]
    assert all(
        b + a <= (i + 1) * 0.01 + 1e-12 for i, (b, a) in enumerate(zip(before, seen, strict=True))
    )


def test_a_failed_trial_of_a_pack_passes_nothing_on(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed trial reports no CPU: what it spent is unknown, so nothing carries over."""
    seen: list[float | None] = []
    bodies = iter(
        [
            {"state": "complete", "cost": {"cpu": 0.001}},
            {"state": "failed", "error": "boom"},
            {"state": "complete", "cost": {"cpu": 0.001}},
        ]
    )

    def fake_answer(
        settings: Settings, message: dict[str, Any], worker: str, *args: Any
    ) -> dict[str, Any]:
        seen.append(message["plan"].get("cpu_allowance"))
        return {"number": message["number"], **next(bodies)}

    monkeypatch.setattr(tasks, "answer", fake_answer)
    plan = {**task()["plan"], "cpu_allowance": 0.01}
    trials = [task(number=n, trial_id=n, plan=plan) for n in range(3)]
    tasks.answer_pack(settings, {"trials": trials}, "w1")
    assert seen == pytest.approx([0.01, 0.019, 0.01])


def test_a_real_pack_runs_each_trial_with_its_carried_allowance(settings: Settings) -> None:
    """Through the real `answer`: a pack of quadratic trials under allowances completes
    each trial, and the results are valid."""
    plan = {**task()["plan"], "cpu_allowance": 0.5}
    trials = [task(number=n, trial_id=n, plan=plan) for n in range(3)]
    pack = tasks.answer_pack(settings, {"trials": trials}, "w1")
    assert pack is not None
    assert [r["state"] for r in pack["results"]] == ["complete"] * 3
    assert all(validate(TrialResult, r) for r in pack["results"])
