"""Backoff delays."""

from __future__ import annotations

import random

import pytest

from xtm_composer.backoff import Backoff


def test_delays_grow_and_cap() -> None:
    """Delays double per attempt, stay within the cap, and never drop to zero."""
    backoff = Backoff(initial_delay=1, max_delay=60, rng=random.Random(7))

    delays = [backoff.next_delay() for _ in range(12)]

    assert all(0.5 <= delay <= 60 for delay in delays)
    assert delays[-1] >= 30
    assert 12 == backoff.attempt


def test_reset_starts_over() -> None:
    """After a reset the next delay is short again."""
    backoff = Backoff(initial_delay=1, max_delay=60)
    for _ in range(10):
        backoff.next_delay()

    backoff.reset()

    assert backoff.next_delay() <= 1


def test_invalid_bounds_rejected() -> None:
    """A zero initial delay would allow a tight loop and is rejected."""
    with pytest.raises(ValueError):
        Backoff(initial_delay=0, max_delay=1)
