"""The one back-off of every retry loop: grows, caps, resets and bounds."""

from __future__ import annotations

from hpod.backoff import Backoff


def test_delays_grow_to_the_cap_and_reset() -> None:
    b = Backoff(initial=1.0, factor=2.0, maximum=5.0, jitter=0.0)
    assert [b.next_delay() for _ in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    b.reset()
    assert b.next_delay() == 1.0


def test_jitter_stays_within_its_share() -> None:
    b = Backoff(initial=10.0, factor=1.0, maximum=10.0, jitter=0.2)
    delays = [b.next_delay() for _ in range(200)]
    assert all(8.0 <= d <= 12.0 for d in delays)
    assert len(set(delays)) > 1


def test_a_bounded_backoff_is_exhausted_after_its_tries() -> None:
    b = Backoff(max_tries=3)
    for _ in range(3):
        assert not b.exhausted
        b.next_delay()
    assert b.exhausted
    b.reset()
    assert not b.exhausted
