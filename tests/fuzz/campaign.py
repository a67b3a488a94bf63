"""Send fuzzed requests to a running daemon and count what went wrong (issue 12's campaign).

Used by `tests/fuzz/test_fuzz.py` (a few hundred cases) and `bench/fuzz.py` (the long run).
Over AMQP every message is published with `reply_to` and `correlation_id`; it counts as settled
when a reply comes back or when it shows up on the dead-letter queue with a reason, within a
timeout (`amqp_settled` is the one place that decides). Over HTTP every response must be JSON
with an error code when it is an error, and never a 5xx (`http_problem` decides).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pika
from mutations import Case, HttpCase

from hpod.messaging import DEAD_LETTER_ARGUMENTS, DEAD_LETTERS, REQUESTS, retry_queue_name


@dataclass
class Tally:
    """What a run saw: counts, and every failing case with its input and what happened."""

    sent: int = 0
    replied: int = 0
    dead_lettered: int = 0
    accepted: int = 0
    codes: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    unanswered: list[str] = field(default_factory=list)
    server_errors: list[str] = field(default_factory=list)
    non_json: list[str] = field(default_factory=list)
    malformed: list[str] = field(default_factory=list)
    accepted_bad: list[str] = field(default_factory=list)

    def failures(self) -> list[str]:
        """Every failing case, one line each."""
        return [  # the rarer kinds first: a wedged intake leaves many unanswered behind it
            *(f"5xx: {c}" for c in self.server_errors),
            *(f"non-JSON: {c}" for c in self.non_json),
            *(f"malformed reply: {c}" for c in self.malformed),
            *(f"accepted, must be refused: {c}" for c in self.accepted_bad),
            *(f"unanswered: {c}" for c in self.unanswered),
        ]

    def summary(self) -> str:
        """One line of counts."""
        return (
            f"sent {self.sent}, replied {self.replied}, dead-lettered {self.dead_lettered}, "
            f"accepted {self.accepted}, unanswered {len(self.unanswered)}, "
            f"5xx {len(self.server_errors)}, non-JSON {len(self.non_json)}, "
            f"malformed {len(self.malformed)}, accepted though they must be refused "
            f"{len(self.accepted_bad)}; codes {dict(self.codes.most_common())}"
        )


def excerpt(body: bytes | None, limit: int = 160) -> str:
    """The start of a body, readable, with its full length."""
    if body is None:
        return "<no body>"
    text = repr(body[:limit])
    return text if len(body) <= limit else f"{text}... ({len(body)} bytes)"


# ---------------------------------------------------------------------------------------------
# The expectations: one function each, so they are easy to adjust.


def reply_problem(body: bytes) -> str | None:
    """What is wrong with a reply (None when it follows the protocol: v 1, ok, and an error
    with a code and a field when ok is false)."""
    try:
        reply = json.loads(body)
    except (ValueError, RecursionError) as exc:
        return f"reply is not JSON ({exc}): {excerpt(body)}"
    if not isinstance(reply, dict) or reply.get("v") != 1 or not isinstance(reply.get("ok"), bool):
        return f"reply without v 1 and ok: {excerpt(body)}"
    if reply["ok"]:
        return None
    error = reply.get("error")
    if not isinstance(error, dict) or not isinstance(error.get("code"), str) or not error["code"]:
        return f"error reply without a code: {excerpt(body)}"
    if not isinstance(error.get("field"), str):
        return f"error reply without a field: {excerpt(body)}"
    return None


def dead_letter_reason(headers: dict[str, Any] | None) -> str | None:
    """The reason a dead letter carries: hpod's `x-hpod-error` header, or RabbitMQ's own
    (`x-first-death-reason`, `x-death`) when the broker dead-letters it (delivery limit)."""
    headers = headers or {}
    for key in ("x-hpod-error", "x-hpod-reason", "x-first-death-reason"):
        value = headers.get(key)
        if value:
            return value.decode() if isinstance(value, bytes) else str(value)
    if headers.get("x-death"):
        return str(headers["x-death"])
    return None


def amqp_settled(reply: bytes | None, dead_reason: str | None) -> bool:
    """A message is settled when it got a reply OR was dead-lettered with a reason. (Whether
    a poison message is answered or dead-lettered is the intake's choice; both are fine.)"""
    return reply is not None or bool(dead_reason)


def refusal_problem(reply: bytes | None, dead_reason: str | None, field: str | None) -> str | None:
    """For a body that must be refused (the issue's findings): an `invalid` (or `too_large`,
    `not_json`) reply naming `field` or a part of it (`study.space.x.step` for
    `study.space.x`) when a field is given, or a dead letter with a reason."""
    if reply is None:
        return None if dead_reason else "no reply and no dead letter"
    try:
        data = json.loads(reply)
    except ValueError:
        return f"reply is not JSON: {excerpt(reply)}"
    if data.get("ok") is not False:
        return f"accepted: {excerpt(reply, 300)}"
    error = data.get("error") or {}
    if error.get("code") not in {"invalid", "too_large", "not_json"}:
        return f"refused with code {error.get('code')!r}, not invalid: {error}"
    named = str(error.get("field"))
    if field is not None and named != field and not named.startswith(field + "."):
        return f"refused naming field {named!r}, not {field!r} (or a part of it): {error}"
    return None


def http_problem(status: int, content_type: str, body: bytes) -> str | None:
    """What is wrong with an HTTP response (None when fine): a 5xx, a body that is not JSON
    or not declared `application/json`, an error without `error.code`."""
    if status >= 500:
        return f"{status}"
    if not content_type.startswith("application/json"):
        return f"{status} {content_type or 'no content type'}"
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return f"{status} body is not JSON"
    if status >= 400:
        error = data.get("error") if isinstance(data, dict) else None
        if not isinstance(error, dict) or not isinstance(error.get("code"), str):
            return f"{status} error without error.code"
    return None


# ---------------------------------------------------------------------------------------------
# AMQP.


@dataclass
class Outcome:
    """What came back for one published message."""

    case: Case
    sent_at: float
    reply: bytes | None = None
    dead_reason: str | None = None


class AmqpFuzzer:
    """Publishes cases on hpod.requests and collects replies and dead letters."""

    def __init__(self, url: str) -> None:
        self.connection = pika.BlockingConnection(pika.URLParameters(url))
        self.channel = self.connection.channel()
        self.reply_queue = self.channel.queue_declare("", exclusive=True).method.queue
        self.channel.basic_consume(self.reply_queue, self._on_reply, auto_ack=True)
        self.pending: dict[str, Outcome] = {}
        self.done: list[Outcome] = []
        self.stray_dead_letters = 0
        self._watch_dead_letters(url)

    def _watch_dead_letters(self, url: str) -> None:
        probe = self.connection.channel()
        try:
            probe.queue_declare(DEAD_LETTERS, passive=True)
        except pika.exceptions.ChannelClosedByBroker:
            # Not declared yet: declare it as hpod does (durable, bounded).
            self.channel.queue_declare(DEAD_LETTERS, durable=True, arguments=DEAD_LETTER_ARGUMENTS)
        else:
            probe.close()
        self.channel.basic_consume(DEAD_LETTERS, self._on_dead, auto_ack=True)

    def _on_reply(self, _ch: Any, _method: Any, props: Any, body: bytes) -> None:
        outcome = self.pending.pop(props.correlation_id or "", None)
        if outcome is not None:
            outcome.reply = body
            self.done.append(outcome)

    def _on_dead(self, _ch: Any, _method: Any, props: Any, body: bytes) -> None:
        reason = dead_letter_reason(props.headers) or ""
        original = (props.headers or {}).get("x-original-correlation_id")
        key = next((k for k in (props.correlation_id, original) if k in self.pending), None)
        if key is None:  # no correlation id kept: only the very same body is this case's
            key = next((k for k, o in self.pending.items() if o.case.body == body), None)
        if key is None:
            self.stray_dead_letters += 1
            return
        outcome = self.pending.pop(key)
        outcome.dead_reason = reason or "dead-lettered without a reason"
        self.done.append(outcome)

    def publish(self, cid: str, case: Case) -> None:
        """Publish one case, persistent, with reply_to and correlation_id."""
        props = pika.BasicProperties(
            content_type="application/json",
            delivery_mode=2,
            correlation_id=cid,
            reply_to=self.reply_queue,
        )
        self.channel.basic_publish("", REQUESTS, case.body, props)
        self.pending[cid] = Outcome(case, time.monotonic())

    def run(
        self,
        cases: Iterable[Case],
        window: int = 16,
        timeout: float = 15.0,
        give_up_after: int = 8,
    ) -> list[Outcome]:
        """Send every case with at most `window` outstanding; a case not settled `timeout`
        seconds after its publication is unanswered. After `give_up_after` unanswered in a
        row the daemon is wedged: the cases not yet sent are counted unanswered, unsent."""
        todo = list(cases)
        position = 0
        timed_out_in_a_row = 0
        while position < len(todo) or self.pending:
            while position < len(todo) and len(self.pending) < window:
                self.publish(f"fz-{position}", todo[position])
                position += 1
            before = len(self.done)
            self.connection.process_data_events(time_limit=0.05)
            if len(self.done) > before:
                timed_out_in_a_row = 0
            now = time.monotonic()
            for cid in [c for c, o in self.pending.items() if now - o.sent_at > timeout]:
                self.done.append(self.pending.pop(cid))
                timed_out_in_a_row += 1
            if timed_out_in_a_row >= give_up_after and position < len(todo):
                self.done += [Outcome(c, now) for c in todo[position:]]
                position = len(todo)
        return self.done

    def close(self) -> None:
        """Close the connection."""
        if self.connection.is_open:
            self.connection.close()


def tally_amqp(outcomes: Iterable[Outcome]) -> Tally:
    """Count outcomes: replied, dead-lettered, unanswered, malformed replies, error codes."""
    tally = Tally()
    for o in outcomes:
        tally.sent += 1
        label = f"{o.case.name} | body {excerpt(o.case.body)}"
        if not amqp_settled(o.reply, o.dead_reason):
            tally.unanswered.append(label)
            continue
        if o.reply is None:
            tally.dead_lettered += 1
            tally.codes["dead-letter"] += 1
            continue
        tally.replied += 1
        problem = reply_problem(o.reply)
        if problem:
            tally.malformed.append(f"{label} -> {problem}")
            continue
        reply = json.loads(o.reply)
        if reply["ok"]:
            tally.accepted += 1
            tally.codes["ok"] += 1
            if o.case.must_refuse:
                tally.accepted_bad.append(f"{label} -> {excerpt(o.reply, 200)}")
        else:
            tally.codes[reply["error"]["code"]] += 1
    return tally


def fuzz_amqp(url: str, cases: Iterable[Case], **run: Any) -> tuple[Tally, list[Outcome]]:
    """Publish `cases` on the daemon's broker and count the outcomes."""
    fuzzer = AmqpFuzzer(url)
    try:
        outcomes = fuzzer.run(cases, **run)
    finally:
        fuzzer.close()
    return tally_amqp(outcomes), outcomes


# ---------------------------------------------------------------------------------------------
# HTTP.


def http_call(
    base: str, token: str, case: HttpCase, timeout: float = 30.0
) -> tuple[int, str, bytes]:
    """Send one case on a fresh connection; (status, content type, body). Raises OSError or
    http.client.HTTPException when no response comes."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    headers = {"Content-Type": "application/json", **case.headers}
    if case.token and "Authorization" not in headers:
        headers["Authorization"] = f"Bearer {token}"
    try:
        # The server may answer (413) before reading the whole body.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            conn.request(case.method, case.path, body=case.body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type") or "", resp.read()
    finally:
        conn.close()


def fuzz_http(base: str, token: str, cases: Iterable[HttpCase], timeout: float = 30.0) -> Tally:
    """Send every case and count 5xx, non-JSON and unanswered responses."""
    tally = Tally()
    for case in cases:
        tally.sent += 1
        label = f"{case.name} | {case.method} {case.path[:80]} body {excerpt(case.body)}"
        try:
            status, ctype, body = http_call(base, token, case, timeout)
        except (OSError, http.client.HTTPException) as exc:
            tally.unanswered.append(f"{label} -> {exc!r}")
            continue
        tally.statuses[status] += 1
        problem = http_problem(status, ctype, body)
        if problem is None:
            tally.replied += 1
            if status < 400:
                tally.accepted += 1
                if case.must_refuse:
                    tally.accepted_bad.append(f"{label} -> {status} {excerpt(body, 200)}")
            else:
                tally.codes[json.loads(body)["error"]["code"]] += 1
        elif status >= 500:
            tally.server_errors.append(f"{label} -> {problem} {excerpt(body)}")
        else:
            tally.non_json.append(f"{label} -> {problem} {excerpt(body)}")
    return tally


def queue_depth(url: str, name: str = REQUESTS) -> int:
    """Messages ready on a queue and on its retry queue, i.e. left to be tried again at the
    next start (not those a consumer holds unacknowledged); an undeclared queue holds none."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    depth = 0
    try:
        for queue in (name, retry_queue_name(name)):
            channel = connection.channel()
            with contextlib.suppress(pika.exceptions.ChannelClosedByBroker):
                depth += channel.queue_declare(queue, passive=True).method.message_count
        return depth
    finally:
        connection.close()


def request_over_amqp(url: str, body: dict[str, Any], timeout: float = 30.0) -> bytes | None:
    """Publish one valid request and wait for its reply (None after `timeout`)."""
    fuzzer = AmqpFuzzer(url)
    try:
        outcomes = fuzzer.run([Case("valid", json.dumps(body).encode())], timeout=timeout)
    finally:
        fuzzer.close()
    return outcomes[0].reply
