"""Fixtures shared by the API tests on the live server."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.support.live import LiveServer


@pytest.fixture()
def user(live: LiveServer, make_user: Callable[..., Any]) -> Any:
    return make_user()


@pytest.fixture()
def headers(user: Any, auth_headers: Callable[..., dict[str, str]]) -> dict[str, str]:
    return auth_headers(user)
