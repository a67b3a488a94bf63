"""The wire schema: what is accepted, and which field a rejection names."""

from __future__ import annotations

import json

import pytest

from hpod.errors import RequestRejected
from hpod.schema import StudySpec, TrialTell, json_schema, parse_request

SPEC = {
    "name": "s1",
    "objective": "quadratic",
    "space": {
        "kind": {"type": "categorical", "choices": ["a", "b"]},
        "lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": True},
        "depth": {
            "type": "int",
            "low": 1,
            "high": 8,
            "condition": {"param": "kind", "values": ["b"]},
        },
    },
    "budget": {"trials": 10},
}


class TestParseRequest:
    """parse_request turns bytes into a typed request or a RequestRejected naming the field."""

    def test_a_valid_create_parses(self) -> None:
        """A complete study.create request becomes a typed StudyCreate body."""
        request = parse_request(
            json.dumps({"v": 1, "type": "study.create", "id": "r1", "study": SPEC})
        )
        assert request.type == "study.create" and request.id == "r1"
        assert list(request.body.study.space) == ["kind", "lr", "depth"]  # type: ignore[union-attr]

    def test_field_path_drops_union_tags(self) -> None:
        """An error inside a parameter names study.space.<param>.<field>, not the union tag."""
        bad = {**SPEC, "space": {"lr": {"type": "float", "low": 0, "high": 1, "step": -1}}}
        with pytest.raises(RequestRejected) as info:
            parse_request({"v": 1, "type": "study.create", "study": bad})
        assert info.value.field == "study.space.lr.step"

    def test_nan_is_rejected_with_its_position(self) -> None:
        """A NaN in tell values names values.<i>."""
        with pytest.raises(RequestRejected) as info:
            parse_request(b'{"v":1,"type":"trial.tell","study":"s","trial":0,"values":[1.0,NaN]}')
        assert info.value.field == "values.1"

    def test_oversized_message_is_rejected_before_parsing(self) -> None:
        """A message above the byte limit is refused as too_large."""
        with pytest.raises(RequestRejected) as info:
            parse_request(b"{" + b" " * 100 + b"}", max_bytes=50)
        assert info.value.code == "too_large"

    def test_a_single_value_is_accepted_for_tell(self) -> None:
        """values may be a bare number for a single-objective study."""
        assert TrialTell(study="s", trial=0, values=0.5).values == [0.5]  # type: ignore[arg-type]


class TestStudySpec:
    """StudySpec invariants."""

    def test_canonical_keeps_the_space_order(self) -> None:
        """Two specs differing only in space order are different (conditions refer back)."""
        spec = StudySpec.model_validate(SPEC)
        assert StudySpec.model_validate_json(spec.model_dump_json()).canonical() == spec.canonical()
        reordered = dict(SPEC, space=dict(reversed(list(SPEC["space"].items()))))  # type: ignore[call-overload]
        with pytest.raises(RequestRejected):
            StudySpec.model_validate(reordered)

    def test_canonical_ignores_key_order_elsewhere(self) -> None:
        """objective_kwargs in another key order is the same spec."""
        a = StudySpec.model_validate({**SPEC, "objective_kwargs": {"a": 1, "b": 2}})
        b = StudySpec.model_validate({**SPEC, "objective_kwargs": {"b": 2, "a": 1}})
        assert a.canonical() == b.canonical()


def test_json_schema_covers_every_request_type() -> None:
    """`hpod schema` lists one schema per request type, each requiring v and type."""
    schema = json_schema()
    names = {ref["$ref"].rsplit("/", 1)[1] for ref in schema["oneOf"]}
    assert names == {
        "StudyCreate",
        "StudyStop",
        "StudyPause",
        "StudyResume",
        "StudyBudget",
        "StudyStrategy",
        "TrialAsk",
        "TrialTell",
        "TrialEnqueue",
        "ModeSet",
    }
    for name in names:
        assert {"v", "type"} <= set(schema["$defs"][name]["required"])
