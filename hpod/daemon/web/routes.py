"""The web page's routes: the two pages, their static files and their read-only data.

The pages are plain HTML shells; the browser fills them from the JSON API (`GET /studies`,
`GET /studies/{name}`, the routes below) and keeps them current from `GET /events`. A few
facts the page needs before its first request (the daemon's version, its modes, the request
types it accepts) are written into the shell as JSON. Actions go to the existing
`POST /requests` with the API token; nothing here changes state.

Plotly.js is served from the installed `plotly` Python package, not a CDN: the page works
with no internet access.
"""

from __future__ import annotations

import asyncio
import gzip
import html
import importlib.metadata
import importlib.util
import json
from functools import cache
from pathlib import Path
from typing import Any

from aiohttp import web

from hpod import __version__
from hpod.daemon.manager import StudyManager
from hpod.daemon.web.data import MAX_TRIALS_PER_PAGE, compute_importance, read_trials
from hpod.daemon.web.keys import MANAGER
from hpod.errors import RequestRejected
from hpod.schema import BODIES

STATIC = Path(__file__).parent / "static"
#: Files of `STATIC` served under /static/ (the HTML shells are served only as pages).
SERVED_SUFFIXES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
PLOTLY = "plotly.min.js"
TRIAL_STATES = ("complete", "pruned", "fail", "running", "waiting", "dropped")

#: No request leaves the daemon's origin. Plotly needs inline styles, and its WebGL plots
#: (parallel coordinates) compile functions from strings ('unsafe-eval').
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-eval'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

_plotly_gzip: dict[str, bytes] = {}


def _manager(request: web.Request) -> StudyManager:
    return request.app[MANAGER]


# --- pages ---------------------------------------------------------------------------


def _template(name: str) -> str:
    # Read on every request (5 KB), like the scripts: the shell and its scripts always
    # come from the same installed version.
    return (STATIC / name).read_text(encoding="utf-8")


@cache
def request_types() -> dict[str, dict[str, list[str]]]:
    """The request types the daemon accepts, with their fields: the page shows an action
    only for a type listed here (pause, resume and budget appear once the daemon has them)."""
    types = {}
    for type_name, model in BODIES.items():
        schema = model.model_json_schema()
        types[type_name] = {
            "properties": sorted(schema.get("properties", {})),
            "required": sorted(schema.get("required", [])),
        }
    return types


def page_config(manager: StudyManager, study: str | None) -> dict[str, Any]:
    """What the page needs to know before its first request."""
    return {
        "version": __version__,
        "study": study,
        "modes": sorted(manager.modes_in_force.modes),
        "default_mode": manager.modes_in_force.default,
        "requests": request_types(),
    }


def _render(name: str, config: dict[str, Any], status: int = 200) -> web.Response:
    # JSON inside <script type="application/json">: escape what could close the element.
    data = json.dumps(config).replace("<", "\\u003c").replace(">", "\\u003e")
    data = data.replace("&", "\\u0026")
    body = _template(name).replace("{{CONFIG}}", data).replace("{{VERSION}}", __version__)
    return web.Response(
        text=body, content_type="text/html", charset="utf-8", status=status, headers=PAGE_HEADERS
    )


async def overview_page(request: web.Request) -> web.Response:
    """GET /: every study at a glance, the workers and the daemon's resources."""
    return _render("overview.html", page_config(_manager(request), None))


async def study_page(request: web.Request) -> web.Response:
    """GET /study/{name}: one study's plots, trials and actions."""
    manager = _manager(request)
    name = request.match_info["name"]
    try:
        await manager.store.call(manager.store.spec, name)
    except RequestRejected:
        body = (
            "<!doctype html><meta charset=utf-8><title>hpod: no such study</title>"
            f"<p>No hpod study named <code>{html.escape(name)}</code>. "
            "<a href='/'>All studies</a></p>"
        )
        return web.Response(text=body, content_type="text/html", status=404, headers=PAGE_HEADERS)
    return _render("study.html", page_config(manager, name))


# --- static files --------------------------------------------------------------------


def plotly_path() -> Path | None:
    """plotly.min.js inside the installed `plotly` package (found without importing it)."""
    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "package_data" / PLOTLY
    return path if path.is_file() else None


async def static_file(request: web.Request) -> web.StreamResponse:
    """GET /static/{file}: the page's scripts and styles, and Plotly.js."""
    name = request.match_info["file"]
    if name == PLOTLY:
        return await _plotly(request)
    path = STATIC / name
    if Path(name).name != name or path.suffix not in SERVED_SUFFIXES or not path.is_file():
        raise web.HTTPNotFound(text=f"no static file {name!r}")
    return web.FileResponse(
        path,
        headers={
            "Content-Type": SERVED_SUFFIXES[path.suffix],
            "Cache-Control": "no-cache",  # revalidated (Last-Modified): an upgrade shows at once
            "X-Content-Type-Options": "nosniff",
        },
    )


async def _plotly(request: web.Request) -> web.StreamResponse:
    """plotly.min.js, gzip-compressed once in memory (4.8 MB becomes 1.4 MB)."""
    path = plotly_path()
    if path is None:
        raise web.HTTPNotFound(text="plotly is not installed: pip install 'plotly>=6'")
    etag = f'"plotly-{importlib.metadata.version("plotly")}-{path.stat().st_size}"'
    headers = {
        "Content-Type": "text/javascript",
        "Cache-Control": "public, max-age=86400",
        "ETag": etag,
        "Vary": "Accept-Encoding",
        "X-Content-Type-Options": "nosniff",
    }
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers=headers)
    if "gzip" not in request.headers.get("Accept-Encoding", ""):
        return web.FileResponse(path, headers=headers)
    body = _plotly_gzip.get(etag)
    if body is None:
        raw = await asyncio.to_thread(path.read_bytes)
        body = _plotly_gzip[etag] = await asyncio.to_thread(gzip.compress, raw, 6)
    return web.Response(body=body, headers={**headers, "Content-Encoding": "gzip"})


# --- data ----------------------------------------------------------------------------


def _int_query(request: web.Request, field: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(field)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise RequestRejected("invalid", field, f"{field} must be an integer") from None
    if not low <= value <= high:
        raise RequestRejected("invalid", field, f"{field} must be between {low} and {high}")
    return value


async def study_trials(request: web.Request) -> web.Response:
    """GET /studies/{name}/trials[?from=N&limit=L&state=S]: trials with their values,
    parameters, intermediate values, duration and completion time."""
    manager = _manager(request)
    first = _int_query(request, "from", 0, 0, 2**31)
    limit = _int_query(request, "limit", MAX_TRIALS_PER_PAGE, 1, MAX_TRIALS_PER_PAGE)
    state = request.query.get("state")
    if state is not None and state not in TRIAL_STATES:
        raise RequestRejected("invalid", "state", f"state must be one of {', '.join(TRIAL_STATES)}")
    spec = await manager.store.call(manager.store.spec, request.match_info["name"])
    body = await manager.store.call(read_trials, manager.store, spec, first, limit, state)
    return web.json_response(body)


async def study_importance(request: web.Request) -> web.Response:
    """GET /studies/{name}/importance[?objective=i]: how much each parameter matters."""
    manager = _manager(request)
    spec = await manager.store.call(manager.store.spec, request.match_info["name"])
    objective = _int_query(request, "objective", 0, 0, len(spec.directions) - 1)
    body = await manager.store.call(compute_importance, manager.store, spec, objective)
    return web.json_response(body)
