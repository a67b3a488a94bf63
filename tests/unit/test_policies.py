"""The policy chain: order, SkipEvaluation and failure isolation."""

from __future__ import annotations

import pytest

from hpod.cache import CACHE
from hpod.policies import HookContext, Policy, PolicyChain, SkipEvaluation
from hpod.schema import StudySpec

SPEC = StudySpec.model_validate(
    {"name": "s", "space": {"x": {"type": "float", "low": 0, "high": 1}}, "budget": {"trials": 1}}
)


class Recorder(Policy):
    """Records the hooks it sees into a shared list."""

    def __init__(self, label: str, calls: list[str]) -> None:
        self.label, self.calls = label, calls

    def before_dispatch(self, trial: HookContext) -> None:
        """Record the call."""
        self.calls.append(f"before:{self.label}")

    def after_tell(self, trial: HookContext) -> None:
        """Record the call."""
        self.calls.append(f"after:{self.label}")


class Broken(Policy):
    """A policy whose hooks always fail."""

    def before_dispatch(self, trial: HookContext) -> None:
        """Fail."""
        raise RuntimeError("boom")


class Hit(Policy):
    """A policy that answers every trial itself, like a cache hit."""

    def before_dispatch(self, trial: HookContext) -> None:
        """Skip evaluation with a known value."""
        raise SkipEvaluation([0.25], CACHE)


def event() -> HookContext:
    """A trial event for the hooks."""
    return HookContext(SPEC, 0, {"x": 0.5})


def test_before_hooks_in_order_after_hooks_reversed() -> None:
    """Policies nest like layers."""
    calls: list[str] = []
    chain = PolicyChain([Recorder("a", calls), Recorder("b", calls)])
    chain.before_dispatch(event())
    chain.after_tell(event())
    assert calls == ["before:a", "before:b", "after:b", "after:a"]


def test_a_failing_policy_does_not_stop_the_chain() -> None:
    """An exception in one hook is logged and the next policy still runs."""
    calls: list[str] = []
    PolicyChain([Broken(), Recorder("a", calls)]).before_dispatch(event())
    assert calls == ["before:a"]


def test_skip_evaluation_propagates() -> None:
    """SkipEvaluation is the one exception that leaves the chain, carrying the values."""
    with pytest.raises(SkipEvaluation) as info:
        PolicyChain([Hit()]).before_dispatch(event())
    assert info.value.values == [0.25]


def test_add_places_a_policy_and_refuses_duplicates() -> None:
    """add(before=...) inserts in front of a given policy type; a duplicate is an error."""
    calls: list[str] = []
    chain = PolicyChain([Recorder("a", calls)])
    chain.add(Hit(), before=Recorder)
    assert isinstance(chain.policies[0], Hit)
    with pytest.raises(ValueError, match="already"):
        chain.add(Hit())
