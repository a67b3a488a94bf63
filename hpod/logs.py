"""Structured logging (structlog): JSON lines for journald, console lines on a terminal.

Every line carries the ids bound in its context (``study``, ``trial``, ``request``: see
`bind_ids`), and no line carries a secret: passwords inside URLs are masked whatever field
they appear in. The level can be changed while the daemon runs (SIGHUP reload).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any

import structlog

_URL_PASSWORD = re.compile(r"(\w+://[^:/@\s]*:)[^@\s]*@")


def redact_secrets(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Mask ``user:password@`` in every string of the event (broker and storage URLs)."""
    for key, value in event.items():
        if isinstance(value, str) and "@" in value:
            event[key] = _URL_PASSWORD.sub(r"\1***@", value)
    return event


def configure_logging(fmt: str = "auto", level: str = "info") -> None:
    """Route structlog and the standard library's logging to stdout in one format."""
    json_lines = fmt == "json" or (fmt == "auto" and not sys.stdout.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if json_lines
        else structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
    )
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso"),
        structlog.processors.format_exc_info,
        redact_secrets,
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=shared,
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    set_level(level)


def set_level(level: str) -> None:
    """Change the log level of the running process."""
    logging.getLogger().setLevel(level.upper())


@contextmanager
def bind_ids(**ids: Any) -> Iterator[None]:
    """Bind ids (study, trial, request) to every log line written inside the block."""
    present = {k: v for k, v in ids.items() if v is not None}
    with structlog.contextvars.bound_contextvars(**present):
        yield
