"""Per-key rate limits, in this process (each worker process keeps its own buckets)."""

from __future__ import annotations

import time

from store.access.principals import Principal


class RateLimits:
    """Token buckets per key, in this process: requests a second, and phone lookups a minute (so a
    key cannot enumerate numbers)."""

    def __init__(self, per_second: float, phone_lookups_per_minute: float) -> None:
        self._requests = _Buckets(per_second, burst=max(1.0, per_second))
        self._phones = _Buckets(phone_lookups_per_minute / 60, burst=max(1.0, phone_lookups_per_minute / 6))

    def request(self, principal: Principal) -> float:
        """0 when the request may go on, else the seconds to wait."""
        return self._requests.take(principal.key_prefix)

    def phone_lookup(self, principal: Principal) -> float:
        return self._phones.take(principal.key_prefix)


class _Buckets:
    def __init__(self, rate: float, burst: float) -> None:
        self._rate = rate
        self._burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    def take(self, key: str) -> float:
        if self._rate <= 0:
            return 0.0
        now = time.monotonic()
        tokens, at = self._buckets.get(key, (self._burst, now))
        tokens = min(self._burst, tokens + (now - at) * self._rate)
        if tokens < 1:
            self._buckets[key] = (tokens, now)
            return (1 - tokens) / self._rate
        self._buckets[key] = (tokens - 1, now)
        return 0.0
