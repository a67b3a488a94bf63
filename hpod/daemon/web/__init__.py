"""The live web page, served by the daemon itself on its API address.

`add_web_routes` adds to the HTTP API app:

* ``/``: the overview: every study's state, mode, progress, best value and throughput, the
  in-flight trials, the workers, queue depths and resources;
* ``/study/{name}``: one study: best value over trials, every trial (pruned and failed
  marked), intermediate values, parallel coordinates, parameter importances, the Pareto
  front of multi-objective studies, and the actions (switch mode, stop);
* ``/static/{file}``: the page's scripts and styles, and Plotly.js from the installed
  ``plotly`` package (no CDN, nothing from the internet);
* ``/events``: the daemon's events as Server-Sent Events (live updates; at most
  ``max_event_streams`` at once);
* ``/studies/{name}/trials`` and ``/studies/{name}/importance``: read-only data.

Everything here reads; the page's actions go to ``POST /requests`` with the API token.
"""

from __future__ import annotations

from aiohttp import web

from hpod.daemon.web.events import (
    MAX_STREAMS,
    STREAM_LIMIT,
    SUBSCRIPTIONS,
    close_streams,
    event_stream,
)
from hpod.daemon.web.routes import (
    overview_page,
    static_file,
    study_importance,
    study_page,
    study_trials,
)

__all__ = ["add_web_routes"]


def add_web_routes(app: web.Application, max_streams: int = MAX_STREAMS) -> None:
    """Register the web page's routes (and the shutdown hook of its event streams); at most
    `max_streams` event streams are open at once."""
    app[SUBSCRIPTIONS] = set()
    app[STREAM_LIMIT] = max_streams
    app.on_shutdown.append(close_streams)
    app.add_routes(
        [
            web.get("/", overview_page),
            web.get("/study/{name}", study_page),
            web.get("/static/{file}", static_file),
            web.get("/events", event_stream, allow_head=False),
            web.get("/studies/{name}/trials", study_trials),
            web.get("/studies/{name}/importance", study_importance),
        ]
    )
