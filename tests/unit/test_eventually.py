"""The suite's one polling helper, `eventually` (and its async twin), does what tests need."""

from __future__ import annotations

import pytest
from conftest import eventually, eventually_async


def test_returns_the_first_truthy_value_and_retries_assertions() -> None:
    """Falsy results and AssertionErrors count as "not yet"; the first truthy result is
    returned as it is."""
    answers: list[object] = [None, 0, AssertionError("not yet"), {"state": "done"}]

    def poll() -> object:
        answer = answers.pop(0)
        if isinstance(answer, AssertionError):
            raise answer
        return answer

    assert eventually(poll, timeout=5, interval=0.001) == {"state": "done"}
    assert answers == []


def test_after_the_timeout_the_last_assertion_or_what_is_raised() -> None:
    """The failure says what was wrong: `fn`'s own assertion, else `what` (text or function)."""

    def wrong() -> None:
        raise AssertionError("the study is still running")

    with pytest.raises(AssertionError, match="the study is still running"):
        eventually(wrong, timeout=0.05, interval=0.01)
    with pytest.raises(AssertionError, match=r"0\.05 s: the log tail"):
        eventually(lambda: False, timeout=0.05, interval=0.01, what=lambda: "the log tail")


def test_another_exception_ends_the_wait_at_once() -> None:
    """Only assertions are retried: a broken poll is not hidden behind the timeout."""
    calls: list[int] = []

    def broken() -> bool:
        calls.append(1)
        raise RuntimeError("daemon exited")

    with pytest.raises(RuntimeError, match="daemon exited"):
        eventually(broken, timeout=30, interval=0.01)
    assert calls == [1]


async def test_the_async_twin_awaits_and_follows_the_same_rules() -> None:
    """`eventually_async` awaits what `fn` returns, retries falsy values and assertions, and
    raises the last assertion after its time."""
    answers: list[object] = [None, AssertionError("not yet"), "done"]

    async def poll() -> object:
        answer = answers.pop(0)
        if isinstance(answer, AssertionError):
            raise answer
        return answer

    assert await eventually_async(poll, 5, 0.001) == "done"

    def wrong() -> None:
        raise AssertionError("the loop has not restarted")

    with pytest.raises(AssertionError, match="the loop has not restarted"):
        await eventually_async(wrong, 0.05, 0.01)
