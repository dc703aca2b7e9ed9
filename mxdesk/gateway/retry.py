"""The one place that says when a temporarily failed delivery is tried again."""

from __future__ import annotations

from dataclasses import dataclass

from mxdesk.config import RetryConfig


@dataclass(frozen=True)
class RetryPolicy:
    initial: float
    maximum: float
    factor: float
    hold_after: float

    @classmethod
    def from_config(cls, c: RetryConfig) -> RetryPolicy:
        return cls(c.initial, c.maximum, c.factor, c.hold_after)

    def delay(self, attempts: int) -> float:
        """Seconds to wait after the attempts-th failure (1-based): exponential, capped."""
        return float(min(self.maximum, self.initial * self.factor ** max(0, attempts - 1)))

    def give_up(self, age: float) -> bool:
        return age >= self.hold_after
