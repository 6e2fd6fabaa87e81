"""Per-tenant rate limit of workflow starts: one token bucket per tenant, in this process.

Each start (``POST /v1/workflows/{capability}``) takes a token from its tenant's bucket; the
bucket holds at most ``burst`` tokens and refills at ``rate_per_minute``. An empty bucket
answers 429 with ``Retry-After`` (whole seconds until a token is back) and starts nothing.

The buckets live in the API process: with N API processes behind a balancer a tenant can start
up to N times the rate. That bound is the point (a runaway client or script cannot start
thousands of paid runs a minute), so per-process buckets are enough; a shared limit would need
Postgres or Redis on every start.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from litestar.exceptions import TooManyRequestsException

# Buckets that have refilled completely carry no state; beyond this many tenants they are dropped.
MAX_IDLE_BUCKETS = 10_000


class StartRateLimited(TooManyRequestsException):
    """429 with ``Retry-After``: the tenant started too many workflows in a short time."""


class StartLimiter:
    def __init__(self, rate_per_minute: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        if rate_per_minute <= 0 or burst < 1:
            raise ValueError("the start rate must be positive and the burst at least 1")
        self._per_second = rate_per_minute / 60.0
        self._burst = float(burst)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # tenant -> (tokens, at)
        self._lock = threading.Lock()

    def _tokens(self, tenant: str, now: float) -> float:
        tokens, at = self._buckets.get(tenant, (self._burst, now))
        return min(self._burst, tokens + (now - at) * self._per_second)

    def retry_after(self, tenant: str) -> float:
        """Take a token for ``tenant``: 0 when taken, else the seconds until one is back."""
        with self._lock:
            now = self._clock()
            tokens = self._tokens(tenant, now)
            if tokens < 1.0:
                self._buckets[tenant] = (tokens, now)
                return (1.0 - tokens) / self._per_second
            self._buckets[tenant] = (tokens - 1.0, now)
            if len(self._buckets) > MAX_IDLE_BUCKETS:
                self._buckets = {t: (n, a) for t, (n, a) in self._buckets.items()
                                 if self._tokens(t, now) < self._burst}
            return 0.0

    def take(self, tenant: str) -> None:
        """Take a token for ``tenant`` or raise :class:`StartRateLimited` (429, Retry-After)."""
        wait = self.retry_after(tenant)
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            raise StartRateLimited(
                detail=f"tenant {tenant!r} is starting workflows too fast; retry in {seconds} s",
                headers={"Retry-After": str(seconds)},
            )
