"""The wire schema: every message on hpod's queues and HTTP routes, as pydantic models.

These models *are* the protocol: `hpod schema` exports their JSON Schema, the daemon validates
every request with them, whatever channel it came on, and a validation error names the field.
Messages carry names, ids and plain values only (JSON, never pickle).
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from hpod.errors import RequestRejected

PROTOCOL_VERSION = 1
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"
Scalar = str | int | float | bool | None


class WireModel(BaseModel):
    """Base of wire models: unknown fields and non-finite numbers are errors, not surprises."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


class Condition(WireModel):
    """Makes a parameter active only when an earlier parameter takes one of some values."""

    param: str = Field(description="Name of an earlier parameter in the space.")
    values: list[Scalar] = Field(min_length=1, description="The parent values that activate it.")


class FloatParam(WireModel):
    """A float in [low, high], optionally on a log scale or a grid of `step`."""

    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = Field(default=None, gt=0)
    condition: Condition | None = None

    @model_validator(mode="after")
    def _check_range(self) -> FloatParam:
        _check_bounds(self.low, self.high, self.log, self.step)
        return self


class IntParam(WireModel):
    """An integer in [low, high], optionally on a log scale or a grid of `step`."""

    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = Field(default=1, gt=0)
    condition: Condition | None = None

    @model_validator(mode="after")
    def _check_range(self) -> IntParam:
        _check_bounds(self.low, self.high, self.log, self.step if self.step != 1 else None)
        return self


class CategoricalParam(WireModel):
    """One of a non-empty list of distinct JSON scalars."""

    type: Literal["categorical"]
    choices: list[Scalar] = Field(min_length=1)
    condition: Condition | None = None

    @field_validator("choices")
    @classmethod
    def _distinct(cls, choices: list[Scalar]) -> list[Scalar]:
        keys = [json.dumps(c) for c in choices]
        if len(set(keys)) != len(keys):
            raise ValueError("choices must be distinct")
        return choices


def _check_bounds(low: float, high: float, log: bool, step: float | None) -> None:
    if low > high:
        raise ValueError(f"low ({low}) must not exceed high ({high})")
    if log and low <= 0:
        raise ValueError(f"log scale needs low > 0, got low={low}")
    if log and step is not None:
        raise ValueError("log and step cannot be used together")


ParamSpec = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]


class Budget(WireModel):
    """When a study stops asking: after `trials` trials and/or `seconds` of wall time."""

    trials: int | None = Field(default=None, gt=0, le=1_000_000)
    seconds: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _some_limit(self) -> Budget:
        if self.trials is None and self.seconds is None:
            raise ValueError("give trials, seconds or both")
        return self


class SamplerSpec(WireModel):
    """Which Optuna sampler asks, and its seed (for reproducible studies)."""

    name: Literal["tpe", "random", "qmc", "cmaes", "gp", "nsga2"] | None = Field(
        default=None, description="Omit to use the sampler of the study's mode."
    )
    seed: int | None = None


class PrunerSpec(WireModel):
    """Which Optuna pruner answers `should_prune()` in the workers."""

    name: Literal[
        "none", "median", "percentile", "patient", "successive_halving", "hyperband", "wilcoxon"
    ] = "median"
    n_startup_trials: int = Field(default=5, ge=0)
    n_warmup_steps: int = Field(default=0, ge=0)


Direction = Literal["minimize", "maximize"]


def _minimize() -> list[Direction]:
    return ["minimize"]


class StudySpec(WireModel):
    """Everything that defines a study; the same name with another spec is refused."""

    name: str = Field(pattern=NAME_PATTERN)
    objective: str | None = Field(
        default=None,
        pattern=NAME_PATTERN,
        description="Registered objective name; omit for a study evaluated only by ask/tell.",
    )
    objective_kwargs: dict[str, Any] = Field(default_factory=dict)
    space: dict[str, ParamSpec] = Field(min_length=1)
    directions: list[Direction] = Field(default_factory=_minimize, min_length=1, max_length=8)
    budget: Budget
    mode: str | None = Field(
        default=None,
        pattern=NAME_PATTERN,
        description="Omit for the daemon's default mode (balanced unless switched).",
    )
    max_concurrent: int | None = Field(
        default=None, gt=0, le=1024, description="Omit to use the parallelism of the mode."
    )
    trial_timeout: float = Field(default=600.0, gt=0, le=7 * 24 * 3600)
    sampler: SamplerSpec = Field(default_factory=SamplerSpec)
    pruner: PrunerSpec | None = Field(
        default=None, description="Omit to use the pruner of the study's mode."
    )
    strategy: str = Field(
        default="auto",
        pattern=NAME_PATTERN,
        description=(
            "Who picks the sampler, pruner and data ladder: 'auto' (the strategy policy, at "
            "the start and every window of trials), 'mode' (the mode's own), or the name of a "
            "strategy to force (GET /policy lists them). A spec that names its sampler or "
            "pruner keeps them: the policy does not override what the spec sets."
        ),
    )

    @field_validator("objective_kwargs")
    @classmethod
    def _finite_kwargs(cls, kwargs: dict[str, Any]) -> dict[str, Any]:
        try:
            json.dumps(kwargs, allow_nan=False)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"must be plain JSON with finite numbers ({exc})") from exc
        return kwargs

    @model_validator(mode="after")
    def _check_conditions(self) -> StudySpec:
        seen: dict[str, ParamSpec] = {}
        for name, param in self.space.items():
            cond = param.condition
            if cond is not None:
                parent = seen.get(cond.param)
                if parent is None:
                    raise RequestRejected(
                        "invalid",
                        f"study.space.{name}.condition.param",
                        f"unknown parameter {cond.param!r}: a condition must name an earlier "
                        "parameter of the space",
                    )
                if isinstance(parent, CategoricalParam):
                    missing = [v for v in cond.values if v not in parent.choices]
                    if missing:
                        raise RequestRejected(
                            "invalid",
                            f"study.space.{name}.condition.values",
                            f"{missing!r} are not choices of {cond.param!r}",
                        )
            seen[name] = param
        return self

    def canonical(self) -> str:
        """A stable JSON text of the spec, to compare two requests for the same study.

        Keys are sorted, except the space's: its order is meaning (conditions refer back).
        """
        data = self.model_dump(mode="json")
        data["space"] = list(data["space"].items())
        return json.dumps(data, sort_keys=True, separators=(",", ":"))


class Header(WireModel):
    """What every request carries besides its body: version, type and idempotency id."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False, frozen=True)

    v: int
    type: str
    id: str | None = Field(default=None, min_length=1, max_length=200)


class StudyCreate(WireModel):
    """Create (or idempotently re-create) a study and start it."""

    study: StudySpec


class StudyStop(WireModel):
    """Stop asking for new trials; trials in flight are still told."""

    name: str = Field(pattern=NAME_PATTERN)


class StudyPause(WireModel):
    """Dispatch no new trials until resumed; trials in flight are still told."""

    name: str = Field(pattern=NAME_PATTERN)


class StudyResume(WireModel):
    """Resume a paused study: it dispatches again up to its budget."""

    name: str = Field(pattern=NAME_PATTERN)


class StudyBudget(WireModel):
    """Change a study's budget live (more trials, fewer, or a time limit).

    A budget below the trials already created ends the study once its trials in flight are
    told; a study that had completed is not restarted (create a new study instead).
    """

    name: str = Field(pattern=NAME_PATTERN)
    budget: Budget


class TrialAsk(WireModel):
    """An external evaluator asks a study for a configuration to evaluate itself."""

    study: str = Field(pattern=NAME_PATTERN)


class TrialTell(WireModel):
    """An external evaluator tells the result of a trial it asked for."""

    study: str = Field(pattern=NAME_PATTERN)
    trial: int = Field(ge=0, description="The trial number returned by trial.ask.")
    state: Literal["complete", "pruned", "failed"] = "complete"
    values: list[float] | None = Field(default=None, min_length=1, max_length=8)

    @field_validator("values", mode="before")
    @classmethod
    def _single_value(cls, values: Any) -> Any:
        return [values] if isinstance(values, int | float) else values

    @model_validator(mode="after")
    def _values_when_complete(self) -> TrialTell:
        if self.state == "complete" and not self.values:
            raise RequestRejected("invalid", "values", "a complete trial needs values")
        return self


class TrialEnqueue(WireModel):
    """An app proposes a configuration to evaluate (e.g. today's production settings)."""

    study: str = Field(pattern=NAME_PATTERN)
    params: dict[str, Scalar] = Field(min_length=1)


class StudyStrategy(WireModel):
    """Change a running study's strategy live: 'auto', 'mode' or a strategy name."""

    name: str = Field(pattern=NAME_PATTERN)
    strategy: str = Field(pattern=NAME_PATTERN)


class ModeSet(WireModel):
    """Switch the mode of one study, or the default mode when `study` is omitted."""

    study: str | None = Field(default=None, pattern=NAME_PATTERN)
    mode: str = Field(pattern=NAME_PATTERN)


BODIES: dict[str, type[WireModel]] = {
    "study.create": StudyCreate,
    "study.stop": StudyStop,
    "study.pause": StudyPause,
    "study.resume": StudyResume,
    "study.budget": StudyBudget,
    "study.strategy": StudyStrategy,
    "trial.ask": TrialAsk,
    "trial.tell": TrialTell,
    "trial.enqueue": TrialEnqueue,
    "mode.set": ModeSet,
}

RequestBody = (
    StudyCreate
    | StudyStop
    | StudyPause
    | StudyResume
    | StudyBudget
    | StudyStrategy
    | TrialAsk
    | TrialTell
    | TrialEnqueue
    | ModeSet
)


class Request(BaseModel):
    """A validated request: its header fields and its typed body."""

    model_config = ConfigDict(frozen=True)

    type: str
    id: str | None
    body: RequestBody


def parse_request(raw: bytes | str | dict[str, Any], max_bytes: int = 1 << 20) -> Request:
    """Parse and validate one request; any problem raises `RequestRejected` naming the field."""
    data = raw if isinstance(raw, dict) else _load_json(raw, max_bytes)
    if not isinstance(data, dict):
        raise RequestRejected("invalid", "", "a request must be a JSON object")
    header = _validate(Header, data, prefix="")
    if header.v != PROTOCOL_VERSION:
        raise RequestRejected(
            "unsupported_version", "v", f"version {header.v} is not supported (use 1)"
        )
    body_model = BODIES.get(header.type)
    if body_model is None:
        known = ", ".join(sorted(BODIES))
        raise RequestRejected("unknown_type", "type", f"unknown type {header.type!r} ({known})")
    fields = {k: v for k, v in data.items() if k not in {"v", "type", "id"}}
    body = _validate(body_model, fields, prefix="")
    return Request(type=header.type, id=header.id, body=body)


def _load_json(raw: bytes | str, max_bytes: int) -> Any:
    size = len(raw.encode() if isinstance(raw, str) else raw)
    if size > max_bytes:
        raise RequestRejected("too_large", "", f"message of {size} bytes exceeds {max_bytes}")
    try:
        return json.loads(raw, parse_constant=_parse_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestRejected("not_json", "", f"not valid JSON: {exc}") from exc


def _parse_constant(name: str) -> float:
    # NaN and Infinity parse, so that validation can name the field that holds them.
    return float(name)


M = TypeVar("M", bound=BaseModel)


def _validate(model: type[M], data: Any, prefix: str) -> M:
    try:
        return model.model_validate(data)
    except RequestRejected:
        raise
    except ValidationError as exc:
        err = exc.errors()[0]
        raise RequestRejected("invalid", prefix + field_path(err["loc"]), err["msg"]) from exc


def field_path(loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as a dotted path, without discriminated-union tags."""
    parts = [str(p) for p in loc]
    if "space" in parts:
        i = parts.index("space")
        if len(parts) > i + 2 and parts[i + 2] in {"float", "int", "categorical"}:
            del parts[i + 2]
    return ".".join(parts)


def check_finite(values: list[float]) -> None:
    """Refuse NaN and infinities in result values (they poison every sampler)."""
    for i, v in enumerate(values):
        if not math.isfinite(v):
            raise RequestRejected("invalid", f"values.{i}", f"{v} is not a finite number")


def json_schema() -> dict[str, Any]:
    """The JSON Schema of every request type, as printed by `hpod schema`."""
    defs: dict[str, Any] = {}
    one_of = []
    for type_name, model in BODIES.items():
        schema = model.model_json_schema(ref_template="#/$defs/{model}")
        defs.update(schema.pop("$defs", {}))
        schema["properties"] = {
            "v": {"const": PROTOCOL_VERSION},
            "type": {"const": type_name},
            "id": {"type": "string", "description": "Idempotency id chosen by the sender."},
            **schema["properties"],
        }
        schema["required"] = ["v", "type", *schema.get("required", [])]
        defs[model.__name__] = schema
        one_of.append({"$ref": f"#/$defs/{model.__name__}"})
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "hpod request",
        "oneOf": one_of,
        "$defs": defs,
    }


STUDY_SPEC_ADAPTER: TypeAdapter[StudySpec] = TypeAdapter(StudySpec)
