"""Seeded mutations of hpod requests: the fuzz campaign of issue 12 as a reusable module.

`amqp_cases(seed, n)` and `http_cases(seed, n)` yield the same cases for the same seed, on any
machine (only `random.Random(seed)` decides). Each case is built from a valid seed body of one
request type (every type, and study specs with float, int, categorical and conditional spaces)
and one mutation: type swaps (bool or string for a number, -0.0, 1e-400, 1e308, 10**400, huge
and negative integers, NaN/Infinity tokens), deep nesting (1,000 and 100,000 levels), lone
surrogates and odd unicode, missing and extra fields, oversized strings, arrays and bodies,
truncated or garbled JSON, non-JSON bytes, a wrong `v` or `type`, duplicated keys and huge
spaces. `FINDINGS` holds the exact bodies of issue 12's findings 1, 2 and 4.

The module imports nothing of hpod, so tests (`tests/fuzz/test_fuzz.py`) and the long run
(`bench/fuzz.py`) can both use it, against any daemon.
"""

from __future__ import annotations

import json
import random
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

MAX_BYTES = 1 << 20  # the daemon's default max_message_bytes

# The studies the campaign sets up before fuzzing (see `setup_requests`): an external study to
# ask, tell and enqueue against, and a study for the control requests (stop, pause, ...).
EXTERNAL = "fz-ext"
CONTROL = "fz-ctl"
ASKED = 4  # trials asked on EXTERNAL during set-up, so that tells have trials to name
STOPPABLE = "fz-stop"  # the target of study.stop seeds, so that CONTROL keeps running
BUDGET_STUDY = "fz-f4"  # finding 4's study.budget body: a running study no seed touches
FINDING_4_STUDY = "a"  # finding 4's body tells study "a": it exists, with trials 0..3 asked


class Raw:
    """A JSON fragment written verbatim (NaN, 1e-400, 100,000-deep nesting, bad bytes)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"Raw({self.text[:40]!r})"


class Pairs:
    """A JSON object written with its pairs as given, duplicated keys included."""

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        self.pairs = pairs


def dumps(value: Any) -> bytes:
    """JSON bytes of `value`, with `Raw` and `Pairs` written as they are. Text is encoded with
    `surrogatepass`, so a lone surrogate inside a `Raw` becomes invalid UTF-8 bytes on purpose."""
    return _text(value).encode("utf-8", "surrogatepass")


def _text(value: Any) -> str:
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, Pairs):
        return "{" + ",".join(f"{json.dumps(k)}:{_text(v)}" for k, v in value.pairs) + "}"
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}:{_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_text(v) for v in value) + "]"
    return json.dumps(value)  # ensure_ascii: a lone surrogate in a str becomes "\ud800"


@dataclass(frozen=True)
class Case:
    """One message to send over AMQP: its name (seed type + mutation) and exact bytes."""

    name: str
    body: bytes

    @property
    def must_refuse(self) -> bool:
        """Whether accepting this case is a failure (see `_must_refuse`)."""
        return self.name.endswith(MUST_REFUSE)


@dataclass(frozen=True)
class HttpCase:
    """One HTTP request to send: method, path (already quoted), body bytes and headers."""

    name: str
    method: str
    path: str
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    token: bool = True  # send the daemon's API token

    @property
    def must_refuse(self) -> bool:
        """Whether a 2xx answer to this case is a failure (see `_must_refuse`)."""
        return self.name.endswith(MUST_REFUSE)


# ---------------------------------------------------------------------------------------------
# Valid seed bodies of every request type.


def _space_float() -> dict[str, Any]:
    return {
        "x": {"type": "float", "low": -2.0, "high": 2.0},
        "s": {"type": "float", "low": 0.0, "high": 1.0, "step": 0.25},
        "l": {"type": "float", "low": 0.0001, "high": 1.0, "log": True},
    }


def _space_int() -> dict[str, Any]:
    return {
        "n": {"type": "int", "low": -5, "high": 5},
        "k": {"type": "int", "low": 1, "high": 1024, "log": True},
        "e": {"type": "int", "low": 0, "high": 100, "step": 10},
    }


def _space_categorical() -> dict[str, Any]:
    return {"c": {"type": "categorical", "choices": ["a", "b", 1, 2.5, True, None]}}


def _space_conditional() -> dict[str, Any]:
    return {
        "optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
        "lr": {"type": "float", "low": 0.0001, "high": 0.1, "log": True},
        "momentum": {
            "type": "float",
            "low": 0.0,
            "high": 0.99,
            "condition": {"param": "optimizer", "values": ["sgd"]},
        },
    }


SPACES: dict[str, Callable[[], dict[str, Any]]] = {
    "float": _space_float,
    "int": _space_int,
    "categorical": _space_categorical,
    "conditional": _space_conditional,
}


def _create(i: int, space: str) -> dict[str, Any]:
    study: dict[str, Any] = {
        "name": f"fz-{space}-{i}",
        "space": SPACES[space](),
        "budget": {"trials": 5},
        "sampler": {"name": "random", "seed": i},
    }
    if space == "float":  # one with every optional field, an objective and a pruner
        study.update(
            objective="quadratic",
            objective_kwargs={},
            directions=["minimize"],
            budget={"trials": 2, "seconds": 3600},
            mode="fast",
            max_concurrent=1,
            trial_timeout=30,
            strategy="mode",
            transfer="off",
            sampler={"name": "random", "seed": i},
            pruner={"name": "median", "n_startup_trials": 5, "n_warmup_steps": 0},
            space={"x": {"type": "float", "low": -2.0, "high": 2.0}},
        )
    return {"v": 1, "type": "study.create", "id": f"fz-create-{i}", "study": study}


def seed_bodies(i: int) -> dict[str, dict[str, Any]]:
    """One valid body of every request type (and every kind of space), numbered `i`."""
    bodies = {f"study.create/{space}": _create(i, space) for space in SPACES}
    for kind in ("stop", "pause", "resume"):
        name = STOPPABLE if kind == "stop" else CONTROL
        bodies[f"study.{kind}"] = {"v": 1, "type": f"study.{kind}", "name": name}
    bodies["study.budget"] = {
        "v": 1,
        "type": "study.budget",
        "name": CONTROL,
        "budget": {"trials": 50, "seconds": 3600.0},
    }
    bodies["study.strategy"] = {
        "v": 1,
        "type": "study.strategy",
        "name": CONTROL,
        "strategy": "tpe",
    }
    bodies["trial.ask"] = {"v": 1, "type": "trial.ask", "id": f"fz-ask-{i}", "study": EXTERNAL}
    bodies["trial.tell"] = {
        "v": 1,
        "type": "trial.tell",
        "study": EXTERNAL,
        "trial": i % ASKED,
        "values": [0.25],
        "state": "complete",
    }
    bodies["trial.enqueue"] = {
        "v": 1,
        "type": "trial.enqueue",
        "study": EXTERNAL,
        "params": {"x": 0.5, "y": -0.5},
    }
    bodies["mode.set"] = {"v": 1, "type": "mode.set", "study": CONTROL, "mode": "fast"}
    bodies["mode.set/default"] = {"v": 1, "type": "mode.set", "mode": "balanced"}
    return bodies


def setup_requests() -> list[dict[str, Any]]:
    """The valid requests that create the studies the seeds refer to (send them first, in
    order, and check each succeeds), then ASKED asks on the external study."""
    space = {
        "x": {"type": "float", "low": -2.0, "high": 2.0},
        "y": {"type": "float", "low": -2.0, "high": 2.0},
    }
    out: list[dict[str, Any]] = []
    for name in (EXTERNAL, CONTROL, STOPPABLE, BUDGET_STUDY, FINDING_4_STUDY):
        study = {
            "name": name,
            "space": space,
            "budget": {"trials": 1_000_000},
            "sampler": {"name": "random", "seed": 0},
            "mode": "balanced",
        }
        out.append({"v": 1, "type": "study.create", "id": f"setup-{name}", "study": study})
    out += [
        {"v": 1, "type": "trial.ask", "id": f"setup-ask-{name}-{k}", "study": name}
        for name in (EXTERNAL, FINDING_4_STUDY)
        for k in range(ASKED)
    ]
    return out


# ---------------------------------------------------------------------------------------------
# Replacement values.

NUMBER_SWAPS: list[Any] = [
    True,
    False,
    None,
    "1",
    "0.5",
    "",
    -0.0,
    Raw("-0.0"),
    Raw("1e-400"),
    Raw("-1e-400"),
    5e-324,
    1e308,
    -1.7976931348623157e308,
    1.7976931348623157e308,
    Raw("1e400"),
    10**400,
    -(10**400),
    Raw("1" + "0" * 5000),  # beyond Python's default int-to-str digit limit
    2**31,
    2**32,
    2**63,
    2**64,
    -(2**63) - 1,
    -1,
    0,
    Raw("NaN"),
    Raw("Infinity"),
    Raw("-Infinity"),
    Raw("1.0e+"),
    Raw("0x10"),
    Raw("01"),
    [],
    {},
    [1.0],
]

ODD_STRINGS: list[Any] = [
    "x\ud800y",  # lone high surrogate, escaped as JSON "\ud800" (finding 2)
    "\udfff",
    Raw('"x\ud800y"'),  # the surrogate as raw (invalid UTF-8) bytes
    Raw('"\\ud800\\udc00"'),  # a valid pair, escaped
    "\x00",
    "a\x00b",
    "\u202e" + "evil",
    "\ufeff",
    "\U0001f600" * 50,
    "e\u0301",
    "../../etc/passwd",
    "%00",
    "a" * 300,
    " ",
    "",
    "\n",
    "fz-ext\n",
    '{"v":1}',
]


def _deep(depth: int, kind: str) -> Raw:
    """`depth` nested arrays or objects, written without recursion."""
    if kind == "array":
        return Raw("[" * depth + "]" * depth)
    return Raw('{"a":' * depth + "1" + "}" * depth)


# ---------------------------------------------------------------------------------------------
# Mutations of a decoded value: each returns the mutated value (Raw/Pairs allowed inside).

Path = tuple[Any, ...]


def _paths(value: Any, prefix: Path = ()) -> list[Path]:
    """Every path into `value` (dict keys and list indexes), the root excluded."""
    out: list[Path] = []
    if isinstance(value, dict):
        for k, v in value.items():
            out.append((*prefix, k))
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out.append((*prefix, i))
            out += _paths(v, (*prefix, i))
    return out


def _copy(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _set(value: Any, path: Path, new: Any) -> Any:
    out = _copy(value)
    if not path:
        return new
    node = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = new
    return out


def _delete(value: Any, path: Path) -> Any:
    out = _copy(value)
    node = out
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return out


def _numeric_paths(value: Any) -> list[Path]:
    return [p for p in _paths(value) if _is_number(_get(value, p))]


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _get(value: Any, path: Path) -> Any:
    for key in path:
        value = value[key]
    return value


def _pick_path(rng: random.Random, value: Any, numeric: bool = False) -> Path:
    paths = _numeric_paths(value) if numeric else _paths(value)
    return rng.choice(paths) if paths else ()


def m_number(rng: random.Random, value: Any) -> tuple[str, Any]:
    """A number replaced by a bool, string, -0.0, 1e-400, 1e308, 10**400, NaN, ..."""
    path = _pick_path(rng, value, numeric=True) or _pick_path(rng, value)
    new = rng.choice(NUMBER_SWAPS)
    mark = _must_refuse(value, path, new)
    return f"number {_dotted(path)}={_label(new)}{mark}", _set(value, path, new)


def m_type(rng: random.Random, value: Any) -> tuple[str, Any]:
    """Any field replaced by a value of another type (or an odd number)."""
    path = _pick_path(rng, value)
    new = rng.choice([*NUMBER_SWAPS, *ODD_STRINGS[:6], ["a"], {"a": 1}])
    mark = _must_refuse(value, path, new)
    return f"type {_dotted(path)}={_label(new)}{mark}", _set(value, path, new)


MUST_REFUSE = " [must refuse]"


def _must_refuse(value: Any, path: Path, new: Any) -> str:
    """MUST_REFUSE when `new` is a bool put where the valid body has a number or a string
    (issue 12 finding 4: no bool is a number). Categorical choices and condition values may
    be booleans, so they are left out; so is the root."""
    if not path or not isinstance(new, bool):
        return ""
    if any(p in {"choices", "condition"} for p in path):
        return ""
    return (
        MUST_REFUSE
        if isinstance(_get(value, path), int | float | str)
        and not isinstance(_get(value, path), bool)
        else ""
    )


def m_bool(rng: random.Random, value: Any) -> tuple[str, Any]:
    """A number or a string replaced by true or false: always to be refused (finding 4)."""
    leaves = [
        p
        for p in _paths(value)
        if _must_refuse(value, p, True)  # a number or string outside choices and conditions
    ]
    path = rng.choice(leaves) if leaves else _pick_path(rng, value)
    new = rng.choice([True, False])
    mark = _must_refuse(value, path, new)
    return f"bool {_dotted(path)}={_label(new)}{mark}", _set(value, path, new)


def m_unicode(rng: random.Random, value: Any) -> tuple[str, Any]:
    """A string (or any field) replaced by a lone surrogate, NUL, bidi override, ..."""
    strings = [p for p in _paths(value) if isinstance(_get(value, p), str)]
    path = rng.choice(strings) if strings else _pick_path(rng, value)
    new = rng.choice(ODD_STRINGS)
    return f"unicode {_dotted(path)}={_label(new)}", _set(value, path, new)


def m_missing(rng: random.Random, value: Any) -> tuple[str, Any]:
    """A field removed (a required one, often)."""
    paths = [p for p in _paths(value) if isinstance(_get(value, p[:-1]), dict)]
    if not paths:
        return "missing (none)", value
    path = rng.choice(paths)
    return f"missing {_dotted(path)}", _delete(value, path)


def m_extra(rng: random.Random, value: Any) -> tuple[str, Any]:
    """An unknown field added to an object."""
    objects = [(), *(p for p in _paths(value) if isinstance(_get(value, p), dict))]
    path = rng.choice(objects)
    key = rng.choice(["colour", "__proto__", "constructor", "", "v", "study", "x" * 200])
    node = _copy(_get(value, path)) if path else _copy(value)
    if not isinstance(node, dict):
        return "extra (none)", value
    node[key] = rng.choice([1, "x", None, True, {"a": []}])
    return f"extra {_dotted((*path, key))}", _set(value, path, node)


def m_deep(rng: random.Random, value: Any) -> tuple[str, Any]:
    """A field (or the whole body) replaced by arrays or objects nested 1,000 or 100,000 deep."""
    depth = rng.choice([1_000, 1_000, 100_000])
    kind = rng.choice(["array", "object"])
    path = rng.choice([(), _pick_path(rng, value)])
    return f"deep {kind}x{depth} at {_dotted(path)}", _set(value, path, _deep(depth, kind))


def m_oversize(rng: random.Random, value: Any) -> tuple[str, Any]:
    """A string, an array or the body beyond max_message_bytes, or just below it."""
    size = rng.choice([MAX_BYTES + 1, MAX_BYTES + 4096, MAX_BYTES - 512])
    path = _pick_path(rng, value)
    kind = rng.choice(["string", "array", "pad"])
    if kind == "string":
        new: Any = "x" * size
    elif kind == "array":
        new = Raw("[" + ",".join(["0"] * (size // 2)) + "]")
    else:
        if not isinstance(value, dict):
            return "oversize (none)", value
        return f"oversize pad {size}", {**_copy(value), "padding": "x" * size}
    return f"oversize {kind} {size} at {_dotted(path)}", _set(value, path, new)


def m_duplicate(rng: random.Random, value: Any) -> tuple[str, Any]:
    """An object written with a key twice, the second value different (or invalid)."""
    if not isinstance(value, dict) or not value:
        return "duplicate (none)", value
    key = rng.choice(list(value))
    other = rng.choice([None, 2, "other", True, {"a": 1}, Raw("NaN")])
    pairs = [(k, v) for k, v in value.items()] + [(key, other)]
    if rng.random() < 0.5:
        pairs = [(key, other)] + [(k, v) for k, v in value.items()]
    return f"duplicate {key}", Pairs(pairs)


def m_envelope(rng: random.Random, value: Any) -> tuple[str, Any]:
    """A wrong `v` or `type`, or an odd `id`."""
    if not isinstance(value, dict):
        return "envelope (none)", value
    key = rng.choice(["v", "type", "id"])
    choices: dict[str, list[Any]] = {
        "v": [0, 2, -1, "1", 1.0, 1.5, True, None, 10**400, Raw("1e-400"), [1]],
        "type": ["study.explode", "", "STUDY.CREATE", None, 1, ["study.create"], "x" * 10_000],
        "id": ["", "x" * 201, 5, None, True, {"a": 1}, "x\ud800y"],
    }
    new = rng.choice(choices[key])
    return f"envelope {key}={_label(new)}", {**_copy(value), key: new}


def m_space(rng: random.Random, value: Any) -> tuple[str, Any]:
    """A study spec with a huge space: many parameters, many choices, or extreme bounds."""
    study = value.get("study") if isinstance(value, dict) else None
    if not isinstance(study, dict):
        return m_number(rng, value)
    study = _copy(study)
    kind = rng.choice(["params", "choices", "bounds", "step", "seed"])
    if kind == "params":
        n = rng.choice([1_000, 20_000])
        study["space"] = {f"p{k}": {"type": "float", "low": 0, "high": 1} for k in range(n)}
    elif kind == "choices":
        n = rng.choice([10_000, 100_000])
        study["space"] = {"c": {"type": "categorical", "choices": [f"c{k}" for k in range(n)]}}
    elif kind == "bounds":
        low, high = rng.choice(
            [(-1.7976931348623157e308, 1.7976931348623157e308), (-1e308, 1e308), (0, 10**400)]
        )
        ptype = "int" if isinstance(high, int) else "float"
        study["space"] = {"x": {"type": ptype, "low": low, "high": high}}
        n = 0
    elif kind == "step":
        study["space"] = {"x": {"type": "float", "low": 0.0, "high": 1.0, "step": 5e-324}}
        n = 0
    else:
        study["sampler"] = {"name": "random", "seed": rng.choice([-1, 2**32, 2**64, 10**400])}
        n = study["sampler"]["seed"]
    # Each is past a documented limit (256 parameters, 1,024 choices, finite ranges, seeds
    # within 0..2**32-1, a step that leaves a countable grid): all must be refused.
    return f"space {kind} {_label(n)}{MUST_REFUSE}", {**_copy(value), "study": study}


VALUE_MUTATIONS: list[tuple[int, Callable[[random.Random, Any], tuple[str, Any]]]] = [
    (6, m_number),
    (4, m_type),
    (2, m_bool),
    (3, m_unicode),
    (3, m_missing),
    (2, m_extra),
    (2, m_deep),
    (1, m_oversize),
    (1, m_duplicate),
    (2, m_envelope),
    (2, m_space),
]


def m_bytes(rng: random.Random, body: bytes) -> tuple[str, bytes]:
    """The serialised body truncated, garbled, re-encoded, or replaced by non-JSON bytes."""
    kind = rng.choice(
        ["truncate", "garble", "random", "empty", "bom", "utf16", "latin1", "trailing", "nul"]
    )
    if kind == "truncate":
        cut = rng.randrange(0, max(1, len(body)))
        return f"truncate at {cut}", body[:cut]
    if kind == "garble":
        data = bytearray(body)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return "garble", bytes(data)
    if kind == "random":
        return "random bytes", rng.randbytes(rng.choice([1, 16, 1024]))
    if kind == "empty":
        return "empty body", b""
    if kind == "bom":  # the protocol is UTF-8 without a BOM: refused, like UTF-16
        return "utf-8 BOM" + MUST_REFUSE, b"\xef\xbb\xbf" + body
    if kind == "utf16":
        return "utf-16" + MUST_REFUSE, body.decode("utf-8", "replace").encode("utf-16")
    if kind == "latin1":
        return "latin-1 byte", body.replace(b'"', b'"\xe9', 1)
    if kind == "trailing":
        return "trailing data", body + rng.choice([b" {}", b"]", b"\x00", b"garbage"])
    return "nul", body.replace(b",", b",\x00", 1)


def mutate(rng: random.Random, value: Any) -> tuple[str, bytes]:
    """One mutation of a valid JSON value: at the value level (most) or the byte level."""
    if rng.random() < 0.15:
        return m_bytes(rng, dumps(value))
    weights = [w for w, _ in VALUE_MUTATIONS]
    fn = rng.choices([f for _, f in VALUE_MUTATIONS], weights=weights)[0]
    label, mutated = fn(rng, value)
    return label, dumps(mutated)


def _dotted(path: Path) -> str:
    return ".".join(str(p) for p in path) or "<root>"


def _label(value: Any) -> str:
    text = value.text if isinstance(value, Raw) else repr(value)
    return text if len(text) <= 40 else f"{text[:30]}...({len(text)} chars)"


# ---------------------------------------------------------------------------------------------
# The exact bodies of issue 12's findings 1, 2 and 4.


def _finding_spec(name: str, **changes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": name,
        "space": {"x": {"type": "float", "low": -2.0, "high": 2.0}},
        "budget": {"trials": 5},
        "sampler": {"name": "random", "seed": 0},
    }
    spec.update(changes)
    return {"v": 1, "type": "study.create", "study": spec}


# Each: (name, exact body, the field a refusal should name or None when any refusal will do).
FINDINGS: list[tuple[str, bytes, str | None]] = [
    (
        "finding 1: float bounds +-1.7976931348623157e308",
        dumps(
            _finding_spec(
                "f1-maxfloat",
                space={
                    "x": {
                        "type": "float",
                        "low": -1.7976931348623157e308,
                        "high": 1.7976931348623157e308,
                    }
                },
            )
        ),
        "study.space.x",
    ),
    (
        "finding 1: float step 5e-324",
        dumps(
            _finding_spec(
                "f1-step", space={"x": {"type": "float", "low": 0.0, "high": 1.0, "step": 5e-324}}
            )
        ),
        "study.space.x",
    ),
    (
        "finding 1: int bound 10**400",
        dumps(_finding_spec("f1-bigint", space={"n": {"type": "int", "low": 0, "high": 10**400}})),
        "study.space.n",
    ),
    (
        "finding 1: sampler.seed -1",
        dumps(_finding_spec("f1-seed-neg", sampler={"name": "random", "seed": -1})),
        "study.sampler.seed",
    ),
    (
        "finding 1/2: sampler.seed 2**32",
        dumps(_finding_spec("f1-seed-big", sampler={"name": "random", "seed": 4294967296})),
        "study.sampler.seed",
    ),
    ("finding 2: array nested 1,000 deep", b"[" * 1000 + b"]" * 1000, None),
    (
        "finding 2: trial.enqueue param 10**400",
        dumps({"v": 1, "type": "trial.enqueue", "study": EXTERNAL, "params": {"x": 10**400}}),
        "params.x",
    ),
    (
        "finding 2: categorical choice with a lone surrogate",
        dumps(
            _finding_spec(
                "f2-surrogate", space={"c": {"type": "categorical", "choices": ["x\ud800y"]}}
            )
        ),
        "study.space.c.choices",
    ),
    (
        "finding 4: tell with true for trial and value",
        b'{"v":true,"type":"trial.tell","study":"a","trial":true,"values":[true]}',
        "v",
    ),
    (
        "finding 4: budget trials true",
        dumps({"v": 1, "type": "study.budget", "name": BUDGET_STUDY, "budget": {"trials": True}}),
        "budget.trials",
    ),
    (
        "finding 4: low false",
        dumps(_finding_spec("f4-false", space={"x": {"type": "float", "low": False, "high": 1.0}})),
        "study.space.x.low",
    ),
    (
        "finding 4: int low -0.0",
        dumps(_finding_spec("f4-negzero", space={"n": {"type": "int", "low": -0.0, "high": 3}})),
        "study.space.n.low",
    ),
    (
        "finding 4: int low 1e-400",
        dumps(
            _finding_spec("f4-tiny", space={"n": {"type": "int", "low": Raw("1e-400"), "high": 3}})
        ),
        "study.space.n.low",
    ),
    (
        "finding 4: trial_timeout 5e-324",
        dumps(_finding_spec("f4-timeout", trial_timeout=5e-324)),
        "study.trial_timeout",
    ),
]


# ---------------------------------------------------------------------------------------------
# Case generators.


def amqp_cases(seed: int, n: int) -> Iterator[Case]:
    """`n` mutated requests for hpod.requests, deterministic from `seed`."""
    rng = random.Random(seed)
    for i in range(n):
        bodies = seed_bodies(i)
        kind = rng.choice(sorted(bodies))
        label, body = mutate(rng, bodies[kind])
        yield Case(f"#{i} {kind}: {label}", body)


# How a request of each type travels over HTTP: (method, path template, fields of the body).
ROUTES: dict[str, tuple[str, str, tuple[str, ...] | None]] = {
    "study.create": ("POST", "/studies", None),  # the body is the spec itself
    "study.stop": ("POST", "/studies/{name}/stop", ()),
    "study.pause": ("POST", "/studies/{name}/pause", ()),
    "study.resume": ("POST", "/studies/{name}/resume", ()),
    "study.budget": ("POST", "/studies/{name}/budget", ("budget",)),
    "study.strategy": ("POST", "/studies/{name}/strategy", ("strategy",)),
    "trial.ask": ("POST", "/studies/{name}/ask", ()),
    "trial.tell": ("POST", "/studies/{name}/tell", ("trial", "values", "state")),
    "trial.enqueue": ("POST", "/studies/{name}/enqueue", ("params",)),
    "mode.set": ("POST", "/mode", ("mode", "study")),
}


def _route(envelope: dict[str, Any]) -> tuple[str, str, Any]:
    """The HTTP route, path and JSON body of a valid request envelope."""
    method, template, fields = ROUTES[envelope["type"]]
    name = envelope.get("name") or envelope.get("study")
    if fields is None:
        return method, template, envelope["study"]
    path = template.format(name=name) if "{name}" in template else template
    return method, path, {k: envelope[k] for k in fields if k in envelope}


def _quoted_name(rng: random.Random) -> str:
    name = rng.choice([*ODD_STRINGS[:2], "ghost", "a" * 5000, "..", "%2e%2e", "fz-ext/trials"])
    if isinstance(name, Raw):
        name = name.text
    return urllib.parse.quote(name.encode("utf-8", "surrogatepass"), safe="")


def http_cases(seed: int, n: int) -> Iterator[HttpCase]:
    """`n` mutated HTTP requests, deterministic from `seed`: mutated bodies on every route
    with a body, odd names in paths, and routes, methods and URLs that do not exist."""
    rng = random.Random(seed)
    for i in range(n):
        bodies = seed_bodies(i)
        kind = rng.choice(sorted(bodies))
        envelope = bodies[kind]
        roll = rng.random()
        if roll < 0.25:
            label, body = mutate(rng, envelope)
            yield HttpCase(f"#{i} /requests {kind}: {label}", "POST", "/requests", body)
        elif roll < 0.85:
            method, path, value = _route(envelope)
            label, body = mutate(rng, value)
            yield HttpCase(f"#{i} {path} {kind}: {label}", method, path, body)
        elif roll < 0.93:
            method, path, value = _route(envelope)
            bad = _quoted_name(rng)
            target = path.replace(str(envelope.get("name") or envelope.get("study")), bad)
            if target == path:
                target = f"/studies/{bad}"
                method = "GET"
            yield HttpCase(f"#{i} name in path {bad[:30]}", method, target, dumps(value))
        else:
            yield rng.choice(http_odd_cases())


def http_odd_cases() -> list[HttpCase]:
    """Requests the HTTP layer itself must answer in JSON: unknown routes (404), wrong methods
    (405), over-long URLs and headers, bad tokens, bad query strings."""
    return [
        HttpCase("404 GET", "GET", "/no/such/route"),
        HttpCase("404 POST", "POST", "/studies/fz-ext/explode", b"{}"),
        HttpCase("404 unknown study", "GET", "/studies/ghost"),
        HttpCase("405 PUT /studies", "PUT", "/studies", b"{}"),
        HttpCase("405 DELETE study", "DELETE", "/studies/fz-ext"),
        HttpCase("405 GET /requests", "GET", "/requests"),
        HttpCase("long URL 10k", "GET", "/studies/" + "a" * 10_000),
        HttpCase("long URL 100k", "GET", "/studies/" + "a" * 100_000),
        HttpCase("long header", "GET", "/health", headers={"X-Fuzz": "a" * 20_000}),
        HttpCase("no token", "POST", "/mode", b'{"mode":"fast"}', token=False),
        HttpCase(
            "bad token", "POST", "/mode", b'{"mode":"fast"}', headers={"Authorization": "Bearer x"}
        ),
        HttpCase("trials bad query", "GET", "/studies/fz-ext/trials?from=-1&limit=abc&state=zz"),
        HttpCase("trials huge limit", "GET", "/studies/fz-ext/trials?limit=" + "9" * 500),
        HttpCase("importance bad objective", "GET", "/studies/fz-ext/importance?objective=x"),
        HttpCase("policy import garbage", "POST", "/policy/import", b"[" * 1000 + b"]" * 1000),
        HttpCase(
            "policy import bignum", "POST", "/policy/import", b'{"format":' + b"9" * 5000 + b"}"
        ),
        HttpCase("oversize body", "POST", "/studies", b'{"a":"' + b"x" * (MAX_BYTES + 10) + b'"}'),
        HttpCase("deep body 100k", "POST", "/studies", b"[" * 100_000 + b"]" * 100_000),
    ]


def http_finding_cases() -> list[HttpCase]:
    """The findings' bodies on HTTP: envelopes on /requests, specs on /studies."""
    out = []
    for name, body, _field in FINDINGS:
        out.append(HttpCase(f"{name} (/requests)", "POST", "/requests", body))
        if body.startswith(b'{"v":1,"type":"study.create"'):
            spec = body[body.index(b'"study":') + len(b'"study":') : -1]
            out.append(HttpCase(f"{name} (/studies)", "POST", "/studies", spec))
    return out
