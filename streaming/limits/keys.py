"""The names and numbers every limits module shares: limits, scopes, Redis keys, one clock.

Keys carry the hash tag ``{t:<tenant id>}``, so every script touches one Redis Cluster slot.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

Scope = Literal["user", "tenant"]

LIMITS = ("rpm", "concurrent", "tpm", "tpd")
SCOPES: tuple[Scope, ...] = ("user", "tenant")
MAX_LIMIT = 10**15
# The order of the eight limits in every script result.
ORDER: tuple[tuple[Scope, str], ...] = tuple((scope, key) for key in LIMITS for scope in SCOPES)
WINDOW_S = {"rpm": 60, "tpm": 60, "tpd": 86400}
MINUTE_TTL_S = 120
DAY_TTL_S = 2 * 86400 + 3600
RESERVATION_TTL_S = 2 * 86400 + 3600
REFUSALS_TTL_S = 35 * 86400  # refusal counts: long enough for a month's usage chart
CACHE_MAX_AGE_S = 60.0  # a bound on staleness should Redis lose the version keys
CACHE_MAX_ENTRIES = 10_000


def _slot(tenant_id: str) -> str:
    return "sg:lim:{t:" + tenant_id + "}"


def version_key(tenant_id: str) -> str:
    """The tenant's limits version: bumped on every change of its or its users' overrides."""
    return _slot(tenant_id) + ":ver"


def refusals_key(tenant_id: str, day: str) -> str:
    """The tenant's requests refused by a limit on one UTC day (``YYYY-MM-DD``), per principal."""
    return _slot(tenant_id) + ":refused:" + day


def text(value: Any) -> str:
    """A Redis reply as ``str``."""
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class Keys:
    """The Redis keys of one user's limits and of their tenant's."""

    tenant_id: str
    user_id: str

    def rpm(self, scope: Scope) -> str:
        return self._base(scope) + ":rpm"

    def leases(self, scope: Scope) -> str:
        return self._base(scope) + ":leases"

    def minute(self, scope: Scope, minute: int) -> str:
        return self._base(scope) + f":m:{minute}"

    def day(self, scope: Scope, day: int) -> str:
        return self._base(scope) + f":d:{day}"

    def reservation(self, stream_id: str) -> str:
        return _slot(self.tenant_id) + ":res:" + stream_id

    def _base(self, scope: Scope) -> str:
        base = _slot(self.tenant_id)
        return base + ":u:" + self.user_id if scope == "user" else base


@dataclass(frozen=True)
class Clock:
    """One instant, in the units the scripts and keys use."""

    now_ms: int

    @classmethod
    def now(cls) -> Clock:
        return cls(int(time.time() * 1000))

    @property
    def minute(self) -> int:
        return self.now_ms // 60_000

    @property
    def day(self) -> int:
        return self.now_ms // 86_400_000

    @property
    def minute_left_ms(self) -> int:
        return 60_000 - self.now_ms % 60_000

    @property
    def day_left_ms(self) -> int:
        return 86_400_000 - self.now_ms % 86_400_000
