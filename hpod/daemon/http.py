"""The HTTP intake and read API (aiohttp), on loopback by default.

Mutating routes turn their body into the same request the queue carries and go through the
same `RequestHandler`; they need the API token (``Authorization: Bearer …``). Reads are open,
including the Prometheus metrics (``/metrics``) and the diagnostics (``/doctor``,
``/studies/{name}/doctor``, ``/workers``), and the strategy policy's status (``/policy``);
exporting the policy (its replay buffer names studies) needs the token too.

Every error is JSON, ``{"v": 1, "ok": false, "error": {"code", "field", "message"}}``: a
rejected request, an unknown route (404) or method (405), a body over the limit (413), a
request aiohttp cannot parse (an over-long URL or header line), and any unexpected exception
(500, logged with its traceback; no input should cause one).
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import inspect
import json
import re
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

import structlog
from aiohttp import hdrs, web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.web_protocol import RequestHandler as HttpProtocol
from aiohttp.web_request import BaseRequest

from hpod import __version__
from hpod.daemon.handler import RequestHandler
from hpod.daemon.manager import StudyManager
from hpod.daemon.metrics import CONTENT_TYPE_LATEST
from hpod.daemon.web import add_web_routes
from hpod.daemon.web.keys import MANAGER
from hpod.errors import RequestRejected
from hpod.schema import BODIES, StudySpec, json_schema, load_json

log = structlog.get_logger("hpod.http")

HANDLER = web.AppKey("handler", RequestHandler)
TOKEN = web.AppKey("token", str)

STATUS_BY_CODE = {
    "not_found": 404,
    "conflict": 409,
    "too_large": 413,
    "not_running": 409,
    "budget_exhausted": 409,
    "paused": 409,
    "draining": 503,
}

#: The error code of an HTTP-level refusal, by status (any other 4xx is `invalid`, 5xx
#: `internal`).
CODE_BY_STATUS = {
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    414: "too_large",
    431: "too_large",
}

Route = Callable[[web.Request], Awaitable[web.StreamResponse]]


#: What a route's request body is, by handler: a request type of the wire schema (its fields
#: without the envelope and the path's study, which the route supplies), ``spec`` (a study
#: spec), ``envelope`` (any request, as on the queue) or ``object`` (a JSON object).
_BODIES: dict[Callable[..., Any], str] = {}
#: Handlers behind the API token (wrapped by `_mutating`).
_TOKEN_ROUTES: set[Callable[..., Any]] = set()
#: The success status of a route that answers other than 200.
_SUCCESS: dict[Callable[..., Any], int] = {}


def _accepts(body: str, success: int = 200) -> Callable[[Route], Route]:
    """Mark a handler as taking a JSON body of kind `body` (see `_BODIES`), answering
    `success` when it succeeds (for the OpenAPI document)."""

    def mark(route: Route) -> Route:
        _BODIES[route] = body
        if success != 200:
            _SUCCESS[route] = success
        return route

    return mark


def make_app(
    handler: RequestHandler, manager: StudyManager, token: str, max_bytes: int
) -> web.Application:
    """The aiohttp application serving hpod's HTTP API."""
    app = web.Application(client_max_size=max_bytes, middlewares=[_errors])
    app[HANDLER] = handler
    app[MANAGER] = manager
    app[TOKEN] = token
    app.add_routes(
        [
            web.get("/health", health),
            web.get("/openapi.json", openapi),
            web.get("/studies", list_studies),
            web.get("/studies/{name}", get_study),
            web.get("/studies/{name}/doctor", study_doctor),
            web.get("/doctor", doctor),
            web.get("/workers", workers),
            web.get("/metrics", metrics),
            web.get("/modes", list_modes),
            web.get("/cache", cache_stats),
            web.delete("/cache", _mutating(cache_clear)),
            web.post("/studies", _mutating(create_study)),
            web.post("/studies/{name}/stop", _mutating(stop_study)),
            web.post("/studies/{name}/pause", _mutating(pause_study)),
            web.post("/studies/{name}/resume", _mutating(resume_study)),
            web.post("/studies/{name}/budget", _mutating(set_budget)),
            web.post("/studies/{name}/strategy", _mutating(set_strategy)),
            web.post("/studies/{name}/ask", _mutating(ask)),
            web.post("/studies/{name}/tell", _mutating(tell)),
            web.post("/studies/{name}/enqueue", _mutating(enqueue)),
            web.post("/mode", _mutating(set_mode)),
            web.get("/policy", policy_status),
            web.post("/policy/reset", _mutating(policy_reset)),
            web.get("/policy/export", _mutating(policy_export)),
            web.post("/policy/import", _mutating(policy_import)),
            web.post("/requests", _mutating(any_request)),
        ]
    )
    add_web_routes(app, manager.settings.max_event_streams)
    return app


def make_runner(app: web.Application, **kwargs: Any) -> web.AppRunner:
    """The runner serving `app`, whose connections answer parse errors in JSON too."""
    return _JsonErrorsRunner(app, **kwargs)


@web.middleware
async def _errors(request: web.Request, handler: Route) -> web.StreamResponse:
    """Every error a route or aiohttp's router raises, as a JSON error reply."""
    try:
        return await handler(request)
    except RequestRejected as exc:
        return _error(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise  # a redirect is not an error
        return _http_error(request, exc)
    except Exception:
        log.exception("http.internal_error", method=request.method, path=request.path)
        if request.writer.output_size > 0:  # a stream already started: nothing to answer
            raise
        return _json_error(500, "internal", "internal error (logged by the daemon)")


def _error(exc: RequestRejected) -> web.Response:
    status = STATUS_BY_CODE.get(exc.code, 400)
    return web.json_response({"v": 1, "ok": False, "error": exc.as_dict()}, status=status)


def _http_error(request: web.Request, exc: web.HTTPException) -> web.Response:
    code = CODE_BY_STATUS.get(exc.status, "internal" if exc.status >= 500 else "invalid")
    message = exc.text if exc.text and exc.text != f"{exc.status}: {exc.reason}" else exc.reason
    if exc.status in (404, 405) and message == exc.reason:
        message = f"{exc.reason}: {request.method} {request.path[:200]}"
    response = _json_error(exc.status, code, message or exc.reason)
    if "Allow" in exc.headers:  # 405 names the allowed methods
        response.headers["Allow"] = exc.headers["Allow"]
    return response


def _json_error(status: int, code: str, message: str, field: str = "") -> web.Response:
    error = {"code": code, "field": field, "message": message}
    return web.json_response({"v": 1, "ok": False, "error": error}, status=status)


class _JsonErrorsProtocol(HttpProtocol):
    """aiohttp's connection handler, answering in JSON what it answers before any route.

    A request aiohttp cannot parse (a URL or header line over `max_line_size`, a bad method)
    never reaches a middleware: aiohttp answers it from `handle_error`, in text/plain, and
    has no hook to shape that (aio-libs/aiohttp#3287), hence this subclass.
    """

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """The JSON error for a request aiohttp refused itself (logged, one line)."""
        if status >= 500:
            log.error("http.internal_error", status=status, error=repr(exc), exc_info=exc)
        else:
            log.warning("http.bad_request", status=status, error=message or repr(exc))
        if request.writer.output_size > 0:
            raise ConnectionError("response already started: cannot send the error")
        if isinstance(exc, LineTooLong) or status in (413, 414, 431):
            code = "too_large"
        else:
            code = "internal" if status >= 500 else "invalid"
        text = message or (str(exc) if exc is not None else "") or HTTPStatus(status).phrase
        if isinstance(exc, LineTooLong):
            text = f"the URL or a header line exceeds {self.max_line_size} bytes"
        if status >= 500:
            text = "internal error (logged by the daemon)"
        response = _json_error(status, code, text)
        response.force_close()
        return response


class _JsonErrorsServer(web.Server):
    """An aiohttp server whose connections are `_JsonErrorsProtocol`s."""

    def __call__(self) -> HttpProtocol:
        return _JsonErrorsProtocol(self, loop=self._loop, **self._kwargs)


class _JsonErrorsRunner(web.AppRunner):
    """An AppRunner serving through `_JsonErrorsServer` (same application, same options)."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        return _JsonErrorsServer(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=asyncio.get_running_loop(),
            **server._kwargs,
        )


def _mutating(route: Route) -> Route:
    """`route` behind the API token (``Authorization: Bearer …``)."""

    @functools.wraps(route)
    async def guarded(request: web.Request) -> web.StreamResponse:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), request.app[TOKEN].encode()):
            error = {
                "code": "unauthorized",
                "field": "Authorization",
                "message": "missing or wrong API token",
            }
            return web.json_response({"v": 1, "ok": False, "error": error}, status=401)
        return await route(request)

    _TOKEN_ROUTES.add(guarded)
    return guarded


async def _body(request: web.Request) -> Any:
    """The JSON body, parsed by the one safe loader (size, depth, then JSON); {} if empty."""
    raw = await request.read()
    if not raw:
        return {}
    return load_json(raw, request.app[HANDLER].max_bytes)


async def _run(request: web.Request, message: dict[str, Any], status: int = 200) -> web.Response:
    key = request.headers.get("Idempotency-Key")
    if key and "id" not in message:
        message["id"] = key
    reply = await request.app[HANDLER].handle(message, "http")
    if not reply["ok"]:
        return web.json_response(reply, status=STATUS_BY_CODE.get(reply["error"]["code"], 400))
    return web.json_response(reply, status=status)


def _envelope(type_: str, body: Any = None, **path: Any) -> dict[str, Any]:
    """The queue envelope of an HTTP call: the route decides type and study, not the body."""
    fields = body if isinstance(body, dict) else ({} if body is None else {"body": body})
    return {**fields, "v": 1, "type": type_, **path}


@_accepts("spec", success=201)
async def create_study(request: web.Request) -> web.Response:
    """POST /studies: create a study and start it; the body is its spec (not an envelope)."""
    spec = await _body(request)
    return await _run(request, {"v": 1, "type": "study.create", "study": spec}, status=201)


async def stop_study(request: web.Request) -> web.Response:
    """POST /studies/{name}/stop: ask no new trials; trials in flight are still told."""
    body = await _body(request)  # none, or {}: anything else is refused, never ignored
    return await _run(request, _envelope("study.stop", body, name=request.match_info["name"]))


async def pause_study(request: web.Request) -> web.Response:
    """POST /studies/{name}/pause: dispatch no new trials until resumed."""
    body = await _body(request)  # none, or {}: anything else is refused, never ignored
    return await _run(request, _envelope("study.pause", body, name=request.match_info["name"]))


async def resume_study(request: web.Request) -> web.Response:
    """POST /studies/{name}/resume: dispatch again, up to the budget."""
    body = await _body(request)  # none, or {}: anything else is refused, never ignored
    return await _run(request, _envelope("study.resume", body, name=request.match_info["name"]))


@_accepts("study.budget")
async def set_budget(request: web.Request) -> web.Response:
    """POST /studies/{name}/budget: replace a study's budget live, e.g.
    ``{"budget": {"trials": 80}}``."""
    body = await _body(request)
    return await _run(request, _envelope("study.budget", body, name=request.match_info["name"]))


@_accepts("study.strategy")
async def set_strategy(request: web.Request) -> web.Response:
    """POST /studies/{name}/strategy: switch a study's strategy live,
    ``{"strategy": "auto" | "mode" | name}``."""
    body = await _body(request)
    return await _run(request, _envelope("study.strategy", body, name=request.match_info["name"]))


async def policy_status(request: web.Request) -> web.Response:
    """GET /policy: the strategy agent's weights, fallback, experiences and recent decisions."""
    return web.json_response(await request.app[MANAGER].policy.status())


async def policy_reset(request: web.Request) -> web.Response:
    """POST /policy/reset: back to the shipped policy, local experience forgotten (token)."""
    if await _body(request) not in ({}, None):  # as the routes above: never ignore a body
        raise RequestRejected("invalid", "", "this route takes no body (or {})")
    return web.json_response(await request.app[MANAGER].policy.reset())


async def policy_export(request: web.Request) -> web.Response:
    """GET /policy/export: weights and replay buffer as one JSON bundle (token)."""
    return web.json_response(await request.app[MANAGER].policy.export())


@_accepts("object")
async def policy_import(request: web.Request) -> web.Response:
    """POST /policy/import: load a bundle from /policy/export (token); a bad bundle is a 400
    naming the field."""
    return web.json_response(await request.app[MANAGER].policy.import_bundle(await _body(request)))


async def ask(request: web.Request) -> web.Response:
    """POST /studies/{name}/ask: a trial for an external evaluator (``Idempotency-Key`` is the
    ask's id)."""
    body = await _body(request)  # none, or {}: anything else is refused, never ignored
    return await _run(request, _envelope("trial.ask", body, study=request.match_info["name"]))


@_accepts("trial.tell")
async def tell(request: web.Request) -> web.Response:
    """POST /studies/{name}/tell: an external evaluator's result,
    ``{"trial": n, "values": [...], "state": …}``."""
    body = await _body(request)
    return await _run(request, _envelope("trial.tell", body, study=request.match_info["name"]))


@_accepts("trial.enqueue")
async def enqueue(request: web.Request) -> web.Response:
    """POST /studies/{name}/enqueue: propose a configuration, ``{"params": {...}}``."""
    body = await _body(request)
    return await _run(request, _envelope("trial.enqueue", body, study=request.match_info["name"]))


@_accepts("mode.set")
async def set_mode(request: web.Request) -> web.Response:
    """POST /mode: switch a study's mode, or the default one,
    ``{"mode": "fast", "study": optional}``."""
    return await _run(request, _envelope("mode.set", await _body(request)))


@_accepts("envelope")
async def any_request(request: web.Request) -> web.Response:
    """POST /requests: any request envelope, exactly as it would travel on the queue."""
    reply = await request.app[HANDLER].handle(await request.read(), "http")
    status = 200 if reply["ok"] else STATUS_BY_CODE.get(reply["error"]["code"], 400)
    return web.json_response(reply, status=status)


#: The queue intake's health (`QueueIntake.health`), set by the daemon once intake runs.
INTAKE_HEALTH: web.AppKey[Callable[[], dict[str, Any]]] = web.AppKey("intake_health")


async def health(request: web.Request) -> web.Response:
    """GET /health: liveness, load and intake lag; 503 with the reasons when intake is stuck
    (messages waiting without progress, or the broker unreachable, for `intake_stuck_seconds`).
    Idle is healthy."""
    manager = request.app[MANAGER]
    probe = request.app.get(INTAKE_HEALTH)
    intake = probe() if probe is not None else None
    stuck = bool(intake and intake["stuck"])
    fault = manager.store.fault  # storage failing (writes refused, database gone) is not ok
    status = "stuck" if stuck else "storage_failing" if fault is not None else "ok"
    body: dict[str, Any] = {
        "status": status,
        "version": __version__,
        "running_studies": len(manager.runs),
        "in_flight": manager.slots.inflight,
    }
    if fault is not None:
        body["storage_fault"] = fault
    if intake is not None:
        body["intake"] = intake["queues"]
        if stuck:
            body["reasons"] = intake["reasons"]
    return web.json_response(body, status=200 if status == "ok" else 503)


async def list_studies(request: web.Request) -> web.Response:
    """GET /studies: every study's name, state, mode and best value."""
    return web.json_response({"studies": await request.app[MANAGER].reports.list()})


async def get_study(request: web.Request) -> web.Response:
    """GET /studies/{name}: counts, best and live state."""
    return web.json_response(await request.app[MANAGER].reports.status(request.match_info["name"]))


async def study_doctor(request: web.Request) -> web.Response:
    """GET /studies/{name}/doctor: seconds per stage of the study's trials, and its bottleneck."""
    report = await request.app[MANAGER].observers.doctor_study(request.match_info["name"])
    return web.json_response(report)


async def list_modes(request: web.Request) -> web.Response:
    """GET /modes: every mode's knobs and the default mode."""
    modes_in_force = request.app[MANAGER].modes_in_force
    modes = {name: mode.model_dump() for name, mode in modes_in_force.modes.items()}
    return web.json_response({"default": modes_in_force.default, "modes": modes})


async def cache_stats(request: web.Request) -> web.Response:
    """GET /cache: entries, size and hits of the shared result cache."""
    return web.json_response(request.app[MANAGER].cache.stats())


async def cache_clear(request: web.Request) -> web.Response:
    """DELETE /cache: forget every cached result (token needed)."""
    return web.json_response({"cleared": request.app[MANAGER].cache.clear()})


async def doctor(request: web.Request) -> web.Response:
    """GET /doctor: every study's breakdown, process resources and back-pressure."""
    return web.json_response(request.app[MANAGER].observers.doctor_all())


async def workers(request: web.Request) -> web.Response:
    """GET /workers: the live workers (Celery inspect on RabbitMQ, local processes otherwise)."""
    return web.json_response(await request.app[MANAGER].observers.workers())


async def metrics(request: web.Request) -> web.Response:
    """GET /metrics: every series in Prometheus' text format."""
    body = request.app[MANAGER].observers.metrics.exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(request: web.Request) -> web.Response:
    """GET /openapi.json: the OpenAPI 3.1 document of this API, built from its routes."""
    return web.json_response(openapi_document(request.app))


def openapi_document(app: web.Application) -> dict[str, Any]:
    """The OpenAPI document of `app`, built from the app's own routes so it cannot drift.

    Each route is one operation: its summary is the handler's docstring (first paragraph,
    without its ``METHOD /path:`` prefix), its path parameters come from the route, its query
    parameters from the docstring's ``[?a=…&b=…]``, its request body from the wire schema
    (`_accepts`), and routes behind the API token say so. HEAD, which aiohttp adds to every
    GET, is left out: it answers as GET does, without a body.
    """
    schemas = _component_schemas()
    paths: dict[str, dict[str, Any]] = {}
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        if not path or route.method in (hdrs.METH_HEAD, hdrs.METH_ANY):
            continue
        paths.setdefault(path, {})[route.method.lower()] = _operation(
            route.method, path, route.handler, schemas
        )
    return {
        "openapi": "3.1.0",
        "info": {"title": "hpod", "version": __version__},
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "paths": {path: paths[path] for path in sorted(paths)},
    }


def _operation(
    method: str, path: str, handler: Callable[..., Any], schemas: dict[str, Any]
) -> dict[str, Any]:
    """One OpenAPI operation, from the route and its handler."""
    route = inspect.unwrap(handler)
    summary, query = describe(route)
    op: dict[str, Any] = {"summary": summary, "operationId": route.__name__}
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in re.findall(r"{(\w+)}", path)
    ]
    parameters += [
        {"name": name, "in": "query", "required": False, "schema": {"type": "string"}}
        for name in query
    ]
    if parameters:
        op["parameters"] = parameters
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    status = str(_SUCCESS.get(route, 200))
    op["responses"] = {status: {"description": "OK"}, "default": {"description": "error", **error}}
    if route in _BODIES:
        schema = _body_schema(_BODIES[route], path, schemas)
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": schema}}}
    if handler in _TOKEN_ROUTES:
        op["security"] = [{"bearer": []}]
        op["responses"]["401"] = {"description": "missing or wrong API token", **error}
    return op


_PREFIX = re.compile(
    r"^(?P<method>[A-Z]+) (?P<path>/\S*?)(?:\[\?(?P<query>[^\]]*)\])?(?:[:.](?=\s|$)|$)"
)


def describe(handler: Callable[..., Any]) -> tuple[str, list[str]]:
    """A route handler's summary and query parameters, read from its docstring.

    The docstring starts ``METHOD /path[?a=…&b=…]: what it does``; the summary is what it
    does (its first paragraph), the query parameters are ``a`` and ``b``.
    """
    doc = inspect.getdoc(handler) or ""
    first = " ".join(doc.split("\n\n")[0].split())
    match = _PREFIX.match(first)
    if match is None:
        return first, []
    query = [part.split("=")[0] for part in (match["query"] or "").split("&") if part]
    summary = first[match.end() :].strip()
    return summary[:1].upper() + summary[1:], query


def route_of(handler: Callable[..., Any]) -> tuple[str, str] | None:
    """The ``(METHOD, /path)`` a handler's docstring names, if it names one."""
    doc = " ".join((inspect.getdoc(inspect.unwrap(handler)) or "").split())
    match = _PREFIX.match(doc)
    return (match["method"], match["path"]) if match else None


def _component_schemas() -> dict[str, Any]:
    """The wire schema's definitions, the study spec, and the error reply."""
    schemas: dict[str, Any] = json_schema()["$defs"]
    spec = StudySpec.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(spec.pop("$defs", {}))
    schemas["StudySpecBody"] = spec
    schemas["Error"] = {
        "type": "object",
        "required": ["v", "ok", "error"],
        "properties": {
            "v": {"const": 1},
            "ok": {"const": False},
            "id": {"type": ["string", "null"]},
            "error": {
                "type": "object",
                "required": ["code", "field", "message"],
                "properties": {
                    "code": {"type": "string"},
                    "field": {"type": "string"},
                    "message": {"type": "string"},
                },
            },
        },
    }
    return _reref(schemas)


def _body_schema(kind: str, path: str, schemas: dict[str, Any]) -> dict[str, Any]:
    """The schema of a route's body (see `_BODIES`); a request type's body schema is added
    to `schemas` as ``<Model>Body``."""
    if kind == "spec":
        return {"$ref": "#/components/schemas/StudySpecBody"}
    if kind == "envelope":
        return {"oneOf": [{"$ref": f"#/components/schemas/{m.__name__}"} for m in BODIES.values()]}
    if kind == "object":
        return {"type": "object"}
    model = BODIES[kind].__name__
    from_path = {"v", "type", *re.findall(r"{(\w+)}", path)}
    if "{name}" in path:  # the path's study is the request's `study` (or `name`) field
        from_path |= {"study", "name"}
    full = schemas[model]
    body = {
        **full,
        "properties": {k: v for k, v in full["properties"].items() if k not in from_path},
        "required": [k for k in full.get("required", []) if k not in from_path],
    }
    schemas[f"{model}Body"] = body
    return {"$ref": f"#/components/schemas/{model}Body"}


def _reref(schemas: dict[str, Any]) -> dict[str, Any]:
    """`schemas` with JSON Schema's local references pointed into the OpenAPI components."""
    text = json.dumps(schemas).replace("#/$defs/", "#/components/schemas/")
    result: dict[str, Any] = json.loads(text)
    return result
