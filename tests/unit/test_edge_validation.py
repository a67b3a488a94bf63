"""Validation at the edge (issue 12, findings 1-4): the exact bodies that were accepted, or
crashed the parser, are each refused with a specific error naming the field."""

from __future__ import annotations

import json

import pytest

from hpod.errors import RequestRejected
from hpod.schema import (
    MAX_CHOICES,
    MAX_JSON_DEPTH,
    MAX_PARAMS,
    MAX_STRING_CHARS,
    load_json,
    parse_request,
)


def create(space: str = '{"x":{"type":"float","low":-5.0,"high":5.0}}', **extra: str) -> bytes:
    """A study.create message as raw JSON text, with `space` and extra spec fields as JSON."""
    fields = "".join(f',"{k}":{v}' for k, v in extra.items())
    return (
        '{"v":1,"type":"study.create","study":{"name":"edge","objective":"quadratic",'
        f'"space":{space},"budget":{{"trials":5}}{fields}}}}}'
    ).encode()


# (case, raw message, error code, field, a word the message must contain)
ISSUE_BODIES: list[tuple[str, bytes, str, str, str]] = [
    # Finding 1: accepted specs that made the daemon unstartable.
    (
        "float range overflows",
        create(
            '{"x":{"type":"float","low":-1.7976931348623157e308,"high":1.7976931348623157e308}}'
        ),
        "invalid",
        "study.space.x",
        "Range exceeds valid bounds",
    ),
    (
        "float step 5e-324",
        create('{"x":{"type":"float","low":0.0,"high":1.0,"step":5e-324}}'),
        "invalid",
        "study.space.x.step",
        "step",
    ),
    (
        "int bound 10**400",
        create('{"x":{"type":"int","low":0,"high":1' + "0" * 400 + "}}"),
        "invalid",
        "study.space.x.high",
        "out of range",
    ),
    ("seed -1", create(sampler='{"seed":-1}'), "invalid", "study.sampler.seed", "-1"),
    (
        "seed 2**32",
        create(sampler='{"seed":4294967296}'),
        "invalid",
        "study.sampler.seed",
        "4294967296",
    ),
    # Finding 2: poison messages.
    ("array nested 1,000 deep", b"[" * 1000 + b"]" * 1000, "not_json", "", "nested"),
    (
        "enqueue 10**400",
        b'{"v":1,"type":"trial.enqueue","study":"a","params":{"x":1' + b"0" * 400 + b"}}",
        "invalid",
        "params.x",
        "out of range",
    ),
    (
        "choice with a lone surrogate",
        create('{"c":{"type":"categorical","choices":["a","x\\ud800y"]}}'),
        "invalid",
        "study.space.c.choices.1",
        "Unicode",
    ),
    # The protocol is UTF-8 JSON: json.loads alone accepted these (the fuzz run's #130, #58).
    (
        "utf-8 BOM",
        b'\xef\xbb\xbf{"v":1,"type":"study.strategy","name":"fz-ctl","strategy":"tpe"}',
        "not_json",
        "",
        "byte order mark",
    ),
    (
        "utf-16",
        '{"v":1,"type":"study.pause","name":"fz-ctl"}'.encode("utf-16"),
        "not_json",
        "",
        "UTF-16",
    ),
    (
        "utf-16-le without a BOM",
        '{"v":1,"type":"study.pause","name":"fz-ctl"}'.encode("utf-16-le"),
        "not_json",
        "",
        "UTF-16-LE",
    ),
    (
        "utf-32",
        '{"v":1,"type":"study.pause","name":"fz-ctl"}'.encode("utf-32"),
        "not_json",
        "",
        "UTF-32",
    ),
    # Finding 4: booleans taken as numbers, floats taken as ints, a timeout no worker honours.
    (
        "tell with true everywhere",
        b'{"v":true,"type":"trial.tell","study":"a","trial":true,"values":[true]}',
        "invalid",
        "v",
        "integer",
    ),
    (
        "tell trial true",
        b'{"v":1,"type":"trial.tell","study":"a","trial":true,"values":[1.0]}',
        "invalid",
        "trial",
        "true",
    ),
    (
        "tell values [true]",
        b'{"v":1,"type":"trial.tell","study":"a","trial":1,"values":[true]}',
        "invalid",
        "values.0",
        "true",
    ),
    (
        "budget trials true",
        b'{"v":1,"type":"study.budget","name":"a","budget":{"trials":true}}',
        "invalid",
        "budget.trials",
        "true",
    ),
    (
        "low false",
        create('{"x":{"type":"float","low":false,"high":1.0}}'),
        "invalid",
        "study.space.x.low",
        "false",
    ),
    (
        "-0.0 as an int",
        create('{"x":{"type":"int","low":-0.0,"high":3}}'),
        "invalid",
        "study.space.x.low",
        "integer",
    ),
    (
        "1e-400 as an int",
        b'{"v":1,"type":"trial.tell","study":"a","trial":1e-400,"values":[1.0]}',
        "invalid",
        "trial",
        "integer",
    ),
    (
        "trial_timeout 5e-324",
        create(trial_timeout="5e-324"),
        "invalid",
        "study.trial_timeout",
        "greater than or equal to 1",
    ),
]


@pytest.mark.parametrize(
    ("case", "raw", "code", "field", "word"), ISSUE_BODIES, ids=[b[0] for b in ISSUE_BODIES]
)
def test_issue_bodies_are_refused_naming_the_field(
    case: str, raw: bytes, code: str, field: str, word: str
) -> None:
    """Each body of issue 12 is a RequestRejected with its code, field and reason."""
    with pytest.raises(RequestRejected) as info:
        parse_request(raw)
    assert (info.value.code, info.value.field) == (code, field), info.value
    assert word in info.value.message, info.value.message


def test_a_valid_create_still_parses() -> None:
    """The helper's own spec is valid: the refusals above come from the field they change."""
    assert parse_request(create()).type == "study.create"


class TestLoadJson:
    """load_json: size first, then depth, then the parse; never a RecursionError."""

    def test_size_is_checked_before_depth(self) -> None:
        """A deep array over the byte limit is too_large: nothing of it was parsed."""
        with pytest.raises(RequestRejected) as info:
            load_json(b"[" * 5000 + b"]" * 5000, max_bytes=1000)
        assert info.value.code == "too_large"

    def test_the_depth_limit_is_exact(self) -> None:
        """MAX_JSON_DEPTH levels parse; one more is refused as nested too deep."""
        depth = MAX_JSON_DEPTH
        assert load_json("[" * depth + "]" * depth, 1 << 20) is not None
        deeper = '{"a":' * depth + "1" + "}" * depth
        with pytest.raises(RequestRejected, match="nested deeper"):
            load_json("[" + deeper + "]", 1 << 20)

    def test_brackets_inside_strings_do_not_count(self) -> None:
        """Strings full of brackets and escaped quotes are data, not nesting."""
        text = json.dumps({"a": "[" * 500 + '\\"{' * 100, "b": ["]]]", "{{{"]})
        assert load_json(text, 1 << 20)["b"] == ["]]]", "{{{"]

    def test_very_deep_input_is_refused_without_recursion(self) -> None:
        """200,000 levels within the size limit are refused before any parser recurses."""
        with pytest.raises(RequestRejected) as info:
            load_json(b"[" * 200_000, max_bytes=1 << 20)
        assert info.value.code == "not_json" and "nested" in info.value.message

    def test_an_integer_past_the_digit_limit_is_an_error_not_a_crash(self) -> None:
        """Python refuses to convert more than 4,300 digits: that is an invalid request."""
        with pytest.raises(RequestRejected) as info:
            load_json(b"[1" + b"0" * 5000 + b"]", 1 << 20)
        assert info.value.code == "invalid"


class TestLimits:
    """Counts and sizes past the documented limits are refused naming the field."""

    def test_too_many_params(self) -> None:
        """A space of MAX_PARAMS + 1 parameters is refused."""
        space = {f"p{i}": {"type": "float", "low": 0.0, "high": 1.0} for i in range(MAX_PARAMS + 1)}
        with pytest.raises(RequestRejected) as info:
            parse_request(create(json.dumps(space)))
        assert info.value.field == "study.space"

    def test_too_many_choices(self) -> None:
        """A categorical with MAX_CHOICES + 1 choices is refused."""
        space = {"c": {"type": "categorical", "choices": list(range(MAX_CHOICES + 1))}}
        with pytest.raises(RequestRejected) as info:
            parse_request(create(json.dumps(space)))
        assert info.value.field == "study.space.c.choices"

    @pytest.mark.parametrize(
        ("space", "field"),
        [
            (
                {f"p{k}": {"type": "float", "low": 0, "high": 1} for k in range(20_000)},
                "study.space",
            ),
            (
                {"c": {"type": "categorical", "choices": [f"c{k}" for k in range(100_000)]}},
                "study.space.c.choices",
            ),
        ],
        ids=["20,000 params", "100,000 choices"],
    )
    def test_the_fuzz_sizes_that_were_accepted(self, space: dict[str, object], field: str) -> None:
        """The fuzz's spaces of 20,000 parameters and 100,000 choices (tests/fuzz/mutations.py,
        m_space), once accepted, fit in the default 1 MiB and are refused by count."""
        raw = create(json.dumps(space))
        assert len(raw) < 1 << 20
        with pytest.raises(RequestRejected) as info:
            parse_request(raw, 1 << 20)
        assert (info.value.code, info.value.field) == ("invalid", field), info.value
        assert "at most" in info.value.message

    def test_a_long_string(self) -> None:
        """A choice longer than MAX_STRING_CHARS is refused at its index."""
        space = {"c": {"type": "categorical", "choices": ["a", "b" * (MAX_STRING_CHARS + 1)]}}
        with pytest.raises(RequestRejected) as info:
            parse_request(create(json.dumps(space)))
        assert info.value.field == "study.space.c.choices.1"

    def test_deep_objective_kwargs(self) -> None:
        """objective_kwargs nested past MAX_KWARGS_DEPTH are refused."""
        with pytest.raises(RequestRejected) as info:
            parse_request(create(objective_kwargs='{"a":[[[[[[[[1]]]]]]]]}'))
        assert info.value.field == "study.objective_kwargs"

    def test_a_gp_study_with_a_huge_int_grid(self) -> None:
        """The GP sampler enumerates an int grid: 2**40 points would exhaust memory."""
        raw = create('{"n":{"type":"int","low":0,"high":1099511627776}}', sampler='{"name":"gp"}')
        with pytest.raises(RequestRejected) as info:
            parse_request(raw)
        assert info.value.field == "study.space.n" and "GP" in info.value.message
        assert parse_request(create('{"n":{"type":"int","low":0,"high":1099511627776}}'))

    def test_a_condition_value_must_match_a_choice_by_type(self) -> None:
        """true is not the choice 1: a condition compares values as JSON."""
        space = (
            '{"c":{"type":"categorical","choices":[1,2]},'
            '"x":{"type":"float","low":0.0,"high":1.0,"condition":{"param":"c","values":[true]}}}'
        )
        with pytest.raises(RequestRejected) as info:
            parse_request(create(space))
        assert info.value.field == "study.space.x.condition.values"

    def test_an_overflowing_range_with_a_step_names_the_range(self) -> None:
        """With a step, a range whose width overflows is still the range's fault."""
        space = '{"x":{"type":"float","low":-1.7e308,"high":1.7e308,"step":1.0}}'
        with pytest.raises(RequestRejected) as info:
            parse_request(create(space))
        assert info.value.field == "study.space.x" and "Optuna" in info.value.message

    def test_enqueued_values_out_of_the_float_range(self) -> None:
        """1e400 parses as infinity: refused at the parameter, like any non-finite value."""
        with pytest.raises(RequestRejected) as info:
            parse_request(b'{"v":1,"type":"trial.enqueue","study":"a","params":{"x":1e400}}')
        assert (info.value.field, info.value.message) == ("params.x", "inf is not a finite number")

    def test_a_lone_surrogate_anywhere_is_refused(self) -> None:
        """In an id, an objective's keyword argument or a key: each named by its path."""
        cases = [
            (b'{"v":1,"type":"trial.ask","study":"a","id":"r\\udc00"}', "id"),
            (create(objective_kwargs='{"k":"\\ud800"}'), "study.objective_kwargs.k"),
            (create(objective_kwargs='{"\\ud800":1}'), "study.objective_kwargs"),
        ]
        for raw, field in cases:
            with pytest.raises(RequestRejected) as info:
                parse_request(raw)
            assert (info.value.code, info.value.field) == ("invalid", field), raw
            assert "Unicode" in info.value.message
