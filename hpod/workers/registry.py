"""Objectives by registered name: the only way a message can name code to run.

Names come from the entry-point group ``hpod.objectives`` (installed packages declare theirs)
and from the worker's configured list (``name = "module:function"`` pairs written by the
operator). A message only carries the *name*; an import path inside a message is never
imported.

An objective declares the keyword arguments it accepts (a study's ``objective_kwargs``) as a
pydantic model in its attribute ``hpod_kwargs`` (a subclass of `ObjectiveKwargs`: strict,
unknown keys refused, bounds on every size). The daemon checks a study's kwargs against it at
``study.create`` (`ObjectiveRegistry.check_kwargs`), and the worker again before each call
(`checked_kwargs`): a kwarg that would exhaust a worker's memory is refused, named, at the edge.
An objective without the attribute takes any JSON kwargs, as before.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from typing import Any

import structlog
from pydantic import BaseModel, ValidationError

from hpod.errors import HpodError, RequestRejected, UnknownObjective
from hpod.workers.messages import Strict, validate

Objective = Callable[..., Any]
ENTRY_POINT_GROUP = "hpod.objectives"
#: An objective's attribute: the pydantic model of the keyword arguments it accepts.
KWARGS_ATTR = "hpod_kwargs"

log = structlog.get_logger("hpod.registry")


class ObjectiveKwargs(Strict):
    """Base of an objective's declared keyword arguments: strict types, no unknown keys,
    finite floats. Give every field bounds that keep one evaluation within a worker's means."""


class InvalidObjectiveKwargs(HpodError):
    """An objective's keyword arguments do not fit its declared schema."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"objective_kwargs.{key}: {message}" if key else message)
        self.key = key
        self.message = message


def kwargs_model(fn: Objective) -> type[BaseModel] | None:
    """The model an objective declares for its keyword arguments, if any."""
    model = getattr(fn, KWARGS_ATTR, None)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def checked_kwargs(fn: Objective, name: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """`kwargs` checked against `fn`'s declared model: the keys given, with their validated
    values (defaults stay the function's own); `InvalidObjectiveKwargs` naming the key."""
    model = kwargs_model(fn)
    if model is None:
        return dict(kwargs)
    try:
        checked = validate(model, dict(kwargs))
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        raise InvalidObjectiveKwargs(key, f"{err['msg']} (objective {name!r})") from None
    return checked.model_dump(exclude_unset=True)


def check_objective_kwargs(objective: Objective, kwargs: Mapping[str, Any]) -> None:
    """Refuse a study's ``objective_kwargs`` that do not fit `objective`'s declared schema:
    `RequestRejected` ("invalid", ``study.objective_kwargs.<key>``, what is wrong)."""
    name = getattr(objective, "__name__", "objective")
    try:
        checked_kwargs(objective, name, kwargs)
    except InvalidObjectiveKwargs as exc:
        field = "study.objective_kwargs" + (f".{exc.key}" if exc.key else "")
        raise RequestRejected("invalid", field, exc.message) from None


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

    def check_kwargs(self, name: str, kwargs: Mapping[str, Any]) -> None:
        """`check_objective_kwargs` for the objective registered as `name` (the daemon, at
        ``study.create``). An objective that cannot be loaded here (installed on the workers
        only) is not checked here: its workers check before every call."""
        try:
            fn = self.get(name)
        except Exception as exc:  # a module that fails to import here is the workers' concern
            log.warning("objective.kwargs_unchecked", objective=name, error=repr(exc))
            return
        check_objective_kwargs(fn, kwargs)


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
