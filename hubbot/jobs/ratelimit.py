"""Request rate limits per caller: a signed-in owner, or the client address when anonymous.

Validation and submission plan against the Hub, so each request costs the service real work;
a token bucket per (action, caller) lets bursts through and refuses floods with the number of
seconds after which the next request would be accepted.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

from ..errors import RateLimited


@dataclass(frozen=True)
class Rate:
    """`per_minute` requests a minute on average, up to `burst` at once."""

    per_minute: float
    burst: int


DEFAULT_RATES = {"validate": Rate(30, 10), "submit": Rate(10, 5)}
MAX_CALLERS = 10_000  # buckets kept; the fullest (idle) ones are dropped first


class RateLimiter:
    """Token buckets by (action, caller). `clock` is injectable for tests."""

    def __init__(self, rates: dict[str, Rate] | None = None, clock=time.monotonic):
        self.rates = dict(DEFAULT_RATES if rates is None else rates)
        self.clock = clock
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}  # -> (tokens, at)
        self._lock = threading.Lock()

    def check(self, action: str, caller: str) -> None:
        """Take one request from `caller`'s bucket for `action`, or raise RateLimited."""
        rate = self.rates.get(action)
        if rate is None:
            return
        per_s = rate.per_minute / 60.0
        t = self.clock()
        with self._lock:
            tokens, at = self._buckets.get((action, caller), (float(rate.burst), t))
            tokens = min(float(rate.burst), tokens + (t - at) * per_s)
            if tokens < 1.0:
                wait = math.ceil((1.0 - tokens) / per_s)
                raise RateLimited(f"too many {action} requests from {caller}: at most {rate.per_minute:g} a minute "
                                  f"(bursts of {rate.burst}); try again in {wait} s", retry_after=wait)
            self._buckets[(action, caller)] = (tokens - 1.0, t)
            if len(self._buckets) > MAX_CALLERS:
                for key in sorted(self._buckets, key=lambda k: -self._buckets[k][0])[:len(self._buckets) // 10]:
                    del self._buckets[key]
