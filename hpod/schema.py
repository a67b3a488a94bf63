"""The wire schema: every message on hpod's queues and HTTP routes, as pydantic models.

These models *are* the protocol: `hpod schema` exports their JSON Schema, the daemon validates
every request with them, whatever channel it came on, and a validation error names the field.
Messages carry names, ids and plain values only (JSON, never pickle).
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Callable
from functools import lru_cache
from typing import Annotated, Any, Literal, TypeVar

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from hpod.errors import RequestRejected

# Validation builds throwaway Optuna studies (see _sample_error): not worth a log line each.
optuna.logging.set_verbosity(optuna.logging.WARNING)

PROTOCOL_VERSION = 1
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"

# --- Limits on what one request may carry (docs/protocol.md, "Limits and strictness") -----
# Each is generous for real use and small enough that no request can make the daemon, a
# sampler or a worker spend unbounded memory or time on it.

#: JSON nesting of a whole message. The deepest valid request (an objective_kwargs value
#: MAX_KWARGS_DEPTH deep inside study.create) is 11 levels; the stdlib parser would recurse
#: until RecursionError, so hpod refuses anything deeper before parsing.
MAX_JSON_DEPTH = 32
#: Integers anywhere in a request: I-JSON's interoperable range (RFC 7493), the integers a
#: float holds exactly (Optuna keeps every parameter as a float internally).
MAX_INT = 2**53 - 1
#: Characters in any one string (or object key) of a request.
MAX_STRING_CHARS = 1024
#: Characters in a parameter name.
MAX_PARAM_NAME_CHARS = 128
#: Parameters in a space (and in one trial.enqueue): past a few dozen no sampler hpod offers
#: searches usefully, and every trial's storage and features grow with it.
MAX_PARAMS = 256
#: Choices of a categorical parameter, and values of a condition: TPE and GP cost grows with
#: the choices; a larger set is a different parameter type (an int index, say).
MAX_CHOICES = 1024
#: Points of a float parameter's `step` grid: beyond this the grid is a continuous float,
#: and Optuna's decimal arithmetic on the grid breaks down near 10**28.
MAX_STEP_POINTS = 10**9
#: Points of a discrete parameter's grid under the GP sampler, which enumerates every point
#: (8 bytes each) when it optimises its acquisition function.
MAX_GP_GRID_POINTS = 10**6
#: Objectives of a study (values of one tell).
MAX_DIRECTIONS = 8
#: objective_kwargs as compact JSON, and its nesting: keyword arguments are settings, not data.
MAX_KWARGS_BYTES = 16 * 1024
MAX_KWARGS_DEPTH = 8
#: The shortest trial_timeout: Celery's pool checks time limits once a second (billiard's
#: TimeoutHandler sleeps 1.0 s between checks), so a shorter limit is not honoured.
MIN_TRIAL_TIMEOUT = 1.0
#: The longest trial_timeout and time budget.
MAX_TRIAL_TIMEOUT = 7 * 24 * 3600
MAX_BUDGET_SECONDS = 10 * 365 * 24 * 3600
#: The largest CPU budget: ten years on 1,024 cores.
MAX_BUDGET_CPU_SECONDS = MAX_BUDGET_SECONDS * 1024
#: The largest budget in trials, and in full-evaluation equivalents.
MAX_BUDGET_TRIALS = 1_000_000
#: Sampler seeds: numpy's RandomState accepts exactly 0 … 2**32 - 1.
MAX_SEED = 2**32 - 1


def _check_scalar(value: Any) -> Any:
    """Refuse scalars that would pass as JSON but not through Optuna or storage."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int) and not -MAX_INT <= value <= MAX_INT:
        raise ValueError(f"integer out of range ±(2**53 - 1): {_short(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{value} is not a finite number")
    if isinstance(value, str):
        _check_text(value)
    return value


def _check_text(value: str) -> None:
    if len(value) > MAX_STRING_CHARS:
        raise ValueError(f"string of {len(value)} characters exceeds {MAX_STRING_CHARS}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"string is not valid Unicode ({exc.reason})") from exc


def _short(value: Any) -> str:
    if isinstance(value, int) and abs(value) >= 10**30:
        return f"{'-' if value < 0 else ''}~2**{value.bit_length() - 1}"
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


#: A JSON scalar as a choice, condition value or enqueued parameter value (strictly typed:
#: true stays a bool, 1 an int, 1.0 a float).
Scalar = Annotated[str | int | float | bool | None, BeforeValidator(_check_scalar)]
#: A parameter's name (a key of the space).
ParamName = Annotated[str, StringConstraints(min_length=1, max_length=MAX_PARAM_NAME_CHARS)]
#: An integer field of the wire: a JSON integer (never a bool or a float), in I-JSON's range.
WireInt = Annotated[int, Field(strict=True, ge=-MAX_INT, le=MAX_INT)]


class WireModel(BaseModel):
    """Base of wire models: unknown fields, non-finite numbers and coercions are errors.

    Strict: a bool is never a number, a float never an int (so -0.0 and 1e-400 are not the
    integer 0), a string never a number; an int is accepted where a float is wanted.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True, strict=True)


class Condition(WireModel):
    """Makes a parameter active only when an earlier parameter takes one of some values."""

    param: ParamName = Field(description="Name of an earlier parameter in the space.")
    values: list[Scalar] = Field(
        min_length=1, max_length=MAX_CHOICES, description="The parent values that activate it."
    )


class FloatParam(WireModel):
    """A float in [low, high], optionally on a log scale or a grid of `step`."""

    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = Field(default=None, gt=0)
    condition: Condition | None = None

    @field_validator("step")
    @classmethod
    def _step_grid(cls, step: float | None, info: ValidationInfo) -> float | None:
        low, high = info.data.get("low"), info.data.get("high")
        if step is None or low is None or high is None or not math.isfinite(high - low):
            return step  # an overflowing range is the range's error (_check_range)
        if high > low:
            points = (high - low) / step
            if not points <= MAX_STEP_POINTS:  # also catches inf and nan
                raise ValueError(
                    f"step {step} splits [{low}, {high}] into more than {MAX_STEP_POINTS} points"
                )
        return step

    @model_validator(mode="after")
    def _check_range(self) -> FloatParam:
        _check_bounds(self.low, self.high, self.log, self.step)
        _check_sampleable(("float", self.low, self.high, self.log, self.step))
        return self


class IntParam(WireModel):
    """An integer in [low, high], optionally on a log scale or a grid of `step`."""

    type: Literal["int"]
    low: WireInt
    high: WireInt
    log: bool = False
    step: WireInt = Field(default=1, gt=0)
    condition: Condition | None = None

    @model_validator(mode="after")
    def _check_range(self) -> IntParam:
        _check_bounds(self.low, self.high, self.log, self.step if self.step != 1 else None)
        _check_sampleable(("int", self.low, self.high, self.log, self.step))
        return self

    def grid_points(self) -> int:
        """How many values the parameter can take."""
        return (self.high - self.low) // self.step + 1


class CategoricalParam(WireModel):
    """One of a non-empty list of distinct JSON scalars."""

    type: Literal["categorical"]
    choices: list[Scalar] = Field(min_length=1, max_length=MAX_CHOICES)
    condition: Condition | None = None

    @field_validator("choices")
    @classmethod
    def _distinct(cls, choices: list[Scalar]) -> list[Scalar]:
        keys = [json.dumps(c) for c in choices]
        if len(set(keys)) != len(keys):
            raise ValueError("choices must be distinct")
        _check_sampleable(("categorical", *keys))
        return choices


def _check_bounds(low: float, high: float, log: bool, step: float | None) -> None:
    if low > high:
        raise ValueError(f"low ({low}) must not exceed high ({high})")
    if log and low <= 0:
        raise ValueError(f"log scale needs low > 0, got low={low}")
    if log and step is not None:
        raise ValueError("log and step cannot be used together")


def _check_sampleable(key: tuple[Any, ...]) -> None:
    """Refuse a parameter that Optuna cannot build or sample (raises ValueError saying why).

    The proof is Optuna's own: build the distribution and draw one value from it in a
    throwaway in-memory study, so whatever Optuna cannot handle (a range that overflows, a
    step its decimal arithmetic cannot divide, an unencodable choice) is refused here, at
    the edge, instead of crashing the study loop and every later start.
    """
    error = _sample_error(key)
    if error is not None:
        raise ValueError(f"Optuna cannot sample this parameter ({error})")


@lru_cache(maxsize=4096)
def _sample_error(key: tuple[Any, ...]) -> str | None:
    """The error of building and drawing the distribution `key` describes, or None.

    Cached: the same parameters are validated again whenever a stored spec is loaded.
    """
    try:
        with warnings.catch_warnings():
            # e.g. "high is adjusted to a multiple of step": not an error.
            warnings.simplefilter("ignore")
            distribution = _distribution(key)
            study = optuna.create_study(
                storage=optuna.storages.InMemoryStorage(),
                sampler=optuna.samplers.RandomSampler(seed=0),
            )
            value = study.ask({"p": distribution}).params["p"]
            distribution.to_internal_repr(value)
    except Exception as exc:  # any failure of Optuna's is the answer, not a crash
        return f"{type(exc).__name__}: {exc}"
    return None


def _distribution(key: tuple[Any, ...]) -> BaseDistribution:
    kind, *args = key
    if kind == "float":
        low, high, log, step = args
        return FloatDistribution(low, high, log=log, step=step)
    if kind == "int":
        low, high, log, step = args
        return IntDistribution(low, high, log=log, step=step)
    return CategoricalDistribution([json.loads(choice) for choice in args])


ParamSpec = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]


def check_gp_grid(space: dict[str, ParamSpec], prefix: str) -> None:
    """Refuse a space the GP sampler would exhaust memory on: it enumerates every point of
    a discrete parameter. Call it too before switching a live study to GP (mode, strategy).
    """
    for name, param in space.items():
        points = _grid_points(param)
        if points > MAX_GP_GRID_POINTS:
            raise RequestRejected(
                "invalid",
                f"{prefix}.{name}",
                f"{points} grid points; the GP sampler enumerates them, so at most "
                f"{MAX_GP_GRID_POINTS} (widen step, or use another sampler)",
            )


def _grid_points(param: FloatParam | IntParam | CategoricalParam) -> int:
    """Points of a discrete parameter's grid (0 for a continuous float)."""
    if isinstance(param, IntParam):
        return param.grid_points()
    if isinstance(param, FloatParam) and param.step is not None:
        return int((param.high - param.low) // param.step) + 1
    return 0


class Budget(WireModel):
    """When a study stops asking: as soon as any limit given is spent.

    `trials` counts every trial created; `seconds` is wall time since the study was created;
    `cpu_seconds` and `full_evaluations` are compute, so pruned, partial and cached trials
    spend only what they cost (definitions: `hpod.daemon.budget`, docs/protocol.md).
    """

    trials: int | None = Field(default=None, gt=0, le=MAX_BUDGET_TRIALS)
    seconds: float | None = Field(default=None, gt=0, le=MAX_BUDGET_SECONDS)
    cpu_seconds: float | None = Field(
        default=None,
        gt=0,
        le=MAX_BUDGET_CPU_SECONDS,
        description="CPU seconds the trials' evaluations may spend (a cache hit spends 0).",
    )
    full_evaluations: float | None = Field(
        default=None,
        gt=0,
        le=MAX_BUDGET_TRIALS,
        description=(
            "Full-evaluation equivalents the trials may spend: CPU seconds spent over the "
            "mean CPU seconds of the study's complete full-fidelity evaluations."
        ),
    )

    @model_validator(mode="after")
    def _some_limit(self) -> Budget:
        if all(getattr(self, name) is None for name in BUDGET_LIMITS):
            raise ValueError("give at least one of trials, seconds, cpu_seconds, full_evaluations")
        return self

    def compute_limit(self) -> str | None:
        """The name of the first limit given in compute, or None."""
        return next((n for n in COMPUTE_LIMITS if getattr(self, n) is not None), None)


#: The limits a budget may give, and those of them measured in compute.
BUDGET_LIMITS = ("trials", "seconds", "cpu_seconds", "full_evaluations")
COMPUTE_LIMITS = ("cpu_seconds", "full_evaluations")


def check_compute_budget(budget: Budget, objective: str | None, prefix: str) -> None:
    """Refuse a budget in compute for a study without an objective: its trials are told
    from outside (ask/tell), which report no cost, so the budget would never be spent."""
    limit = budget.compute_limit()
    if limit is not None and objective is None:
        raise RequestRejected(
            "invalid",
            f"{prefix}.{limit}",
            "a budget in compute needs an objective: trials told from outside report no "
            "cost (give trials or seconds)",
        )


class SamplerSpec(WireModel):
    """Which Optuna sampler asks, and its seed (for reproducible studies)."""

    name: Literal["tpe", "random", "qmc", "cmaes", "gp", "nsga2"] | None = Field(
        default=None, description="Omit to use the sampler of the study's mode."
    )
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)


class PrunerSpec(WireModel):
    """Which Optuna pruner answers `should_prune()` in the workers."""

    name: Literal[
        "none", "median", "percentile", "patient", "successive_halving", "hyperband", "wilcoxon"
    ] = "median"
    n_startup_trials: int = Field(default=5, ge=0, le=1_000_000)
    n_warmup_steps: int = Field(default=0, ge=0, le=MAX_INT)


Direction = Literal["minimize", "maximize"]


def _minimize() -> list[Direction]:
    return ["minimize"]


#: Past studies a study may name in `transfer`.
MAX_TRANSFER_SOURCES = 20
TransferSetting = (
    Literal["auto", "off"]
    | Annotated[
        list[Annotated[str, Field(pattern=NAME_PATTERN)]],
        Field(min_length=1, max_length=MAX_TRANSFER_SOURCES),
    ]
)


def _check_transfer(value: Any) -> Any:
    """`transfer` is "auto", "off" or a non-empty list of distinct study names; checked here
    so that every refusal names the field itself (`study.transfer`), not a branch of the union."""
    if value in ("auto", "off"):
        return value
    if not isinstance(value, list):
        raise ValueError('must be "auto", "off" or a list of study names')
    if not 1 <= len(value) <= MAX_TRANSFER_SOURCES:
        raise ValueError(f"a list of 1 to {MAX_TRANSFER_SOURCES} study names")
    for name in value:
        if not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name):
            raise ValueError(f"{_short(json.dumps(name))} is not a study name")
    if len(set(value)) != len(value):
        raise ValueError("study names must be distinct")
    return value


class StudySpec(WireModel):
    """Everything that defines a study; the same name with another spec is refused."""

    name: str = Field(pattern=NAME_PATTERN)
    objective: str | None = Field(
        default=None,
        pattern=NAME_PATTERN,
        description="Registered objective name; omit for a study evaluated only by ask/tell.",
    )
    objective_kwargs: dict[str, Any] = Field(default_factory=dict)
    space: dict[ParamName, ParamSpec] = Field(min_length=1, max_length=MAX_PARAMS)
    directions: list[Direction] = Field(
        default_factory=_minimize, min_length=1, max_length=MAX_DIRECTIONS
    )
    budget: Budget
    mode: str | None = Field(
        default=None,
        pattern=NAME_PATTERN,
        description="Omit for the daemon's default mode (balanced unless switched).",
    )
    max_concurrent: int | None = Field(
        default=None, gt=0, le=1024, description="Omit to use the parallelism of the mode."
    )
    trial_timeout: float = Field(
        default=600.0,
        ge=MIN_TRIAL_TIMEOUT,
        le=MAX_TRIAL_TIMEOUT,
        description="Seconds a trial may run (at least 1: Celery checks time limits each second).",
    )
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
    transfer: Annotated[TransferSetting, BeforeValidator(_check_transfer)] = Field(
        default="auto",
        description=(
            "Warm start from past studies: 'auto' (the most similar finished studies of the same "
            "objective), 'off' (start cold), or the names of the past studies to learn from. "
            "See docs/transfer.md."
        ),
    )

    @field_validator("objective_kwargs")
    @classmethod
    def _finite_kwargs(cls, kwargs: dict[str, Any]) -> dict[str, Any]:
        check_json_values(kwargs, "", MAX_KWARGS_DEPTH, ValueError)
        try:
            text = json.dumps(kwargs, allow_nan=False, separators=(",", ":"))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"must be plain JSON with finite numbers ({exc})") from exc
        if len(text.encode()) > MAX_KWARGS_BYTES:
            raise ValueError(f"{len(text.encode())} bytes of JSON exceed {MAX_KWARGS_BYTES}")
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
                if isinstance(parent, CategoricalParam):  # compared as JSON: 1 is not true
                    keys = {json.dumps(c) for c in parent.choices}
                    missing = [v for v in cond.values if json.dumps(v) not in keys]
                    if missing:
                        raise RequestRejected(
                            "invalid",
                            f"study.space.{name}.condition.values",
                            f"{missing!r} are not choices of {cond.param!r}",
                        )
            seen[name] = param
        return self

    @model_validator(mode="after")
    def _check_compute_budget(self) -> StudySpec:
        check_compute_budget(self.budget, self.objective, "study.budget")
        return self

    @model_validator(mode="after")
    def _check_transfer_sources(self) -> StudySpec:
        if isinstance(self.transfer, list) and self.name in self.transfer:
            raise RequestRejected(
                "invalid", "study.transfer", f"study {self.name!r} cannot learn from itself"
            )
        return self

    @model_validator(mode="after")
    def _check_gp_grid(self) -> StudySpec:
        if "gp" in (self.sampler.name, self.strategy):
            check_gp_grid(self.space, "study.space")
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

    model_config = ConfigDict(extra="allow", allow_inf_nan=False, frozen=True, strict=True)

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
    trial: int = Field(ge=0, le=MAX_INT, description="The trial number returned by trial.ask.")
    state: Literal["complete", "pruned", "failed"] = "complete"
    values: list[float] | None = Field(default=None, min_length=1, max_length=MAX_DIRECTIONS)

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
    params: dict[ParamName, Scalar] = Field(min_length=1, max_length=MAX_PARAMS)


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


def parse_request(raw: Any, max_bytes: int = 1 << 20) -> Request:
    """Parse and validate one request; any problem raises `RequestRejected` naming the field.

    `raw` is the message as received (bytes or str), or a value already parsed by
    `load_json` (HTTP routes wrap their body in an envelope first).
    """
    data = load_json(raw, max_bytes) if isinstance(raw, bytes | str) else raw
    if not isinstance(data, dict):
        raise RequestRejected("invalid", "", "a request must be a JSON object")
    check_json_values(data, "", MAX_JSON_DEPTH, None)
    header = _validate(Header, data, prefix="")
    if header.v != PROTOCOL_VERSION:
        raise RequestRejected(
            "unsupported_version", "v", f"version {header.v} is not supported (use 1)"
        )
    body_model = BODIES.get(header.type)
    if body_model is None:
        known = ", ".join(sorted(BODIES))
        raise RequestRejected(
            "unknown_type", "type", f"unknown type {_short(repr(header.type))} ({known})"
        )
    fields = {k: v for k, v in data.items() if k not in {"v", "type", "id"}}
    body = _validate(body_model, fields, prefix="")
    return Request(type=header.type, id=header.id, body=body)


def load_json(raw: bytes | str, max_bytes: int, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse one message of untrusted JSON: its size first, then its depth, then the parse.

    Every parse of input goes through here (queue messages, HTTP bodies, the intake's look
    at ids), so no input can make the parser recurse or spend time on an oversized message.
    Raises `RequestRejected`: ``too_large``, or ``not_json`` (also for nesting too deep).
    """
    size = len(raw) if isinstance(raw, bytes) else len(raw.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise RequestRejected("too_large", "", f"message of {size} bytes exceeds {max_bytes}")
    text = _decode_utf8(raw) if isinstance(raw, bytes) else raw
    _check_depth(text, max_depth)
    try:
        return json.loads(text, parse_constant=_parse_constant)
    except json.JSONDecodeError as exc:
        raise RequestRejected("not_json", "", f"not valid JSON: {exc}") from exc
    except ValueError as exc:  # an integer past Python's 4,300-digit conversion limit
        raise RequestRejected("invalid", "", f"a number is out of range: {exc}") from exc
    except RecursionError as exc:  # unreachable after _check_depth; never let it escape
        raise RequestRejected("not_json", "", "JSON nested too deep") from exc


def _decode_utf8(raw: bytes) -> str:
    """The message's text, read as UTF-8, the protocol's one encoding (RFC 8259 §8.1).

    json.loads would detect and accept UTF-16 and UTF-32 and skip a UTF-8 byte order mark;
    those are refused here (`not_json`, saying what was found), so a sender learns of a
    wrong encoding at once instead of depending on a leniency. ``surrogatepass`` lets an
    encoded lone surrogate through to `check_json_values`, which names its field.
    """
    found = json.detect_encoding(raw)  # BOMs, and NUL bytes, which UTF-8 JSON never holds
    if found == "utf-8-sig":
        raise RequestRejected(
            "not_json",
            "",
            "not valid JSON: it starts with a byte order mark (send UTF-8 without one)",
        )
    if found != "utf-8":
        raise RequestRejected(
            "not_json", "", f"not valid JSON: it looks like {found.upper()} (send UTF-8)"
        )
    try:
        return raw.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError as exc:
        raise RequestRejected("not_json", "", f"not valid JSON: not UTF-8: {exc}") from exc


_BRACKETS = re.compile(r"[\[\]{}]")
#: The C string scanner behind json.loads: returns (string, index after its closing quote).
_scanstring: Callable[[str, int], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]


def _check_depth(text: str, max_depth: int) -> None:
    """Refuse JSON nested deeper than `max_depth`, before any parser recurses into it.

    Written by hand because the standard library's parser has no depth limit (a 2 KB array
    nested 1,000 deep raises RecursionError), and pydantic-core's parser, which stops at a
    fixed 200 levels, refuses a lone surrogate as a parse error (so the field holding it could
    not be named, as `check_json_values` does) and cannot take the protocol's 32. It counts
    [ and { outside strings: strings are skipped with the C scanner json.loads itself uses,
    and the text between two strings is scanned bracket by bracket only when its opening
    brackets could reach the limit, so a normal message costs a few str.count
    per string (at worst ~0.3 s for a 1 MiB message of tiny strings; bounded by the size).
    """
    if text.count("[") + text.count("{") <= max_depth:
        return  # even counting brackets inside strings, it cannot go deeper
    depth, pos, end = 0, 0, len(text)
    while pos < end:
        quote = text.find('"', pos)
        stop = end if quote < 0 else quote
        depth = _segment_depth(text, pos, stop, depth, max_depth)
        if quote < 0:
            return
        try:
            pos = _scanstring(text, quote + 1)[1]
        except ValueError:
            return  # a malformed string: json.loads stops there and says where


def _segment_depth(text: str, start: int, stop: int, depth: int, max_depth: int) -> int:
    """The depth after text[start:stop] (no strings in it), or refuse it for going too deep."""
    opens = text.count("[", start, stop) + text.count("{", start, stop)
    if depth + opens <= max_depth:
        return depth + opens - text.count("]", start, stop) - text.count("}", start, stop)
    for match in _BRACKETS.finditer(text, start, stop):
        depth += 1 if match.group() in "[{" else -1
        if depth > max_depth:
            raise RequestRejected(
                "not_json", "", f"JSON nested deeper than {max_depth} levels (the limit)"
            )
    return depth


def check_json_values(
    value: Any, path: str, max_depth: int, error: type[ValueError] | None
) -> None:
    """Refuse strings and integers that JSON allows but hpod cannot keep, naming the field.

    Every string (object keys too) must encode as UTF-8 (a lone surrogate such as "\\ud800"
    parses but cannot be stored) and be at most MAX_STRING_CHARS long; every integer must be
    within ±MAX_INT; nesting at most `max_depth`. Raises RequestRejected naming the dotted
    path, or `error` (inside a pydantic validator, which names the field itself).
    """
    problem = _json_problem(value, path, max_depth)
    if problem is None:
        return
    where, message = problem
    if error is not None:
        raise error(f"{where}: {message}" if where else message)
    raise RequestRejected("invalid", where, message)


def _json_problem(value: Any, path: str, depth_left: int) -> tuple[str, str] | None:
    if isinstance(value, dict | list):
        if depth_left <= 0:
            return path, "nested too deep"
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            where = f"{path}.{key}" if path else str(key)
            if isinstance(key, str):
                problem = _scalar_problem(key, path)
                if problem is not None:
                    return problem[0], f"key: {problem[1]}"
            problem = _json_problem(item, where, depth_left - 1)
            if problem is not None:
                return problem
        return None
    return _scalar_problem(value, path)


def _scalar_problem(value: Any, path: str) -> tuple[str, str] | None:
    try:
        _check_scalar(value)
    except ValueError as exc:
        return path, str(exc)
    return None


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
        message = err["msg"].removeprefix("Value error, ")
        given = err.get("input")
        if isinstance(given, bool | int | float | str) or given is None:
            message = f"{message}, got {_short(json.dumps(given))}"
        raise RequestRejected("invalid", prefix + field_path(err["loc"]), message) from exc


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
