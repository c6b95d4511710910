"""Fixtures for channel-mode tests (the helpers are in ``tests.support.hub``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest


@pytest.fixture()
def live_user(
    live: Any, make_user: Callable[..., Any], auth_headers: Callable[..., dict[str, str]]
) -> Callable[..., Any]:
    """Create a user in the live server's database; returns ``(user, headers)``."""

    def make(tenant: Any = None, role: str = "member") -> tuple[Any, dict[str, str]]:
        with live.app.app_context():
            user = make_user(tenant, role=role)
            return user, auth_headers(user)

    return make
