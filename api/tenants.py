"""Which tenants exist, as the start routes ask it: a capability runs for a tenant the platform
knows (onboarding creates one; the platform's own capabilities run for ``global``).

A tenant once found is remembered for a minute per API process, so a stream of starts for one
tenant costs one query a minute; a tenant not found is asked again each time (it may be
onboarded a moment later)."""

from __future__ import annotations

import time

import asyncpg

REMEMBER_SECONDS = 60.0
_MAX_REMEMBERED = 10_000


class KnownTenants:
    def __init__(self, pool: asyncpg.Pool, remember_seconds: float = REMEMBER_SECONDS) -> None:
        self._pool = pool
        self._remember = remember_seconds
        self._seen: dict[str, float] = {}  # tenant id -> when it was found

    async def exists(self, tenant_id: str) -> bool:
        now = time.monotonic()
        seen = self._seen.get(tenant_id)
        if seen is not None and now - seen < self._remember:
            return True
        if not await self._pool.fetchval("SELECT true FROM tenants WHERE id = $1", tenant_id):
            self._seen.pop(tenant_id, None)
            return False
        if len(self._seen) >= _MAX_REMEMBERED:
            self._seen = {t: at for t, at in self._seen.items() if now - at < self._remember}
            if len(self._seen) >= _MAX_REMEMBERED:
                self._seen.clear()
        self._seen[tenant_id] = now
        return True
