"""The names and numbers every limits module shares: limits, scopes, Redis keys, one clock.

Keys carry the hash tag ``{t:<tenant id>}``, so every script touches one Redis Cluster slot. An
end user's keys (the OpenAI ``user`` field of an app token's request) sit under their principal's:
``sg:lim:{t:<tenant>}:u:app:<jti>:eu:<end user>:...``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

Scope = Literal["user", "tenant", "end_user"]

LIMITS = ("rpm", "concurrent", "tpm", "tpd")
SCOPES: tuple[Scope, ...] = ("user", "tenant")
MAX_LIMIT = 10**15
# The order of the eight limits in every script result.
ORDER: tuple[tuple[Scope, str], ...] = tuple((scope, key) for key in LIMITS for scope in SCOPES)
# With an end user: their four limits follow the eight (a limit not set for them is -1 there:
# counted, not checked).
ORDER_EU: tuple[tuple[Scope, str], ...] = ORDER + tuple(("end_user", key) for key in LIMITS)
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
    """The Redis keys of one principal's limits, of their tenant's and, when the request names
    one the principal limits, of its end user's."""

    tenant_id: str
    user_id: str
    end_user: str | None = None

    @property
    def scopes(self) -> tuple[Scope, ...]:
        """The scopes a generation of these keys holds leases and token windows in."""
        return (*SCOPES, "end_user") if self.end_user is not None else SCOPES

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
        if scope == "tenant":
            return base
        if scope == "end_user":
            if self.end_user is None:
                raise ValueError("no end user")
            return base + ":u:" + self.user_id + ":eu:" + self.end_user
        return base + ":u:" + self.user_id


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
