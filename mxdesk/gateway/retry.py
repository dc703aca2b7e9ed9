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
        # The exponent is bounded: after a thousand failures factor**n overflows a float, and
        # by then the delay has long reached the maximum anyway.
        exponent = min(max(0, attempts - 1), 60)
        return float(min(self.maximum, self.initial * self.factor**exponent))

    def give_up(self, age: float) -> bool:
        return age >= self.hold_after
