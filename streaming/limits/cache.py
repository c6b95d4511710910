"""The per-process cache of limits in force, keyed by (tenant, user).

An entry is valid while its tenant's limits version in Redis holds: the admission script refuses
to run with a stale version (no extra round trip), and the engine reloads the entry from SQL.
``CACHE_MAX_AGE_S`` bounds staleness should Redis lose the version keys.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from streaming.limits.keys import CACHE_MAX_AGE_S, CACHE_MAX_ENTRIES, LIMITS, ORDER
from streaming.limits.overrides import get_effective_limits


@dataclass
class Entry:
    """The limits in force for one user and their tenant, as of one limits version; for an app
    token with ``end_user_limits``, the limits of each of its end users too."""

    version: str
    user: dict[str, int]
    tenant: dict[str, int]
    end_user: dict[str, int] | None = None
    loaded: float = field(default_factory=time.monotonic)

    def ordered(self) -> list[int]:
        """The eight limits in the order the admission script takes them."""
        return [(self.user if scope == "user" else self.tenant)[key] for scope, key in ORDER]

    def end_user_ordered(self) -> list[int]:
        """An end user's four limits as the admission script takes them (-1: not limited)."""
        return [(self.end_user or {}).get(key, -1) for key in LIMITS]


class LimitsCache:
    """Per-process limits, keyed by (tenant, user), valid while the tenant's version holds."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str], Entry] = {}

    def get(self, tenant_id: str, user_id: str) -> Entry | None:
        """The cached entry, or None when there is none or it is older than the max age."""
        with self._lock:
            entry = self._entries.get((tenant_id, user_id))
        if entry is None or time.monotonic() - entry.loaded > CACHE_MAX_AGE_S:
            return None
        return entry

    def load(self, tenant_id: str, user_id: str, version: str) -> Entry:
        """Read the limits from SQL (after ``version`` was read, so a racing change shows)."""
        limits = get_effective_limits(tenant_id, user_id)
        entry = Entry(version, limits["user"], limits["tenant"], limits.get("end_user"))
        with self._lock:
            if len(self._entries) >= CACHE_MAX_ENTRIES:
                self._entries.clear()
            self._entries[(tenant_id, user_id)] = entry
        return entry
