"""Malformed requests, over the queue and over HTTP: each gets its own specific error.

The same table is sent on both channels. Every entry must be answered on the channel it came
from with an error naming the field, recorded as a `request.rejected` event, and leave the
daemon serving and every other study untouched. The table ends with the exact bodies of
issue 12 (findings 1, 2 and 4) that were once accepted and then made the daemon unstartable,
or were retried forever; after them all, the daemon still serves and restarts.
"""

from __future__ import annotations

import http.client
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Daemon, hpod_env, quadratic_spec
from test_rabbitmq import Subscriber, publish

EXTERNAL = "victim"


def spec(**changes: Any) -> dict[str, Any]:
    """A valid spec of a fresh study with some fields replaced."""
    base = quadratic_spec("fresh-study", trials=5)
    base.update(changes)
    return base


def space(**params: Any) -> dict[str, Any]:
    """A spec whose space is exactly `params`."""
    return spec(space=params)


def create(study: dict[str, Any]) -> dict[str, Any]:
    """A study.create envelope."""
    return {"v": 1, "type": "study.create", "study": study}


def tell(**fields: Any) -> dict[str, Any]:
    """A trial.tell envelope for the external study."""
    return {"v": 1, "type": "trial.tell", "study": EXTERNAL, **fields}


F = {"type": "float", "low": 0.0, "high": 1.0}

# (case id, message (dict or raw bytes), expected error code, expected field)
TABLE: list[tuple[str, Any, str, str]] = [
    ("not json", b"{this is not json", "not_json", ""),
    # UTF-8 only: a BOM or UTF-16 was once read (the exact cases #130 and #58 of fuzz seed 1).
    (
        "utf-8 BOM",
        b'\xef\xbb\xbf{"v":1,"type":"study.strategy","name":"fz-ctl","strategy":"tpe"}',
        "not_json",
        "",
    ),
    ("utf-16", '{"v":1,"type":"study.pause","name":"fz-ctl"}'.encode("utf-16"), "not_json", ""),
    ("not an object", b"[1, 2, 3]", "invalid", ""),
    ("missing version", {"type": "study.create", "study": spec()}, "invalid", "v"),
    ("unknown version", {**create(spec()), "v": 2}, "unsupported_version", "v"),
    ("unknown type", {"v": 1, "type": "study.explode"}, "unknown_type", "type"),
    ("id of wrong type", {**create(spec()), "id": 5}, "invalid", "id"),
    (
        "unknown objective",
        create(spec(objective="no_such_objective")),
        "unknown_objective",
        "study.objective",
    ),
    ("bad study name", create(spec(name="bad name!")), "invalid", "study.name"),
    ("unknown field", create({**spec(), "colour": "blue"}), "invalid", "study.colour"),
    ("empty space", create(space()), "invalid", "study.space"),
    ("low above high", create(space(x={**F, "low": 3.0})), "invalid", "study.space.x"),
    ("log with low <= 0", create(space(x={**F, "log": True})), "invalid", "study.space.x"),
    ("step not positive", create(space(x={**F, "step": 0})), "invalid", "study.space.x.step"),
    ("unknown param type", create(space(x={"type": "complex"})), "invalid", "study.space.x"),
    (
        "empty choices",
        create(space(c={"type": "categorical", "choices": []})),
        "invalid",
        "study.space.c.choices",
    ),
    (
        "duplicate choices",
        create(space(c={"type": "categorical", "choices": [1, 1]})),
        "invalid",
        "study.space.c.choices",
    ),
    (
        "condition on unknown param",
        create(space(x=F, y={**F, "condition": {"param": "nope", "values": [1]}})),
        "invalid",
        "study.space.y.condition.param",
    ),
    (
        "condition on impossible value",
        create(
            space(
                c={"type": "categorical", "choices": ["a"]},
                y={**F, "condition": {"param": "c", "values": ["b"]}},
            )
        ),
        "invalid",
        "study.space.y.condition.values",
    ),
    ("unknown direction", create(spec(directions=["sideways"])), "invalid", "study.directions.0"),
    ("budget of zero trials", create(spec(budget={"trials": 0})), "invalid", "study.budget.trials"),
    ("budget without limits", create(spec(budget={})), "invalid", "study.budget"),
    (
        "negative time budget",
        create(spec(budget={"seconds": -5})),
        "invalid",
        "study.budget.seconds",
    ),
    ("unknown mode", create(spec(mode="ludicrous")), "invalid", "study.mode"),
    ("unknown sampler", create(spec(sampler={"name": "oracle"})), "invalid", "study.sampler.name"),
    (
        "same name, other spec",
        create({**quadratic_spec(EXTERNAL, trials=99)}),
        "conflict",
        "study.name",
    ),
    ("oversized message", {**create(spec()), "padding": "x" * 70_000}, "too_large", ""),
    ("tell unknown study", {**tell(trial=0, values=[1.0]), "study": "ghost"}, "not_found", "study"),
    ("tell unknown trial", tell(trial=999, values=[1.0]), "not_found", "trial"),
    ("tell negative trial", tell(trial=-1, values=[1.0]), "invalid", "trial"),
    (
        "tell NaN",
        b'{"v":1,"type":"trial.tell","study":"victim","trial":1,"values":[NaN]}',
        "invalid",
        "values.0",
    ),
    (
        "tell Infinity",
        b'{"v":1,"type":"trial.tell","study":"victim","trial":1,"values":[Infinity]}',
        "invalid",
        "values.0",
    ),
    ("tell too many values", tell(trial=1, values=[1.0, 2.0]), "invalid", "values"),
    ("tell complete without values", tell(trial=1), "invalid", "values"),
    ("tell unknown state", tell(trial=1, values=[1.0], state="meh"), "invalid", "state"),
    (
        "enqueue unknown param",
        {"v": 1, "type": "trial.enqueue", "study": EXTERNAL, "params": {"z": 1}},
        "invalid",
        "params.z",
    ),
    (
        "enqueue out of range",
        {"v": 1, "type": "trial.enqueue", "study": EXTERNAL, "params": {"x": 9.0}},
        "invalid",
        "params.x",
    ),
    ("ask unknown study", {"v": 1, "type": "trial.ask", "study": "ghost"}, "not_found", "study"),
    ("stop unknown study", {"v": 1, "type": "study.stop", "name": "ghost"}, "not_found", "study"),
    ("mode.set unknown mode", {"v": 1, "type": "mode.set", "mode": "ludicrous"}, "invalid", "mode"),
    # Issue 12, finding 1: specs that were accepted and left the data directory unstartable.
    (
        "float range overflows",
        create(
            space(
                x={"type": "float", "low": -1.7976931348623157e308, "high": 1.7976931348623157e308}
            )
        ),
        "invalid",
        "study.space.x",
    ),
    ("float step 5e-324", create(space(x={**F, "step": 5e-324})), "invalid", "study.space.x.step"),
    (
        "int bound 10**400",
        create(space(n={"type": "int", "low": 0, "high": 10**400})),
        "invalid",
        "study.space.n.high",
    ),
    (
        "seed -1",
        create(spec(sampler={"name": "random", "seed": -1})),
        "invalid",
        "study.sampler.seed",
    ),
    (
        "seed 2**32",
        create(spec(sampler={"name": "random", "seed": 4294967296})),
        "invalid",
        "study.sampler.seed",
    ),
    # Issue 12, finding 2: poison messages that were requeued forever.
    ("array nested 1,000 deep", b"[" * 1000 + b"]" * 1000, "not_json", ""),
    (
        "enqueue 10**400",
        {"v": 1, "type": "trial.enqueue", "study": EXTERNAL, "params": {"x": 10**400}},
        "invalid",
        "params.x",
    ),
    (
        "choice with a lone surrogate",
        create(space(c={"type": "categorical", "choices": ["x\ud800y"]})),
        "invalid",
        "study.space.c.choices.0",
    ),
    # Issue 12, finding 4: booleans taken as numbers, floats as ints, a timeout never honoured.
    (
        "true as version, trial and value",
        b'{"v":true,"type":"trial.tell","study":"a","trial":true,"values":[true]}',
        "invalid",
        "v",
    ),
    ("tell trial true", tell(trial=True, values=[1.0]), "invalid", "trial"),
    ("tell values [true]", tell(trial=1, values=[True]), "invalid", "values.0"),
    (
        "budget trials true",
        {"v": 1, "type": "study.budget", "name": EXTERNAL, "budget": {"trials": True}},
        "invalid",
        "budget.trials",
    ),
    # A budget in compute for a study told from outside, which reports no cost.
    (
        "budget in compute without an objective",
        {"v": 1, "type": "study.budget", "name": EXTERNAL, "budget": {"cpu_seconds": 10}},
        "invalid",
        "budget.cpu_seconds",
    ),
    ("low false", create(space(x={**F, "low": False})), "invalid", "study.space.x.low"),
    ("-0.0 as a trial number", tell(trial=-0.0, values=[1.0]), "invalid", "trial"),
    (
        "1e-400 as a trial number",
        b'{"v":1,"type":"trial.tell","study":"victim","trial":1e-400,"values":[1.0]}',
        "invalid",
        "trial",
    ),
    ("trial_timeout 5e-324", create(spec(trial_timeout=5e-324)), "invalid", "study.trial_timeout"),
]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon on RabbitMQ for the whole table, with an external study to tell against."""
    from conftest import AMQP_URL, require_service

    require_service("RabbitMQ", "127.0.0.1", 5672)
    tmp = tmp_path_factory.mktemp("bad-input")
    env = hpod_env(tmp / "data", broker_url=AMQP_URL, max_message_bytes="65536")
    proc = Daemon(
        [sys.executable, "-m", "hpod", "run", "--no-workers"], env, tmp / "daemon.log"
    ).start()
    victim = quadratic_spec(EXTERNAL, trials=5)
    del victim["objective"]
    assert proc.request("POST", "/studies", victim)[0] == 201
    for _ in range(2):
        assert proc.request("POST", f"/studies/{EXTERNAL}/ask", {})[0] == 200
    yield proc
    proc.stop()


def _as_bytes(message: Any) -> bytes:
    return message if isinstance(message, bytes) else json.dumps(message).encode()


@pytest.mark.broker
@pytest.mark.parametrize(("case", "message", "code", "field"), TABLE, ids=[t[0] for t in TABLE])
def test_bad_request_over_http(
    daemon: Daemon, case: str, message: Any, code: str, field: str
) -> None:
    """Over HTTP, the malformed request gets a 4xx with its specific error code and field."""
    before = daemon.get("/studies")
    status, reply = daemon.request("POST", "/requests", raw=_as_bytes(message))
    assert 400 <= status < 500, reply
    assert (reply["error"]["code"], reply["error"]["field"]) == (code, field), reply
    assert reply["error"]["message"]
    assert daemon.get("/studies") == before
    assert daemon.get("/health")["status"] == "ok"


@pytest.mark.broker
@pytest.mark.parametrize(("case", "message", "code", "field"), TABLE, ids=[t[0] for t in TABLE])
def test_bad_request_over_the_queue(
    daemon: Daemon, case: str, message: Any, code: str, field: str
) -> None:
    """Over AMQP, the reply names the error and field, and a request.rejected event records it."""
    events = Subscriber(daemon.env["HPOD_BROKER_URL"], ("request.rejected",))
    before = daemon.get("/studies")
    reply = publish(daemon.env["HPOD_BROKER_URL"], _as_bytes(message))  # type: ignore[arg-type]
    assert reply is not None and reply["ok"] is False, reply
    assert (reply["error"]["code"], reply["error"]["field"]) == (code, field), reply
    event = events.until(lambda e: e["event"] == "request.rejected")
    assert event["error"] == reply["error"]
    assert event["channel"] == "amqp"
    events.close()
    assert daemon.get("/studies") == before


@pytest.mark.broker
def test_unparseable_messages_are_dead_lettered(daemon: Daemon) -> None:
    """A message that is not JSON is kept on hpod.dead with the reason."""
    import pika

    url = daemon.env["HPOD_BROKER_URL"]
    publish(url, b"\xff\xfe garbage", reply=False)  # type: ignore[arg-type]
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    for _ in range(100):
        method, props, body = channel.basic_get("hpod.dead", auto_ack=True)
        if method is not None and body == b"\xff\xfe garbage":
            assert "not valid JSON" in props.headers["x-hpod-error"]
            break
        connection.process_data_events(time_limit=0.1)
    else:
        raise AssertionError("the message was not dead-lettered")
    connection.close()


@pytest.mark.broker
def test_repeated_tell_is_idempotent_and_the_daemon_still_serves(
    daemon: Daemon, tmp_path: Path
) -> None:
    """After the whole table, a tell is applied once, repeated tells are acknowledged, and the
    external study is exactly as the valid requests left it."""
    first = daemon.request("POST", f"/studies/{EXTERNAL}/tell", {"trial": 0, "values": [0.5]})
    again = daemon.request("POST", f"/studies/{EXTERNAL}/tell", {"trial": 0, "values": [0.7]})
    assert first == (200, first[1]) and first[1]["result"]["already_told"] is False
    assert again[0] == 200 and again[1]["result"]["already_told"] is True
    status = daemon.get(f"/studies/{EXTERNAL}")
    assert status["counts"] == {"complete": 1, "running": 1}
    assert status["best"]["value"] == 0.5


# (method, path, body, status, error code): errors of the HTTP layer itself, all JSON.
HTTP_ERRORS: list[tuple[str, str, bytes | None, int, str]] = [
    ("GET", "/no/such/route", None, 404, "not_found"),
    ("PUT", "/studies", b"{}", 405, "method_not_allowed"),
    ("POST", "/studies", b"[" * 1000 + b"]" * 1000, 400, "not_json"),
    (
        "POST",
        f"/studies/{EXTERNAL}/enqueue",
        b'{"params":{"x":1' + b"0" * 400 + b"}}",
        400,
        "invalid",
    ),
    ("POST", f"/studies/{EXTERNAL}/tell", b'{"trial":true,"values":[true]}', 400, "invalid"),
    ("POST", "/studies", b"[" * 70_000, 413, "too_large"),
    ("GET", "/studies/" + "a" * 20_000, None, 400, "too_large"),  # over aiohttp's max_line_size
]


@pytest.mark.broker
def test_http_errors_are_json(daemon: Daemon) -> None:
    """404, 405, 413, an over-long URL and the issue's bodies on routes with a body: each a
    JSON error with its code, never text/plain, and never a 500."""
    host, port = daemon.url.removeprefix("http://").split(":")
    for method, path, body, status, code in HTTP_ERRORS:
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        headers = {"Authorization": f"Bearer {daemon.token}", "Content-Type": "application/json"}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        raw = response.read()
        conn.close()
        where = f"{method} {path[:40]}: {response.status} {raw[:200]!r}"
        assert response.status == status, where
        assert response.getheader("Content-Type", "").startswith("application/json"), where
        reply = json.loads(raw)
        assert reply["v"] == 1 and reply["ok"] is False, where
        assert reply["error"]["code"] == code and reply["error"]["message"], where
    assert daemon.get("/health")["status"] == "ok"


# (route, body, error code, field): a body on a route that takes none is refused, never
# ignored. The first three are the exact cases #305, #551 and #1497 of fuzz seed 1 over HTTP,
# once answered 200 because these routes did not read their body at all.
BODYLESS: list[tuple[str, bytes, str, str]] = [
    ("pause", b"\xff\xfe{\x00}\x00", "not_json", ""),
    ("stop", b"\xef\xbb\xbf{}", "not_json", ""),
    ("ask", b"\xff\xfe{\x00}\x00", "not_json", ""),
    ("resume", b'{"budget":{"trials":5}}', "invalid", "budget"),
]


@pytest.mark.broker
def test_a_body_on_a_route_without_one_is_refused(daemon: Daemon) -> None:
    """/stop, /pause, /resume, /ask and /policy/reset refuse a body other than none or {}
    (a UTF-16 or BOM body, or fields they do not have) and change nothing; none and {} work."""
    before = daemon.get(f"/studies/{EXTERNAL}")
    for route, body, code, field in BODYLESS:
        status, reply = daemon.request("POST", f"/studies/{EXTERNAL}/{route}", raw=body)
        assert (status, reply["error"]["code"], reply["error"]["field"]) == (400, code, field), (
            route,
            reply,
        )
    status, reply = daemon.request("POST", "/policy/reset", raw=b'{"x":1}')
    assert (status, reply["error"]["code"]) == (400, "invalid"), reply
    after = daemon.get(f"/studies/{EXTERNAL}")
    assert (after["state"], after["counts"]) == (before["state"], before["counts"])
    for body in (b"", b"{}"):
        assert daemon.request("POST", f"/studies/{EXTERNAL}/pause", raw=body)[0] == 200
        assert daemon.request("POST", f"/studies/{EXTERNAL}/resume", raw=body)[0] == 200


@pytest.mark.broker
def test_the_daemon_restarts_after_every_bad_request(daemon: Daemon) -> None:
    """After the whole table on both channels, the daemon stops, starts again on the same
    data directory, and serves: nothing bad was stored or left on the queue."""
    assert "Traceback" not in daemon.log() and "internal_error" not in daemon.log()
    daemon.stop()
    daemon.start()
    assert daemon.get("/health")["status"] == "ok"
    assert daemon.get(f"/studies/{EXTERNAL}")["state"] == "running"
    names = {s["name"] for s in daemon.get("/studies")["studies"]}
    assert names == {EXTERNAL}
    reply = publish(daemon.env["HPOD_BROKER_URL"], {"v": 1, "type": "trial.ask", "study": EXTERNAL})
    assert reply is not None and reply["ok"] is True, reply
