"""Reconnecting with exponential backoff and jitter, shared by the live sources."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable


class Backoff:
    """Waits that double from ``initial`` up to ``maximum``, each drawn at random from its
    upper half (so many exporters restarted together do not reconnect in step)."""

    def __init__(
        self,
        initial: float,
        maximum: float,
        uniform: Callable[[float, float], float] = random.uniform,
    ) -> None:
        if initial <= 0 or maximum < initial:
            raise ValueError(f"backoff needs 0 < initial <= maximum, got {initial}, {maximum}")
        self.initial = initial
        self.maximum = maximum
        self._uniform = uniform
        self._ceiling = 0.0

    def next(self) -> float:
        """The next wait, in seconds."""
        self._ceiling = min(self.maximum, max(self.initial, self._ceiling * 2))
        return self._uniform(self._ceiling / 2, self._ceiling)

    def reset(self) -> None:
        """Connected again: the next failure starts from ``initial``."""
        self._ceiling = 0.0

    def wait(self, stop: threading.Event) -> bool:
        """Sleep the next wait; True if ``stop`` was set meanwhile."""
        return stop.wait(self.next())
