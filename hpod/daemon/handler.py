"""One entry point for every request, from the queue or over HTTP: validate, act, answer.

Both channels call `RequestHandler.handle`; a rejected request gets an error that names the
field, an event `request.rejected` and a log line, and changes nothing else.
"""

from __future__ import annotations

from typing import Any

import structlog

from hpod.daemon.bus import Bus
from hpod.daemon.study_requests import StudyRequests
from hpod.errors import RequestRejected
from hpod.schema import (
    ModeSet,
    Request,
    StudyBudget,
    StudyCreate,
    StudyPause,
    StudyResume,
    StudyStop,
    StudyStrategy,
    TrialAsk,
    TrialEnqueue,
    TrialTell,
    load_json,
    parse_request,
)

log = structlog.get_logger("hpod.requests")


class RequestHandler:
    """Validates requests and carries them out (`hpod.daemon.study_requests`)."""

    def __init__(self, requests: StudyRequests, bus: Bus, max_bytes: int) -> None:
        self.requests = requests
        self.bus = bus
        self.max_bytes = max_bytes
        #: Set when the daemon drains: requests are refused, to be sent again after a restart.
        self.draining = False

    async def handle(
        self, raw: bytes | dict[str, Any], channel: str, origin: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The reply to a request: ``{"ok": true, "result": …}`` or ``{"ok": false, …}``.

        The message is parsed once (`load_json`: size, depth, then JSON), its id read from
        the parsed object, so even a rejected request is correlated.
        """
        request_id: str | None = None
        try:
            data = raw if isinstance(raw, dict) else load_json(raw, self.max_bytes)
            request_id = _peek_id(data)
            if self.draining:
                raise RequestRejected("draining", "", "hpod is shutting down; send it again later")
            request = parse_request(data, self.max_bytes)
            result = await self._execute(request)
        except RequestRejected as rejected:
            await self._rejected(rejected, raw, request_id, channel, origin or {})
            return {"v": 1, "ok": False, "id": request_id, "error": rejected.as_dict()}
        return {"v": 1, "ok": True, "id": request.id, "type": request.type, "result": result}

    async def _execute(self, request: Request) -> Any:
        body = request.body
        if isinstance(body, StudyCreate):
            return await self.requests.create(body.study)
        if isinstance(body, StudyStop):
            return await self.requests.stop(body.name)
        if isinstance(body, StudyPause):
            return await self.requests.pause(body.name)
        if isinstance(body, StudyResume):
            return await self.requests.resume(body.name)
        if isinstance(body, StudyBudget):
            return await self.requests.set_budget(body.name, body.budget)
        if isinstance(body, StudyStrategy):
            return await self.requests.set_strategy(body.name, body.strategy)
        if isinstance(body, TrialAsk):
            return await self.requests.ask(body.study, request.id)
        if isinstance(body, TrialTell):
            return await self.requests.tell(body)
        if isinstance(body, TrialEnqueue):
            return await self.requests.enqueue(body.study, dict(body.params))
        if isinstance(body, ModeSet):
            return await self.requests.set_mode(body)
        raise RequestRejected("unknown_type", "type", f"unhandled type {request.type!r}")

    async def _rejected(
        self,
        rejected: RequestRejected,
        raw: bytes | dict[str, Any],
        request_id: str | None,
        channel: str,
        origin: dict[str, Any],
    ) -> None:
        log.warning("request.rejected", channel=channel, id=request_id, **rejected.as_dict())
        await self.bus.event(
            "request.rejected", None, id=request_id, channel=channel, error=rejected.as_dict()
        )
        if (
            channel == "amqp"
            and rejected.code in {"not_json", "too_large"}
            and isinstance(raw, bytes)
        ):
            await self.bus.dead_letter(raw, rejected.message, origin)

    async def on_queue_message(self, body: bytes, props: dict[str, Any]) -> None:
        """A request from ``hpod.requests``: handle it and answer on `reply_to`, if given."""
        origin = {k: props.get(k) for k in ("reply_to", "correlation_id", "message_id")}
        reply = await self.handle(body, "amqp", origin)
        reply_to = props.get("reply_to")
        if reply_to:
            await self.bus.reply(reply_to, props.get("correlation_id"), reply)


def _peek_id(data: Any) -> str | None:
    """The request's id if it is a usable one, to correlate even a rejected request."""
    value = data.get("id") if isinstance(data, dict) else None
    if not isinstance(value, str) or not 0 < len(value) <= 200:
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return value
