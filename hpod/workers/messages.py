"""The messages between the daemon and its workers, typed and validated on both sides.

Anyone who can publish on ``hpod.trials`` or ``hpod.results`` can write these, so neither side
trusts a message: the worker validates every task before it runs anything (`EvaluateTask`,
`EvaluateBatch`), the daemon validates every result before it tells anything
(`parse_results`), and then checks that the result belongs to a trial it has in flight
(`check_result`). Models are strict (no bool as a number, no string as a float), refuse
unknown fields, take finite floats only and bound every size. Pruner options are a typed
model of known fields: a task can never turn them into arbitrary keyword arguments.

Broker credentials remain the trust boundary (see docs/operations.md): a holder of a worker's
credentials can still report a wrong *value* for a trial in flight; what it can no longer do
is tell a trial that is not in flight, store a malformed cost, or fill the result cache with
anything but the rungs the trial was dispatched with.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    ValidationError,
    model_validator,
)
from pydantic_core import from_json

M = TypeVar("M", bound=BaseModel)

#: Largest result message the daemon parses (a pack of many trials with tracebacks fits).
MAX_RESULT_BYTES = 4 << 20
#: Most trials in one packed task, and in one packed result.
MAX_PACK = 1000
#: Most parameters of one trial (the schema's own limits are lower).
MAX_PARAMS = 1000
#: Most rungs of a data ladder.
MAX_RUNGS = 16
#: Longest error text a result carries.
MAX_ERROR = 8000

Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")]
ShortText = Annotated[str, StringConstraints(max_length=256)]
Seconds = Annotated[float, Field(ge=0.0, le=1e9)]
Fraction = Annotated[float, Field(gt=0.0, le=1.0)]
Count = Annotated[int, Field(ge=0, le=2**63 - 1)]
ParamValue = Annotated[str, StringConstraints(max_length=10_000)] | int | float | bool | None


class Strict(BaseModel):
    """Base of every queue message: strict types, no unknown fields, finite floats."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False, frozen=True)


# --- tasks (daemon -> worker) --------------------------------------------------------------

#: Which pruner options each pruner takes (keyword arguments of the Optuna pruner).
#: hpod's own gates on a step pruner (`hpod.pruners.build_pruners`).
GATE_FIELDS = frozenset({"warmup_share", "min_agreement"})
PRUNER_FIELDS: dict[str, frozenset[str]] = {
    "none": frozenset(),
    "median": frozenset({"n_startup_trials", "n_warmup_steps", "interval_steps", "n_min_trials"})
    | GATE_FIELDS,
    "percentile": frozenset(
        {"percentile", "n_startup_trials", "n_warmup_steps", "interval_steps", "n_min_trials"}
    )
    | GATE_FIELDS,
    "patient": GATE_FIELDS
    | frozenset(
        {
            "patience",
            "min_delta",
            "n_startup_trials",
            "n_warmup_steps",
            "interval_steps",
            "n_min_trials",
        }
    ),
    "successive_halving": frozenset(
        {"min_resource", "reduction_factor", "min_early_stopping_rate", "bootstrap_count"}
    ),
    "hyperband": frozenset({"min_resource", "max_resource", "reduction_factor", "bootstrap_count"}),
    "wilcoxon": frozenset({"p_threshold", "n_startup_steps"}),
}
PrunerName = Literal[
    "none", "median", "percentile", "patient", "successive_halving", "hyperband", "wilcoxon"
]
SmallInt = Annotated[int, Field(ge=0, le=1_000_000)]


class PrunerOptions(Strict):
    """Every option an Optuna pruner of hpod's may take, typed and bounded; which ones a
    given pruner accepts is checked by `TaskPlan`."""

    n_startup_trials: SmallInt | None = None
    n_warmup_steps: SmallInt | None = None
    interval_steps: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    n_min_trials: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    percentile: Annotated[float, Field(ge=0.0, le=100.0)] | None = None
    patience: SmallInt | None = None
    min_delta: Annotated[float, Field(ge=0.0, le=1e12)] | None = None
    min_resource: Annotated[int, Field(ge=1, le=1_000_000)] | Literal["auto"] | None = None
    max_resource: Annotated[int, Field(ge=1, le=1_000_000)] | Literal["auto"] | None = None
    reduction_factor: Annotated[int, Field(ge=2, le=1000)] | None = None
    min_early_stopping_rate: SmallInt | None = None
    bootstrap_count: SmallInt | None = None
    p_threshold: Annotated[float, Field(gt=0.0, lt=1.0)] | None = None
    n_startup_steps: SmallInt | None = None
    warmup_share: Annotated[float, Field(ge=0.0, lt=1.0)] | None = None
    min_agreement: Annotated[float, Field(ge=-1.0, le=1.0)] | None = None

    def kwargs(self) -> dict[str, Any]:
        """The options set, as keyword arguments (only this model's own fields)."""
        return self.model_dump(exclude_none=True)


class TaskPlan(Strict):
    """What the policies put on a task: the data ladder, the pruners, cached rungs. The
    daemon builds it as plain JSON (`hpod.policies.plan.TaskPlanJSON`); this validates it."""

    mode: Name | None = None
    ladder: list[Fraction] = Field(default_factory=lambda: [1.0], min_length=1, max_length=16)
    pruner: PrunerName = "none"
    pruner_options: PrunerOptions = Field(default_factory=PrunerOptions)
    threshold: Annotated[float, Field(ge=0.0, le=1e6)] = 0.0
    threshold_min_trials: SmallInt = 8
    #: For an objective over folds (``hpod_fidelity = "folds"``): prune by `FoldPruner` at
    #: this many standard errors, in place of the pruners above (0: the pruners above).
    fold_margin: Annotated[float, Field(ge=0.0, le=100.0)] = 0.0
    #: Values already known for lower rungs, by fraction (as a string: JSON keys are).
    cached: dict[Annotated[str, StringConstraints(max_length=32)], list[float]] = Field(
        default_factory=dict, max_length=MAX_RUNGS
    )
    #: "partial" when some rungs come from the result cache.
    cache: Literal["partial"] | None = None
    #: Continuation (objectives declaring ``hpod_resumable``): run to this share of the
    #: objective's steps, resuming from the trial's checkpoint; None runs it all at once.
    steps_to: Fraction | None = None
    #: Under a budget in compute: the CPU seconds this trial may spend; past them its
    #: worker stops it, pruned (`hpod.workers.allowance`). None: no limit.
    cpu_allowance: Annotated[float, Field(gt=0.0, le=1e9)] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> TaskPlan:
        if self.ladder != sorted(set(self.ladder)) or self.ladder[-1] != 1.0:
            raise ValueError("ladder must be increasing fractions ending at 1.0")
        given = self.pruner_options.model_fields_set
        unknown = sorted(given - PRUNER_FIELDS[self.pruner])
        if unknown:
            raise ValueError(f"pruner {self.pruner!r} takes no option {', '.join(unknown)}")
        for key, values in self.cached.items():
            if _fraction(key) not in self.ladder[:-1] or not 1 <= len(values) <= 8:
                raise ValueError(f"cached rung {key!r} is not a lower rung of the ladder")
        return self

    def cached_rungs(self) -> dict[float, list[float]]:
        """The cached values by fraction."""
        return {_fraction(key): list(values) for key, values in self.cached.items()}


def _fraction(key: str) -> float:
    try:
        value = float(key)
    except ValueError:
        return math.nan
    return value


class EvaluateTask(Strict):
    """One trial to evaluate (`hpod.evaluate`, or one member of a pack)."""

    study: Name
    trial_id: Count
    number: Count
    params: dict[ShortText, ParamValue] = Field(max_length=MAX_PARAMS)
    objective: Name
    objective_kwargs: dict[ShortText, JsonValue] = Field(default_factory=dict, max_length=256)
    attempt: Annotated[int, Field(ge=1, le=1000)] = 1
    plan: TaskPlan = Field(default_factory=TaskPlan)


class TaskIdentity(BaseModel):
    """The trial a task is for, read from a task that failed validation otherwise, so the
    worker can report the refusal as that trial's failure."""

    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)

    study: Name
    trial_id: Count
    number: Count
    params: dict[ShortText, ParamValue] = Field(max_length=MAX_PARAMS)
    attempt: Annotated[int, Field(ge=1, le=1000)] = 1


class EvaluateBatch(Strict):
    """Several cheap trials packed into one task (`hpod.evaluate_batch`)."""

    trials: list[EvaluateTask] = Field(min_length=1, max_length=MAX_PACK)


# --- results (worker -> daemon) ------------------------------------------------------------

#: One rung reached: (fraction, first value, whether it came from the cache, CPU seconds).
Rung = tuple[Fraction, float, bool, Seconds]


class Cost(Strict):
    """What an evaluation cost, as the worker measured it (the efficiency report's input)."""

    cpu: Seconds = 0.0
    full_cpu: Seconds | None = None
    data: Annotated[float, Field(ge=0.0, le=MAX_RUNGS)] = 0.0
    rungs: list[Rung] = Field(default_factory=list, max_length=MAX_RUNGS)
    pruned_at: Fraction | None = None
    objective_version: Annotated[str, StringConstraints(max_length=64)] = "1"
    deterministic: bool = True
    mode: Name | None = None
    fidelity: Literal["data", "epochs", "none"] = "none"
    #: CPU seconds spent reporting intermediate values and asking the pruners (not in `cpu`).
    report_cpu: Seconds = 0.0
    #: Folds (or instances) evaluated, for an objective over folds.
    folds: Annotated[int, Field(ge=0, le=1_000_000)] | None = None
    #: A continued task: the share of the steps it ran to, the step it reached, and the step
    #: it resumed from (0: no checkpoint, it trained from the start). `cpu` and `data` are
    #: this task's increment; the daemon sums a trial's tasks.
    steps_to: Fraction | None = None
    step: Count | None = None
    resumed_step: Count | None = None
    #: The worker process's first evaluation of this objective (and kwargs): its CPU holds
    #: the process's warm-up (imports, data building), left out of the efficiency report's
    #: comparison.
    warm_up: bool = False
    #: "budget": the trial was stopped (pruned) on reaching its CPU allowance.
    stopped: Literal["budget"] | None = None


#: "paused": a continued trial reached a rung below its last (values: its value there); it
#: stays running in Optuna until the daemon promotes it or tells it pruned.
State = Literal["complete", "pruned", "failed", "paused"]


class TrialResult(Strict):
    """One trial's outcome as a worker publishes it on ``hpod.results``."""

    v: Literal[1] = 1
    study: Name
    trial_id: Count
    number: Count
    attempt: Annotated[int, Field(ge=1, le=1000)]
    #: The trial's parameters as the task gave them: the daemon checks they are the trial's.
    params: dict[ShortText, ParamValue] = Field(max_length=MAX_PARAMS)
    worker: ShortText | None = None
    started_at: Annotated[float, Field(ge=0.0, le=1e11)] | None = None
    state: State
    values: list[float] | None = Field(default=None, min_length=1, max_length=8)
    error: Annotated[str, StringConstraints(max_length=MAX_ERROR)] | None = None
    duration: Seconds | None = None
    cost: Cost | None = None

    @model_validator(mode="after")
    def _shape(self) -> TrialResult:
        if self.state in ("complete", "paused") and self.values is None:
            raise ValueError(f"a {self.state} result needs values")
        if self.state not in ("complete", "paused") and self.values is not None:
            raise ValueError(f"a {self.state} result carries no values")
        return self


class ResultPack(Strict):
    """The answer to a packed task: one result per trial."""

    v: Literal[1] = 1
    results: list[JsonValue] = Field(min_length=1, max_length=MAX_PACK)


class _ValidPack(Strict):
    """A pack whose every result is valid: `parse_results` reads most packs in one pass so."""

    v: Literal[1] = 1
    results: list[TrialResult] = Field(min_length=1, max_length=MAX_PACK)


@dataclass(frozen=True)
class Rejected:
    """A result (or a whole message) refused, with why; the daemon dead-letters it."""

    reason: str
    body: JsonValue = None


@dataclass
class Parsed:
    """A results message taken apart: the valid results and the refused parts."""

    results: list[TrialResult] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


def parse_results(raw: bytes | Mapping[str, Any]) -> Parsed:
    """Validate a message from ``hpod.results`` (one result, or a pack's ``results``).

    Each result of a pack is validated on its own: one bad result is refused without losing
    the others. Bytes are size-checked before any parse, and parsed with a depth limit.
    """
    parsed = Parsed()
    if isinstance(raw, bytes | bytearray):
        if len(raw) > MAX_RESULT_BYTES:
            parsed.rejected.append(Rejected(f"message of {len(raw)} bytes is over the limit"))
            return parsed
        try:
            body: Any = from_json(raw, allow_inf_nan=False)
        except ValueError as exc:
            parsed.rejected.append(Rejected(f"not JSON: {exc}"))
            return parsed
    else:
        body = dict(raw)
    if not isinstance(body, dict):
        parsed.rejected.append(Rejected("a result must be a JSON object", body))
        return parsed
    items: list[Any] = [body]
    if "results" in body and isinstance(raw, bytes | bytearray):
        # Every result valid (the usual case): one validation of the message as it came,
        # rather than one per result; otherwise each is validated below, on its own.
        try:
            parsed.results = list(_ValidPack.model_validate_json(raw).results)
            return parsed
        except ValidationError:
            pass
    if "results" in body:
        try:
            items = list(validate(ResultPack, body).results)
        except ValidationError as exc:
            parsed.rejected.append(Rejected(f"invalid result pack: {describe(exc)}", body))
            return parsed
    for item in items:
        try:
            parsed.results.append(validate(TrialResult, item))
        except ValidationError as exc:
            parsed.rejected.append(Rejected(f"invalid result: {describe(exc)}", item))
    return parsed


def validate(model: type[M], data: Any) -> M:
    """`data` (parsed JSON) as `model`, validated in JSON mode: strict, yet arrays are
    tuples where the model says so. `ValidationError` (naming the field) if it does not fit;
    a non-finite float is written out as such so that the model refuses it by its field."""
    return model.model_validate_json(json.dumps(data, allow_nan=True, default=repr))


def describe(exc: ValidationError) -> str:
    """A validation error in one line: the first problems, each with its dotted field."""
    parts = []
    for err in exc.errors()[:3]:
        where = ".".join(str(p) for p in err["loc"]) or "(message)"
        parts.append(f"{where}: {err['msg']}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


# --- matching a result to the trial in flight ----------------------------------------------


@dataclass(frozen=True)
class Expected:
    """What the daemon knows of a trial it has in flight, to check a result against."""

    trial_id: int
    params: Mapping[str, Any]
    #: The latest attempt dispatched: a result of an earlier one is as good, a later is forged.
    attempt: int
    #: The study's number of directions.
    directions: int
    #: The ladder the trial was dispatched with; None if unknown (recovered after a restart).
    ladder: Sequence[float] | None = None
    #: Rungs that travelled with the task from the result cache.
    cached: Mapping[float, Sequence[float]] = field(default_factory=dict)


def check_result(result: TrialResult, expected: Expected) -> str | None:
    """Why `result` is not a result of the trial `expected` describes; None if it is."""
    if result.trial_id != expected.trial_id:
        return f"trial_id {result.trial_id} is not trial {result.number}'s"
    if not 1 <= result.attempt <= expected.attempt:
        return f"attempt {result.attempt} was never dispatched (latest {expected.attempt})"
    if canonical(result.params) != canonical(expected.params):
        return "params differ from the trial's"
    # A wrong number of values is not refused: a genuine objective may return that shape,
    # and the trial is then told as failed with the reason (`StudyStore.tell`), its values
    # never stored.
    return _check_cost(result, expected)


def _check_cost(result: TrialResult, expected: Expected) -> str | None:
    """The rungs must be the trial's own ladder, in order; cached ones must be what the
    task carried; a complete trial's full rung must be its value."""
    cost = result.cost
    if cost is None or not cost.rungs:
        return None
    if expected.ladder is None:
        return None  # the caller drops the rungs (see `trusted_cost`)
    fractions = [rung[0] for rung in cost.rungs]
    if fractions != list(expected.ladder[: len(fractions)]):
        return f"cost.rungs {fractions} are not the trial's ladder {list(expected.ladder)}"
    for fraction, value, from_cache, _cpu in cost.rungs:
        known = expected.cached.get(fraction)
        if from_cache and (known is None or not known or known[0] != value):
            return f"cost.rungs: the rung on {fraction} was not in the cache"
    last = cost.rungs[-1]
    complete = result.state == "complete" and result.values is not None
    if complete and (last[0] != 1.0 or last[1] != (result.values or [math.nan])[0]):
        return "cost.rungs: the full-data rung is not the trial's value"
    if cost.pruned_at is not None and cost.pruned_at not in fractions:
        return f"cost.pruned_at {cost.pruned_at} is not a rung reached"
    return None


def trusted_cost(result: TrialResult, expected: Expected) -> dict[str, Any] | None:
    """The cost to store for a checked result: only its model's fields, and no rungs when
    the trial's ladder is unknown (nothing unverifiable reaches the result cache)."""
    if result.cost is None:
        return None
    cost = result.cost.model_dump(mode="json")
    if expected.ladder is None:
        cost["rungs"] = []
        cost["pruned_at"] = None
    return cost


def canonical(value: Any) -> str:
    """A value's canonical JSON (1 and 1.0 and True differ), for exact comparison."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
