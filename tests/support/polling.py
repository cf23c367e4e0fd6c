"""Polling helper for tests that wait on a real engine."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")


def poll_until(
    produce: Callable[[], T],
    accept: Callable[[T], bool],
    timeout: float = 30,
    interval: float = 0.25,
) -> T:
    """Call `produce` until `accept` is true for its result, else fail the test."""
    deadline = time.monotonic() + timeout
    while True:
        value = produce()
        if accept(value):
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s, last value: {value!r}")
        time.sleep(interval)
