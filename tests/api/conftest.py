"""Fixtures shared by the API tests on the live server."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.support.live import LiveServer
from tests.support.tokens import user_headers


@pytest.fixture()
def user(live: LiveServer, make_user: Callable[..., Any]) -> Any:
    """A member on the live server (a module testing in-process overrides it)."""
    return make_user()


@pytest.fixture()
def headers(user: Any) -> dict[str, str]:
    return user_headers(user)
