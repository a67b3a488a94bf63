"""An external evaluator over HTTP: ask, evaluate itself, tell; enqueue a known configuration."""

from __future__ import annotations

from conftest import DaemonFactory, quadratic_spec


def test_external_evaluator_over_http(start_daemon: DaemonFactory) -> None:
    """ask/tell over HTTP; a repeated ask with the same key returns the same trial and a
    repeated tell is acknowledged without being applied twice; the study completes."""
    daemon = start_daemon("--no-workers")
    spec = quadratic_spec("http-external", trials=4)
    del spec["objective"]
    assert daemon.request("POST", "/studies", spec)[0] == 201
    for i in range(4):
        key = {"Idempotency-Key": f"ask-{i}"}
        status, asked = daemon.request("POST", "/studies/http-external/ask", {}, headers=key)
        assert status == 200, asked
        assert daemon.request("POST", "/studies/http-external/ask", {}, headers=key)[1] == asked
        trial, params = asked["result"]["trial"], asked["result"]["params"]
        value = params["x"] ** 2 + params["y"] ** 2
        told = daemon.request(
            "POST", "/studies/http-external/tell", {"trial": trial, "values": value}
        )
        again = daemon.request(
            "POST", "/studies/http-external/tell", {"trial": trial, "values": value}
        )
        assert told[1]["result"]["already_told"] is False
        assert again[1]["result"]["already_told"] is True
    final = daemon.wait_study("http-external", timeout=30)
    assert final["state"] == "completed" and final["counts"] == {"complete": 4}


def test_enqueued_configuration_is_evaluated_first(start_daemon: DaemonFactory) -> None:
    """An app's proposed configuration (today's production settings) is the next trial."""
    daemon = start_daemon("--no-workers")
    spec = quadratic_spec("http-enqueue", trials=2)
    del spec["objective"]
    assert daemon.request("POST", "/studies", spec)[0] == 201
    status, reply = daemon.request(
        "POST", "/studies/http-enqueue/enqueue", {"params": {"x": 0.25, "y": -1.0}}
    )
    assert status == 200, reply
    asked = daemon.request("POST", "/studies/http-enqueue/ask", {})[1]["result"]
    assert asked["params"] == {"x": 0.25, "y": -1.0}


def test_mutating_routes_need_the_token(start_daemon: DaemonFactory) -> None:
    """Without the right bearer token a POST is refused with 401 and changes nothing."""
    daemon = start_daemon("--no-workers")
    spec = quadratic_spec("no-token", trials=2)
    assert daemon.request("POST", "/studies", spec, token=None)[0] == 401
    assert daemon.request("POST", "/studies", spec, token="wrong-token-xxxxxxxx")[0] == 401
    assert daemon.get("/studies") == {"studies": []}
    assert daemon.get("/openapi.json")["openapi"].startswith("3.")


def test_the_route_not_the_body_decides_the_request(start_daemon: DaemonFactory) -> None:
    """A body smuggling `type` or `study` into POST /mode cannot stop or touch a study."""
    daemon = start_daemon("--no-workers")
    spec = quadratic_spec("smuggle", trials=2)
    del spec["objective"]
    assert daemon.request("POST", "/studies", spec)[0] == 201
    body = {"type": "study.stop", "name": "smuggle", "mode": "fast"}
    status, reply = daemon.request("POST", "/mode", body)
    assert status == 400 and reply["error"]["field"] == "name"
    assert daemon.get("/studies/smuggle")["state"] == "running"


def test_a_multi_objective_study_over_http(start_daemon: DaemonFactory) -> None:
    """Two directions: tells carry two values, and the status lists the Pareto front."""
    daemon = start_daemon("--no-workers")
    spec = quadratic_spec("http-multi", trials=5, directions=["minimize", "maximize"])
    del spec["objective"]
    assert daemon.request("POST", "/studies", spec)[0] == 201
    for _ in range(5):
        asked = daemon.request("POST", "/studies/http-multi/ask", {})[1]["result"]
        x, y = asked["params"]["x"], asked["params"]["y"]
        reply = daemon.request(
            "POST", "/studies/http-multi/tell", {"trial": asked["trial"], "values": [x * x, y]}
        )
        assert reply[0] == 200, reply
    final = daemon.wait_study("http-multi", timeout=30)
    assert final["counts"] == {"complete": 5}
    assert final["best"] is None and 1 <= len(final["best_trials"]) <= 5
    assert all(len(t["values"]) == 2 for t in final["best_trials"])


def test_a_time_budget_ends_the_study(start_daemon: DaemonFactory) -> None:
    """A study with only a time budget stops asking when it is spent and completes."""
    daemon = start_daemon()
    spec = quadratic_spec("http-seconds", objective_kwargs={"sleep": 0.2}, max_concurrent=2)
    spec["budget"] = {"seconds": 3}
    assert daemon.request("POST", "/studies", spec)[0] == 201
    final = daemon.wait_study("http-seconds", timeout=60)
    assert final["state"] == "completed"
    assert final["counts"].get("complete", 0) >= 2
    assert "running" not in final["counts"]


def test_the_idle_daemon_does_not_load_torch(start_daemon: DaemonFactory) -> None:
    """torch costs 180 MB: the daemon never imports it (only a worker running the MLP does)."""
    daemon = start_daemon("--no-workers")
    assert daemon.proc is not None
    maps = open(f"/proc/{daemon.proc.pid}/maps").read()  # noqa: SIM115
    assert "libtorch" not in maps
