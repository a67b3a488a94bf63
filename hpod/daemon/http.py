"""The HTTP intake and read API (aiohttp), on loopback by default.

Mutating routes turn their body into the same request the queue carries and go through the
same `RequestHandler`; they need the API token (``Authorization: Bearer …``). Reads are open,
including the Prometheus metrics (``/metrics``) and the diagnostics (``/doctor``,
``/studies/{name}/doctor``, ``/workers``), and the strategy policy's status (``/policy``);
exporting the policy (its replay buffer names studies) needs the token too.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from hpod import __version__
from hpod.daemon.manager import StudyManager
from hpod.daemon.metrics import CONTENT_TYPE_LATEST
from hpod.daemon.requests import RequestHandler
from hpod.daemon.web import add_web_routes
from hpod.errors import RequestRejected
from hpod.schema import StudySpec, json_schema

HANDLER = web.AppKey("handler", RequestHandler)
MANAGER = web.AppKey("manager", StudyManager)
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

Route = Callable[[web.Request], Awaitable[web.StreamResponse]]


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
    add_web_routes(app)
    return app


@web.middleware
async def _errors(request: web.Request, handler: Route) -> web.StreamResponse:
    try:
        return await handler(request)
    except RequestRejected as exc:
        return _error(exc)
    except web.HTTPRequestEntityTooLarge as exc:
        return _error(RequestRejected("too_large", "", exc.text or "request body too large"))


def _error(exc: RequestRejected) -> web.Response:
    status = STATUS_BY_CODE.get(exc.code, 400)
    return web.json_response({"v": 1, "ok": False, "error": exc.as_dict()}, status=status)


def _mutating(route: Route) -> Route:
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

    return guarded


async def _body(request: web.Request) -> Any:
    raw = await request.read()
    if not raw:
        return {}
    import json

    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestRejected("not_json", "", f"not valid JSON: {exc}") from exc


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


async def create_study(request: web.Request) -> web.Response:
    """POST /studies: body is a study spec."""
    spec = await _body(request)
    return await _run(request, {"v": 1, "type": "study.create", "study": spec}, status=201)


async def stop_study(request: web.Request) -> web.Response:
    """POST /studies/{name}/stop."""
    return await _run(request, _envelope("study.stop", name=request.match_info["name"]))


async def pause_study(request: web.Request) -> web.Response:
    """POST /studies/{name}/pause."""
    return await _run(request, _envelope("study.pause", name=request.match_info["name"]))


async def resume_study(request: web.Request) -> web.Response:
    """POST /studies/{name}/resume."""
    return await _run(request, _envelope("study.resume", name=request.match_info["name"]))


async def set_budget(request: web.Request) -> web.Response:
    """POST /studies/{name}/budget: body ``{"budget": {"trials": 80}}``."""
    body = await _body(request)
    return await _run(request, _envelope("study.budget", body, name=request.match_info["name"]))


async def set_strategy(request: web.Request) -> web.Response:
    """POST /studies/{name}/strategy: body ``{"strategy": "auto" | "mode" | name}``."""
    body = await _body(request)
    return await _run(request, _envelope("study.strategy", body, name=request.match_info["name"]))


async def policy_status(request: web.Request) -> web.Response:
    """GET /policy: the strategy agent's weights, fallback, experiences and recent decisions."""
    return web.json_response(await request.app[MANAGER].policy_status())


async def policy_reset(request: web.Request) -> web.Response:
    """POST /policy/reset: back to the shipped policy, local experience forgotten (token)."""
    return web.json_response(await request.app[MANAGER].policy_reset())


async def policy_export(request: web.Request) -> web.Response:
    """GET /policy/export: weights and replay buffer as one JSON bundle (token)."""
    return web.json_response(await request.app[MANAGER].policy_export())


async def policy_import(request: web.Request) -> web.Response:
    """POST /policy/import: body is a bundle from /policy/export (token); a bad bundle is a
    400 naming the field."""
    return web.json_response(await request.app[MANAGER].policy_import(await _body(request)))


async def ask(request: web.Request) -> web.Response:
    """POST /studies/{name}/ask: a trial for an external evaluator."""
    return await _run(request, _envelope("trial.ask", study=request.match_info["name"]))


async def tell(request: web.Request) -> web.Response:
    """POST /studies/{name}/tell: body ``{"trial": n, "values": [...], "state": …}``."""
    body = await _body(request)
    return await _run(request, _envelope("trial.tell", body, study=request.match_info["name"]))


async def enqueue(request: web.Request) -> web.Response:
    """POST /studies/{name}/enqueue: body ``{"params": {...}}``."""
    body = await _body(request)
    return await _run(request, _envelope("trial.enqueue", body, study=request.match_info["name"]))


async def set_mode(request: web.Request) -> web.Response:
    """POST /mode: body ``{"mode": "fast", "study": optional}``."""
    return await _run(request, _envelope("mode.set", await _body(request)))


async def any_request(request: web.Request) -> web.Response:
    """POST /requests: any request envelope, exactly as it would travel on the queue."""
    reply = await request.app[HANDLER].handle(await request.read(), "http")
    status = 200 if reply["ok"] else STATUS_BY_CODE.get(reply["error"]["code"], 400)
    return web.json_response(reply, status=status)


async def health(request: web.Request) -> web.Response:
    """GET /health: liveness and load."""
    manager = request.app[MANAGER]
    fault = manager.store.fault  # C: storage failing (writes refused, database gone) is not ok
    return web.json_response(
        {
            "status": "ok" if fault is None else "storage_failing",
            "version": __version__,
            "running_studies": len(manager.runs),
            "in_flight": manager.limits.inflight,
            **({"storage_fault": fault} if fault is not None else {}),
        },
        status=200 if fault is None else 503,
    )


async def list_studies(request: web.Request) -> web.Response:
    """GET /studies."""
    return web.json_response({"studies": await request.app[MANAGER].list()})


async def get_study(request: web.Request) -> web.Response:
    """GET /studies/{name}: counts, best and live state."""
    return web.json_response(await request.app[MANAGER].status(request.match_info["name"]))


async def study_doctor(request: web.Request) -> web.Response:
    """GET /studies/{name}/doctor: seconds per stage of the study's trials, and its bottleneck."""
    report = await request.app[MANAGER].doctor_study(request.match_info["name"])
    return web.json_response(report)


async def list_modes(request: web.Request) -> web.Response:
    """GET /modes: every mode's knobs and the default mode."""
    manager = request.app[MANAGER]
    modes = {name: mode.model_dump() for name, mode in manager.modes.items()}
    return web.json_response({"default": manager.default_mode, "modes": modes})


async def cache_stats(request: web.Request) -> web.Response:
    """GET /cache: entries, size and hits of the shared result cache."""
    return web.json_response(request.app[MANAGER].cache.stats())


async def cache_clear(request: web.Request) -> web.Response:
    """DELETE /cache: forget every cached result (token needed)."""
    return web.json_response({"cleared": request.app[MANAGER].cache.clear()})


async def doctor(request: web.Request) -> web.Response:
    """GET /doctor: every study's breakdown, process resources and back-pressure."""
    return web.json_response(request.app[MANAGER].doctor_all())


async def workers(request: web.Request) -> web.Response:
    """GET /workers: the live workers (Celery inspect on RabbitMQ, local processes otherwise)."""
    return web.json_response(await request.app[MANAGER].workers())


async def metrics(request: web.Request) -> web.Response:
    """GET /metrics: every series in Prometheus' text format."""
    body = request.app[MANAGER].metrics.exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(request: web.Request) -> web.Response:
    """GET /openapi.json: the OpenAPI 3.1 document of this API."""
    return web.json_response(openapi_document())


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document, built from the same pydantic models that validate requests."""
    schemas = json_schema()["$defs"]
    schemas["StudySpecBody"] = StudySpec.model_json_schema(
        ref_template="#/components/schemas/{model}"
    )
    schemas.update(schemas["StudySpecBody"].pop("$defs", {}))
    text = _reref(schemas)

    def op(summary: str, body: str | None = None, secured: bool = False) -> dict[str, Any]:
        spec: dict[str, Any] = {"summary": summary, "responses": {"200": {"description": "OK"}}}
        if body:
            ref = {"$ref": f"#/components/schemas/{body}"}
            spec["requestBody"] = {"content": {"application/json": {"schema": ref}}}
        if secured:
            spec["security"] = [{"bearer": []}]
            spec["responses"]["401"] = {"description": "missing or wrong token"}
        spec["responses"]["400"] = {"description": "invalid request; the error names the field"}
        return spec

    name = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}]
    return {
        "openapi": "3.1.0",
        "info": {"title": "hpod", "version": __version__},
        "components": {
            "schemas": text,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "paths": {
            "/health": {"get": op("Liveness and load")},
            "/studies": {
                "get": op("List studies"),
                "post": op("Create a study", "StudySpecBody", secured=True),
            },
            "/studies/{name}": {"get": op("Study status"), "parameters": name},
            "/studies/{name}/doctor": {
                "get": op("Where the study's time goes, and its bottleneck"),
                "parameters": name,
            },
            "/doctor": {"get": op("All studies' breakdowns, resources and back-pressure")},
            "/workers": {"get": op("Live workers")},
            "/metrics": {"get": op("Prometheus metrics (text format)")},
            "/studies/{name}/stop": {"post": op("Stop a study", secured=True), "parameters": name},
            "/studies/{name}/pause": {
                "post": op("Pause a study", secured=True),
                "parameters": name,
            },
            "/studies/{name}/resume": {
                "post": op("Resume a paused study", secured=True),
                "parameters": name,
            },
            "/studies/{name}/budget": {
                "post": op("Change a study's budget", "StudyBudget", secured=True),
                "parameters": name,
            },
            "/studies/{name}/strategy": {
                "post": op("Switch a study's strategy live", "StudyStrategy", secured=True),
                "parameters": name,
            },
            "/studies/{name}/ask": {"post": op("Ask a trial", secured=True), "parameters": name},
            "/studies/{name}/tell": {
                "post": op("Tell a trial's result", "TrialTell", secured=True),
                "parameters": name,
            },
            "/studies/{name}/enqueue": {
                "post": op("Propose a configuration", "TrialEnqueue", secured=True),
                "parameters": name,
            },
            "/mode": {"post": op("Switch a mode", "ModeSet", secured=True)},
            "/modes": {"get": op("Every mode's knobs and the default mode")},
            "/policy": {"get": op("The strategy policy: weights, fallback, experiences")},
            "/policy/reset": {"post": op("Forget the learnt strategy policy", secured=True)},
            "/policy/export": {"get": op("The strategy policy as a JSON bundle", secured=True)},
            "/policy/import": {"post": op("Load a strategy policy bundle", secured=True)},
            "/cache": {
                "get": op("Result cache statistics"),
                "delete": op("Clear the result cache", secured=True),
            },
            "/requests": {"post": op("Any request envelope, as on the queue", secured=True)},
        },
    }


def _reref(schemas: dict[str, Any]) -> dict[str, Any]:
    import json

    text = json.dumps(schemas).replace("#/$defs/", "#/components/schemas/")
    result: dict[str, Any] = json.loads(text)
    return result
