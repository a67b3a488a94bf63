"""docs/protocol.md cannot drift from the code (issue 17, item 1).

Its JSON examples are checked against the wire schema: every example request parses with
`parse_request` (an intentionally bad one is marked ``<!-- bad example: CODE -->`` on the line
before its block, and must be refused with that code), every example reply is well formed.
Its error-code tables are checked against a running daemon: each code is provoked and must be
answered with the documented HTTP status, and every code the daemon can answer is in a table.
Its route table is the daemon's OpenAPI document, and its curl examples are sent to the daemon.
The review's claims that a running daemon can hold are tested here too: `trial.ask` on a paused
study, events after a loop ended, SIGHUP reloading `objectives`, `draining` being a 503.

One daemon serves the module (embedded broker, no workers, so that trials stay in flight); it
runs with the `cmaes` package hidden, to provoke `unavailable`.
"""

from __future__ import annotations

import ast
import http.client
import json
import re
import shlex
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Daemon, eventually, hpod_env, quadratic_spec, watch
from pydantic_core import to_jsonable_python

from hpod.daemon.http import CODE_BY_STATUS, STATUS_BY_CODE
from hpod.daemon.told import TRIAL_EVENTS
from hpod.errors import RequestRejected
from hpod.schema import BODIES, StudySpec, json_schema, parse_request

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "protocol.md").read_text()
MAX_BYTES = 65536
STREAMS = 2


# --- reading the document -----------------------------------------------------------------


def _json_blocks() -> list[tuple[int, str | None, Any]]:
    """Every ```json block of the document: (line, bad-example code if marked, value)."""
    blocks = []
    for match in re.finditer(r"(?:<!-- bad example: (\w+) -->\n)?```json\n(.*?)```", DOC, re.S):
        line = DOC[: match.start(2)].count("\n")
        blocks.append((line, match[1], json.loads(match[2])))
    return blocks


def _table(first: str, second: str) -> list[tuple[str, int]]:
    """(code, HTTP status) of each row of the table whose header starts ``| first | second |``
    (the columns in either order; a cell may name several codes; a status that is no number,
    such as "(AMQP only)", is 0)."""
    start = DOC.index(f"| {first} | {second} |")
    rows = []
    for line in DOC[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        codes_cell, status_cell = (cells[0], cells[1]) if first == "code" else (cells[1], cells[0])
        status = int(status_cell) if status_cell.isdigit() else 0
        rows += [(code, status) for code in re.findall(r"`(\w+)`", codes_cell)]
    return rows


#: The table of request error codes (code | HTTP status), then that of the HTTP layer.
CODE_TABLE = _table("code", "HTTP status")
HTTP_TABLE = _table("status", "`error.code`")
ROWS = sorted(set(CODE_TABLE + HTTP_TABLE))
#: No input causes it (a route that raises does: tests/unit/test_edge_http.py).
NOT_PROVOKED = {("internal", 500)}
#: The rows a request over HTTP can provoke (not those without an HTTP status, nor
#: `draining`, which stops the daemon and is tested last).
LIVE_ROWS = [r for r in ROWS if r not in NOT_PROVOKED and r[1] and r[0] != "draining"]


def _requests(block: Any) -> list[Any]:
    """The requests an example block holds: itself if it is a request envelope, as
    ``study.create`` if it is a bare study spec (the body of ``POST /studies``)."""
    if isinstance(block, dict) and "type" in block and "ok" not in block:
        return [block]
    if isinstance(block, dict) and {"name", "space", "budget"} <= set(block):
        return [{"v": 1, "type": "study.create", "study": block}]
    return []


# --- checks of the document alone ---------------------------------------------------------


def test_every_example_request_parses() -> None:
    """Each example request is valid (or marked bad and refused with its code)."""
    checked = 0
    for line, bad, block in _json_blocks():
        for request in _requests(block):
            checked += 1
            if bad is None:
                parse_request(request)  # raises RequestRejected naming the field
                continue
            with pytest.raises(RequestRejected) as refused:
                parse_request(request)
            assert refused.value.code == bad, f"docs/protocol.md:{line}"
    assert checked >= len(BODIES)  # every request type has its example


def test_every_request_type_has_an_example() -> None:
    """Each type of the schema is shown at least once."""
    shown = {r["type"] for _, _, block in _json_blocks() for r in _requests(block)}
    assert shown == set(BODIES)


def test_every_example_reply_is_well_formed() -> None:
    """Replies carry v, ok and id; a success names its type, a failure a documented code."""
    documented = {code for code, _ in ROWS}
    for line, _, block in _json_blocks():
        if not (isinstance(block, dict) and "ok" in block):
            continue
        where = f"docs/protocol.md:{line}"
        assert block["v"] == 1 and "id" in block, where
        if block["ok"]:
            assert block["type"] in BODIES and "result" in block, where
        else:
            assert set(block["error"]) == {"code", "field", "message"}, where
            assert block["error"]["code"] in documented, where


def _codes_in_code() -> set[str]:
    """Every error code the daemon can answer: each ``RequestRejected("code", …)`` and
    ``{"code": "…"}`` in hpod/, and the HTTP layer's (`CODE_BY_STATUS`, and its fallbacks
    for other statuses)."""
    codes = set(CODE_BY_STATUS.values()) | {"internal", "invalid"}
    for path in (ROOT / "hpod").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            codes |= _codes_named(node)
    return codes


def _codes_named(node: ast.AST) -> set[str]:
    """The error code `node` names as a constant: ``RequestRejected("code", …)`` or a dict
    literal's ``"code": "…"``."""
    if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "RequestRejected":
        first = node.args[0] if node.args else None
        return {str(first.value)} if isinstance(first, ast.Constant) else set()
    if isinstance(node, ast.Dict):
        pairs = zip(node.keys, node.values, strict=True)
        return {
            str(value.value)
            for key, value in pairs
            if isinstance(key, ast.Constant) and key.value == "code"
            if isinstance(value, ast.Constant)
        }
    return set()


def test_every_error_code_is_in_a_table() -> None:
    """No code the daemon answers is missing from the tables (`paused` was), and no code in
    them is one it never answers."""
    assert {code for code, _ in ROWS} == _codes_in_code()


def test_the_code_table_agrees_with_status_by_code() -> None:
    """The request codes' statuses are the ones `hpod.daemon.http` maps them to."""
    for code, status in CODE_TABLE:
        if status and code != "unauthorized":  # the token check answers 401 itself
            assert STATUS_BY_CODE.get(code, 400) == status, code


def test_study_spec_table_matches_the_model() -> None:
    """The spec's field table lists every field of `StudySpec`, and the defaults it gives as
    JSON are the model's (the review found the JSON Schema's `mode` default misstated)."""
    start = DOC.index("| field of `study` | type | default | meaning |")
    rows = {}
    for line in DOC[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0].strip("`")] = cells[2]
    fields = StudySpec.model_fields
    assert set(rows) == set(fields)
    schema = json_schema()["$defs"]["StudySpec"]["properties"]
    for name, default in rows.items():
        field = fields[name]
        value = None if field.is_required() else field.get_default(call_default_factory=True)
        if default == "required":
            assert field.is_required(), name
        elif default == "none":
            assert value is None, name
        elif literal := re.match(r"`([^`]*)`(?::|$)", default):
            assert json.loads(literal[1]) == to_jsonable_python(value), name
        if shown := re.search(r"JSON Schema shows `([^`]*)`", default):
            assert json.loads(shown[1]) == schema[name].get("default"), name


def _events_in_code() -> set[str]:
    """Every event the daemon publishes: ``….event("name", …)`` calls and `TRIAL_EVENTS`."""
    events = set(TRIAL_EVENTS.values())
    for path in (ROOT / "hpod").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "attr", None) == "event"
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                events.add(str(node.args[0].value))
    return events


def test_every_event_has_its_section() -> None:
    """Each event the daemon publishes has a heading under Events, and each example event is
    one of them, with the common fields."""
    section = DOC[DOC.index("\n## Events\n") :]
    section = section[: section.index("\n## ", 1)]
    name = r"[a-z]+\.[a-z_]+"
    headings = re.findall(rf"^### ({name}(?:, {name})*)$", section, re.M)  # event names only
    headed = {event for heading in headings for event in heading.split(", ")}
    assert headed == _events_in_code()
    for line, _, block in _json_blocks():
        if isinstance(block, dict) and "event" in block:
            assert block["event"] in headed, f"docs/protocol.md:{line}"
            assert {"v", "event", "study", "time"} <= set(block), f"docs/protocol.md:{line}"


# --- the daemon ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """`hpod run --no-workers` on the embedded broker, without the `cmaes` package."""
    tmp = tmp_path_factory.mktemp("protocol-doc")
    hidden = tmp / "hide-cmaes" / "cmaes"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('cmaes is hidden for this test')\n")
    env = hpod_env(
        tmp / "data",
        max_message_bytes=str(MAX_BYTES),
        max_event_streams=str(STREAMS),
        drain_timeout="5",
    )
    env["PYTHONPATH"] = ":".join([str(hidden.parent), *filter(None, [env.get("PYTHONPATH")])])
    proc = Daemon(
        [sys.executable, "-m", "hpod", "run", "--no-workers"], env, tmp / "daemon.log"
    ).start()
    yield proc
    proc.stop()


def _external(daemon: Daemon, name: str, trials: int = 5) -> str:
    """Create a study evaluated only through ask/tell; returns its name."""
    spec = quadratic_spec(name, trials=trials)
    del spec["objective"]
    status, reply = daemon.request("POST", "/studies", spec)
    assert status == 201, reply
    return name


def _post(daemon: Daemon, path: str, body: Any = None, **kwargs: Any) -> tuple[int, Any]:
    return daemon.request("POST", path, body if body is not None else {}, **kwargs)


def _raw_http(daemon: Daemon, data: bytes) -> tuple[int, Any]:
    """Send bytes aiohttp's parser refuses; the status and JSON of its answer."""
    host, port = daemon.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(data)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def _stream(daemon: Daemon, query: str = "") -> tuple[http.client.HTTPConnection, Any]:
    """Open ``GET /events``; the connection and its response (headers read)."""
    host, port = daemon.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("GET", "/events" + query)
    return conn, conn.getresponse()


def _busy(daemon: Daemon) -> tuple[int, Any]:
    """Open event streams until one is refused."""
    opened = []
    try:
        for _ in range(STREAMS + 1):
            conn, response = _stream(daemon)
            opened.append(conn)
            if response.status != 200:
                return response.status, json.loads(response.read())
            assert response.readline().startswith(b"retry:")
        raise AssertionError(f"{STREAMS + 1} event streams open, none refused")
    finally:
        for conn in opened:
            conn.close()


def _too_many_studies(daemon: Daemon) -> tuple[int, Any]:
    """A daemon of its own whose storage may hold one study: the second is refused."""
    tmp = Path(daemon.log_path).parent / "max-studies"
    env = hpod_env(tmp / "data", max_studies="1")
    small = Daemon([sys.executable, "-m", "hpod", "run", "--no-workers"], env, tmp / "d.log")
    tmp.mkdir(exist_ok=True)
    small.start()
    try:
        _external(small, "doc-first")
        spec = quadratic_spec("doc-second", trials=5)
        del spec["objective"]
        return small.request("POST", "/studies", spec)
    finally:
        small.stop()


def _conflict(daemon: Daemon) -> tuple[int, Any]:
    name = _external(daemon, "doc-conflict")
    spec = quadratic_spec(name, trials=6)
    del spec["objective"]
    return daemon.request("POST", "/studies", spec)


def _not_running(daemon: Daemon) -> tuple[int, Any]:
    name = _external(daemon, "doc-stopped")
    assert _post(daemon, f"/studies/{name}/stop")[0] == 200
    eventually(lambda: not daemon.get(f"/studies/{name}")["running"])
    return _post(daemon, f"/studies/{name}/pause")


def _budget_exhausted(daemon: Daemon) -> tuple[int, Any]:
    name = _external(daemon, "doc-spent", trials=1)
    assert _post(daemon, f"/studies/{name}/ask", headers={"Idempotency-Key": "a1"})[0] == 200
    return _post(daemon, f"/studies/{name}/ask", headers={"Idempotency-Key": "a2"})


def _paused(daemon: Daemon) -> tuple[int, Any]:
    """The review's claim: a paused study does not hand out trials (the doc said it did)."""
    name = _external(daemon, "doc-paused")
    assert _post(daemon, f"/studies/{name}/pause")[0] == 200
    return _post(daemon, f"/studies/{name}/ask")


def _unknown_objective(daemon: Daemon) -> tuple[int, Any]:
    return daemon.request("POST", "/studies", quadratic_spec("doc-x", objective="doc_probe"))


def _unavailable(daemon: Daemon) -> tuple[int, Any]:
    spec = quadratic_spec("doc-cmaes", sampler={"name": "cmaes"})
    return daemon.request("POST", "/studies", spec)


def _huge_integer(daemon: Daemon) -> tuple[int, Any]:
    return _post(daemon, "/mode", raw=b'{"mode": ' + b"9" * 4301 + b"}")


Provoke = Callable[[Daemon], tuple[int, Any]]

#: How to make the daemon answer each code (several ways where the tables give several
#: statuses); the answer's status must be the documented one.
PROVOKE: dict[str, list[Provoke]] = {
    "invalid": [
        lambda d: _post(d, "/requests", {"v": 1, "type": "study.stop"}),
        lambda d: _raw_http(d, b"GARBAGE / HTTP/1.1\r\nHost: x\r\n\r\n"),
        _huge_integer,
    ],
    "not_json": [
        lambda d: _post(d, "/requests", raw=b"{not json"),
        lambda d: _post(d, "/studies/doc-x/tell", raw=b"{not json"),
    ],
    "too_large": [
        lambda d: _post(d, "/requests", raw=b" " * (MAX_BYTES + 1)),
        lambda d: _raw_http(d, b"GET /health HTTP/1.1\r\nX-Long: " + b"a" * 9000 + b"\r\n\r\n"),
    ],
    "unsupported_version": [lambda d: _post(d, "/requests", {"v": 2, "type": "study.stop"})],
    "unknown_type": [lambda d: _post(d, "/requests", {"v": 1, "type": "study.delete"})],
    "unknown_objective": [_unknown_objective],
    "conflict": [_conflict],
    "not_found": [
        lambda d: _post(d, "/studies/doc-nope/stop"),
        lambda d: d.request("GET", "/no-such-route", token=None),
    ],
    "not_running": [_not_running],
    "budget_exhausted": [_budget_exhausted],
    "paused": [_paused],
    "unavailable": [_unavailable],
    "unauthorized": [lambda d: _post(d, "/mode", {"mode": "fast"}, token="wrong-token")],
    "method_not_allowed": [lambda d: d.request("PUT", "/health", token=None)],
    "busy": [_busy],
    "too_many_studies": [_too_many_studies],
}


@pytest.mark.parametrize(("code", "status"), LIVE_ROWS, ids=[f"{c}-{s}" for c, s in LIVE_ROWS])
def test_each_documented_code_is_answered_with_its_status(
    daemon: Daemon, code: str, status: int
) -> None:
    """The daemon answers the code with the status the tables give, and with no other."""
    assert code in PROVOKE, f"{code} is documented but this test cannot provoke it"
    documented = {s for c, s in ROWS if c == code}
    answers = []
    for provoke in PROVOKE[code]:
        got, reply = provoke(daemon)
        assert reply["ok"] is False and reply["error"]["code"] == code, (code, got, reply)
        answers.append(got)
    assert status in answers, f"docs say {code} is {status}; the daemon answered {answers}"
    assert set(answers) <= documented, f"{code}: the daemon answered {answers}, docs {documented}"


def test_http_route_table_is_the_served_openapi(daemon: Daemon) -> None:
    """The doc's route table lists exactly the routes of the daemon's OpenAPI document, and
    says which need the token as the document does."""
    start = DOC.index("| method | path | token |")
    table = {}
    for line in DOC[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        method, paths, token = [c.strip() for c in line.strip("|").split("|")][:3]
        table |= {(method, path): token == "yes" for path in re.findall(r"`(/[^`]*)`", paths)}
    served = daemon.get("/openapi.json")["paths"]
    assert table == {
        (method.upper(), path): "security" in op
        for path, ops in served.items()
        for method, op in ops.items()
    }


def test_curl_examples_are_understood(daemon: Daemon) -> None:
    """Each curl example with a body reaches the handler with a valid request: the daemon
    refuses it only because its study does not exist here."""
    sent = 0
    for command in re.findall(r"^curl .*$", DOC, re.M):
        words = shlex.split(command.replace("$H", "H"))
        if "-d" not in words:
            continue
        body = json.loads(words[words.index("-d") + 1])
        path = "/" + words[-1].split("/", 1)[1]
        status, reply = _post(daemon, path, raw=json.dumps(body).encode())
        assert status in (200, 404), (command, reply)
        assert reply["ok"] or reply["error"]["code"] == "not_found", (command, reply)
        sent += 1
    assert sent >= 5


def test_events_after_the_loop_ended_are_published(daemon: Daemon) -> None:
    """A trial asked before `study.stop` and told after its loop ended is recorded and its
    `trial.completed` event published (the doc said none was)."""
    name = _external(daemon, "doc-late-tell")
    _, asked = _post(daemon, f"/studies/{name}/ask")
    assert _post(daemon, f"/studies/{name}/stop")[0] == 200
    eventually(lambda: not daemon.get(f"/studies/{name}")["running"])
    events = watch(daemon, name, until="trial.completed")
    body = {"trial": asked["result"]["trial"], "values": [0.5]}
    assert _post(daemon, f"/studies/{name}/tell", body)[0] == 200
    event = events.first("trial.completed")
    assert event["trial"] == body["trial"] and event["values"] == [0.5]


def test_sighup_reloads_objectives(daemon: Daemon) -> None:
    """An objective added to the settings file is known after SIGHUP, without a restart."""
    assert _unknown_objective(daemon)[1]["error"]["code"] == "unknown_objective"
    config = Path(daemon.env["HPOD_CONFIG"])
    config.write_text('[objectives]\ndoc_probe = "hpod.workers.objectives.analytic:quadratic"\n')
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)

    def reloaded() -> tuple[int, Any] | None:
        answer = _unknown_objective(daemon)
        unknown = answer[0] != 201 and answer[1]["error"]["code"] == "unknown_objective"
        return None if unknown else answer

    answer = eventually(reloaded, interval=0.2)
    assert answer[0] == 201, answer


def test_a_non_json_http_body_is_not_dead_lettered(daemon: Daemon) -> None:
    """Only queue messages are dead-lettered: a non-JSON body sent over HTTP, to
    `POST /requests` too, is answered `not_json` and kept nowhere (the doc said otherwise).
    The embedded broker keeps each message as ``<time>_<id>.<queue>.msg``; the reply comes
    after any dead letter would have been written."""
    for path in ("/requests", "/studies/doc-x/tell"):
        status, reply = _post(daemon, path, raw=b"{not json, dead-letter probe")
        assert (status, reply["error"]["code"]) == (400, "not_json")
    messages = Path(daemon.env["HPOD_DATA_DIR"]) / "broker" / "messages"
    queues = {name.name.split(".", 1)[1] for name in messages.iterdir()}
    assert not [queue for queue in queues if "dead" in queue], queues


def test_draining_is_answered_with_its_status(daemon: Daemon) -> None:
    """Runs last (it stops the daemon): while SIGTERM drains a trial in flight, a request is
    refused with `draining` and the status the code table gives."""
    (documented,) = {s for c, s in ROWS if c == "draining"}
    spec = quadratic_spec("doc-drain", trials=2)
    assert daemon.request("POST", "/studies", spec)[0] == 201
    eventually(lambda: daemon.get("/health")["in_flight"])
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGTERM)

    def refused() -> tuple[int, Any] | None:
        answer = _post(daemon, "/studies/doc-drain/pause")
        return None if answer[0] == 200 else answer

    answer = eventually(refused, interval=0.05)
    assert answer[1]["error"]["code"] == "draining", answer
    assert answer[0] == documented
    daemon.proc.wait(timeout=60)
