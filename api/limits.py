"""Rate limits and token quotas in Redis (issue 6 fills this in).

Interface used by the rest of the app:
- ``admit(ident, estimate_tokens) -> Admission``: checks every limit of user and tenant in one
  atomic step, takes a concurrency lease and reserves tokens; raises ApiError(429) naming the limit.
- ``Admission.info``: a JSON-able dict stored with the run so any worker can settle it.
- ``Admission.headers``: ``RateLimit-*`` headers for the response.
- ``RedisAdmissionControl``: the runner's ``renew`` / ``release`` (streaming.runner.AdmissionControl).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from auth.access import Identity


@dataclass
class Admission:
    info: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)


def admit(ident: Identity, estimate_tokens: int, stream_id: str) -> Admission:
    """Admit one generation (placeholder: admits everything)."""
    return Admission()


class RedisAdmissionControl:
    def renew(self, admission: dict[str, Any]) -> None:
        return None

    def release(self, admission: dict[str, Any], prompt_tokens: int, completion_tokens: int) -> None:
        return None
