"""The OpenAPI document is built from the app's own routes, so it cannot drift (issue 17, item
1: `/events`, `/studies/{name}/trials` and `/importance` were missing from the hand-written
one)."""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import hdrs, web

from hpod.config import load_settings
from hpod.daemon.bus import Bus
from hpod.daemon.handler import RequestHandler
from hpod.daemon.http import make_app, openapi_document, route_of
from hpod.daemon.manager import StudyManager
from hpod.daemon.store import StudyStore
from hpod.schema import BODIES
from hpod.workers.celery_config import make_celery


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[web.Application]:
    """The daemon's real application (manager, handler and web page), not started."""
    settings = load_settings(data_dir=tmp_path_factory.mktemp("data"), api_token="t" * 16)
    store = StudyStore(settings.optuna_storage_url())
    bus = Bus(settings, make_celery(settings))
    manager = StudyManager(settings, store, bus)
    handler = RequestHandler(manager.requests, bus, settings.max_message_bytes)
    yield make_app(handler, manager, "t" * 16, settings.max_message_bytes)
    bus.close()
    store.close()


def _app_routes(app: web.Application) -> dict[tuple[str, str], Any]:
    """(METHOD, path) → handler of every route the app serves, HEAD left out."""
    routes = {}
    for route in app.router.routes():
        assert route.resource is not None
        info = route.resource.get_info()
        path = info.get("path") or info["formatter"]
        if route.method != hdrs.METH_HEAD:
            routes[(route.method, path)] = route.handler
    return routes


def _documented(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}


def test_every_route_is_documented_and_nothing_else(app: web.Application) -> None:
    """The document lists exactly the app's routes, the ones the review found missing too."""
    doc = openapi_document(app)
    assert _documented(doc) == set(_app_routes(app))
    for missing_before in ("/events", "/studies/{name}/trials", "/studies/{name}/importance"):
        assert "get" in doc["paths"][missing_before]


def test_a_route_added_later_is_documented(app: web.Application) -> None:
    """A route nobody described by hand still appears, summarised from its docstring."""

    async def probe(request: web.Request) -> web.Response:
        """GET /probe/{thing}[?depth=N]: a route added after the document was written."""
        return web.json_response({})

    extra = web.Application()
    extra.router.add_get("/probe/{thing}", probe)
    op = openapi_document(extra)["paths"]["/probe/{thing}"]["get"]
    assert op["summary"] == "A route added after the document was written."
    assert [(p["name"], p["in"]) for p in op["parameters"]] == [
        ("thing", "path"),
        ("depth", "query"),
    ]


def test_each_handler_names_its_own_route(app: web.Application) -> None:
    """Every handler's docstring starts with the method and path it serves and says what it
    does: the summary cannot describe another route."""
    doc = openapi_document(app)
    for (method, path), handler in _app_routes(app).items():
        assert route_of(handler) == (method, path), inspect.unwrap(handler).__name__
        assert len(doc["paths"][path][method.lower()]["summary"]) > 10, (method, path)


def test_token_routes_and_request_bodies(app: web.Application) -> None:
    """Mutating routes need the token; a body's schema is the request's fields without the
    envelope and without the study the path names."""
    paths = openapi_document(app)["paths"]
    assert "security" not in paths["/studies"]["get"]
    assert paths["/studies"]["post"]["security"] == [{"bearer": []}]
    assert paths["/policy/export"]["get"]["security"] == [{"bearer": []}]
    assert "201" in paths["/studies"]["post"]["responses"]
    schemas = openapi_document(app)["components"]["schemas"]
    tell_ref = paths["/studies/{name}/tell"]["post"]["requestBody"]["content"]
    tell = schemas[tell_ref["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]]
    assert set(tell["properties"]) == {"id", "trial", "state", "values"}
    assert tell["required"] == ["trial"]
    mode = paths["/mode"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "study" in schemas[mode["$ref"].rsplit("/", 1)[1]]["properties"]  # no path study
    envelope = paths["/requests"]["post"]["requestBody"]["content"]["application/json"]
    assert len(envelope["schema"]["oneOf"]) == len(BODIES)
    assert "requestBody" not in paths["/studies/{name}/ask"]["post"]


def test_every_reference_resolves(app: web.Application) -> None:
    """Each ``$ref`` in the document points at a component that exists."""
    doc = openapi_document(app)
    refs = set(re.findall(r'"\$ref": "([^"]+)"', json.dumps(doc)))
    assert refs
    for ref in refs:
        node: Any = doc
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]
        assert isinstance(node, dict), ref
