"""Capped exponential backoff with jitter, for every retry loop of the agent."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delays that double from `initial_delay` up to `max_delay` seconds.

    Each delay is drawn in the upper half of its step ("equal jitter"), so many
    agents restarted together do not retry in lockstep, and no delay is ever
    shorter than half of `initial_delay`: a failure never turns into a tight loop.
    """

    initial_delay: float = 1.0
    max_delay: float = 60.0
    attempt: int = 0
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def __post_init__(self) -> None:
        if self.initial_delay <= 0 or self.max_delay < self.initial_delay:
            raise ValueError("backoff needs 0 < initial_delay <= max_delay")

    def next_delay(self) -> float:
        """Return the delay before the next attempt and count this failure."""
        step: float = min(
            self.max_delay, self.initial_delay * 2.0 ** min(self.attempt, 30)
        )
        self.attempt += 1
        return step / 2 + self.rng.uniform(0, step / 2)

    def reset(self) -> None:
        self.attempt = 0
