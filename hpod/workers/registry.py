"""Objectives by registered name: the only way a message can name code to run.

Names come from the entry-point group ``hpod.objectives`` (installed packages declare theirs)
and from the worker's configured list (``name = "module:function"`` pairs written by the
operator). A message only carries the *name*; an import path inside a message is never
imported.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from typing import Any

from hpod.errors import UnknownObjective

Objective = Callable[..., Any]
ENTRY_POINT_GROUP = "hpod.objectives"


class ObjectiveRegistry:
    """Maps objective names to callables, loading each lazily on first use."""

    def __init__(self, configured: Mapping[str, str] | None = None) -> None:
        self._targets: dict[str, str] = {
            ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)
        }
        self._targets.update(configured or {})
        self._loaded: dict[str, Objective] = {}

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        return sorted(self._targets)

    def __contains__(self, name: object) -> bool:
        return name in self._targets

    def get(self, name: str) -> Objective:
        """The objective registered as `name`; `UnknownObjective` if there is none."""
        if name not in self._targets:
            raise UnknownObjective(
                f"unknown objective {name!r}; registered: {', '.join(self.names()) or 'none'}"
            )
        if name not in self._loaded:
            self._loaded[name] = _load(self._targets[name])
        return self._loaded[name]


def _load(target: str) -> Objective:
    module_name, _, attr = target.partition(":")
    if not attr:
        raise UnknownObjective(f"objective target {target!r} must be 'module:function'")
    obj = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise UnknownObjective(f"objective target {target!r} is not callable")
    return obj
