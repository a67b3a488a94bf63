"""The fuzz campaign of issue 12, short: seeded mutations of every request over AMQP and HTTP.

One daemon on RabbitMQ takes the exact bodies of the issue's findings 1, 2 and 4, then a few
hundred seeded mutations of every request type on each channel (`mutations.py`). Every AMQP
message must be answered or dead-lettered with a reason within a timeout; every HTTP response
must be JSON, never a 5xx, with an error code when it is an error (404, 405 and over-long URLs
included). Afterwards the daemon answers a valid request, `/health` is 200, every study it
lists reads back, nothing is left on `hpod.requests` to be retried forever, and it restarts on
the same data directory and becomes healthy. The long run is `bench/fuzz.py`.

Set HPOD_FUZZ_SEED to replay another seed; a failure lists each failing input and outcome.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import psutil
import pytest
from campaign import (
    Tally,
    fuzz_amqp,
    fuzz_http,
    http_call,
    queue_depth,
    refusal_problem,
    request_over_amqp,
)
from conftest import AMQP_URL, Daemon, hpod_env, require_service
from mutations import (
    FINDINGS,
    Case,
    HttpCase,
    amqp_cases,
    http_cases,
    http_finding_cases,
    http_odd_cases,
    setup_requests,
)

pytestmark = pytest.mark.broker

SEED = int(os.environ.get("HPOD_FUZZ_SEED", "12"))
AMQP_CASES = 250
HTTP_CASES = 150


def _purge(url: str) -> None:
    """Empty hpod's queues of earlier tests' messages (as the `rabbitmq` fixture does)."""
    from kombu import Connection

    from hpod.messaging import DEAD_LETTERS, REQUESTS, RESULTS, TRIALS, queue

    with Connection(url) as conn:
        channel = conn.channel()
        for name in (REQUESTS, RESULTS, TRIALS, DEAD_LETTERS):
            q = queue(name)(channel)
            q.declare()
            q.purge()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon (no workers, default limits) with the studies the seeds refer to."""
    require_service("RabbitMQ", "127.0.0.1", 5672)
    _purge(AMQP_URL)
    tmp = tmp_path_factory.mktemp("fuzz")
    # No workers: trials of seeds with an objective stay in flight, so a short drain.
    env = hpod_env(tmp / "data", broker_url=AMQP_URL, drain_timeout="5")
    proc = Daemon(
        [sys.executable, "-m", "hpod", "run", "--no-workers"], env, tmp / "daemon.log"
    ).start()
    for request in setup_requests():
        status, reply = proc.request("POST", "/requests", request)
        assert status < 300 and reply["ok"], (request, reply)
    yield proc
    proc.stop()


def _report(tally: Tally) -> str:
    failures = tally.failures()
    shown = "\n".join(failures[:60])
    more = f"\n... and {len(failures) - 60} more" if len(failures) > 60 else ""
    return f"{tally.summary()}\n{shown}{more}"


def _assert_clean(tally: Tally) -> None:
    assert not tally.failures(), _report(tally)


def test_findings_are_refused_over_http(daemon: Daemon) -> None:
    """The issue's exact bodies, as envelopes on /requests and as specs on /studies: each is
    refused with `invalid` naming its field (never a 500, never accepted)."""
    problems = []
    expected = {name: field for name, _body, field in FINDINGS}
    for case in http_finding_cases():
        finding = case.name.rsplit(" (", 1)[0]
        field = expected[finding]  # POST /studies names fields as in the envelope: study.…
        try:
            status, ctype, body = http_call(daemon.url, daemon.token, case)
        except OSError as exc:
            problems.append(f"{case.name}: no response {exc!r}")
            continue
        reply = body if status < 500 and ctype.startswith("application/json") else None
        problem = (
            refusal_problem(reply, None, field) if reply else f"{status} {ctype} {body[:200]!r}"
        )
        if problem:
            problems.append(f"{case.name}: {problem}")
    assert not problems, "\n".join(problems)


def test_http_fuzz(daemon: Daemon) -> None:
    """Seeded mutations on every HTTP route with a body, odd names in paths, and the HTTP
    layer's own errors: 0 unanswered, 0 5xx, 0 non-JSON errors."""
    cases = [*http_cases(SEED, HTTP_CASES), *http_odd_cases()]
    tally = fuzz_http(daemon.url, daemon.token, cases)
    print(tally.summary())
    _assert_clean(tally)


def test_findings_are_refused_over_amqp(daemon: Daemon) -> None:
    """The issue's exact bodies on hpod.requests: each is refused with `invalid` naming its
    field, or dead-lettered with a reason; none is retried forever or accepted."""
    cases = [Case(name, body) for name, body, _field in FINDINGS]
    _tally, outcomes = fuzz_amqp(AMQP_URL, cases, timeout=20.0, give_up_after=len(cases))
    fields = {name: field for name, _body, field in FINDINGS}
    problems = [
        f"{o.case.name}: {problem} | body {o.case.body[:120]!r}"
        for o in outcomes
        if (problem := refusal_problem(o.reply, o.dead_reason, fields[o.case.name]))
    ]
    assert not problems, "\n".join(problems)


def test_amqp_fuzz(daemon: Daemon) -> None:
    """A few hundred seeded mutations of every request type on hpod.requests: every one is
    answered (a reply following the protocol) or dead-lettered with a reason."""
    tally, _ = fuzz_amqp(AMQP_URL, amqp_cases(SEED, AMQP_CASES), timeout=15.0)
    print(tally.summary())
    _assert_clean(tally)


def _valid_create(name: str) -> dict[str, Any]:
    return {
        "v": 1,
        "type": "study.create",
        "id": f"after-{name}",
        "study": {
            "name": name,
            "space": {"x": {"type": "float", "low": 0.0, "high": 1.0}},
            "budget": {"trials": 3},
            "mode": "balanced",
        },
    }


def test_daemon_serves_and_restarts_after_the_campaign(daemon: Daemon) -> None:
    """After the campaign: a valid request is answered, /health is 200, every listed study
    reads back as JSON, a SIGTERM stops it cleanly, nothing waits on hpod.requests, and a
    restart on the same data directory comes up healthy with the studies intact. Every check
    runs; the failure lists all that went wrong."""
    problems: list[str] = []
    reply = request_over_amqp(AMQP_URL, _valid_create("after-fuzz"), timeout=30.0)
    if reply is None or not json.loads(reply)["ok"]:
        problems.append(f"a valid study.create after the campaign: reply {reply!r}")
    status, health = daemon.request("GET", "/health", token=None)
    if status != 200 or health.get("status") != "ok":
        problems.append(f"/health after the campaign: {status} {health}")
    assert daemon.proc is not None
    rss = psutil.Process(daemon.proc.pid).memory_info().rss >> 20
    print(f"daemon RSS after the campaign: {rss} MiB")
    for study in daemon.get("/studies")["studies"]:
        code, body = _get_any(daemon, f"/studies/{study['name']}")
        if code != 200:
            problems.append(f"GET /studies/{study['name']}: {code} {body[:200]!r}")
    daemon.stop()
    if daemon.proc.returncode != 0:
        problems.append(f"SIGTERM: exit code {daemon.proc.returncode} (60 s allowed)")
    if (depth := queue_depth(AMQP_URL)) != 0:
        problems.append(f"{depth} messages left on hpod.requests, to be retried at the next start")
    try:
        daemon.start()
    except RuntimeError as exc:
        problems.append(f"restart on the same data dir failed: {str(exc)[-1500:]}")
    else:
        if daemon.get("/health")["status"] != "ok":
            problems.append("not healthy after the restart")
        code, body = _get_any(daemon, "/studies/after-fuzz")
        if reply is not None and code != 200:
            problems.append(f"after the restart, GET /studies/after-fuzz: {code} {body[:200]!r}")
    assert not problems, "\n".join(problems)


def _get_any(daemon: Daemon, path: str) -> tuple[int, bytes]:
    """GET that returns any status and the raw body (a 500 text/plain included)."""
    try:
        status, _ctype, body = http_call(
            daemon.url, daemon.token, HttpCase("get", "GET", quote(path))
        )
    except OSError as exc:
        return 0, repr(exc).encode()
    return status, body


def test_the_same_seed_gives_the_same_cases() -> None:
    """The campaign is replayable: the same seed gives byte-identical cases."""
    assert list(amqp_cases(SEED, 50)) == list(amqp_cases(SEED, 50))
    assert list(http_cases(SEED, 50)) == list(http_cases(SEED, 50))
    assert list(amqp_cases(SEED, 50)) != list(amqp_cases(SEED + 1, 50))
