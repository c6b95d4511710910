"""Fixtures for identity tests: log in through the API (helpers: ``tests.support.tokens``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.support.config import PASSWORD
from tests.support.tokens import tenant_of


@pytest.fixture()
def login(client: Any) -> Callable[..., Any]:
    """POST /v1/auth/login for ``user`` (``tests.support.config.PASSWORD`` unless given)."""

    def do(user: Any, password: str = PASSWORD, *, addr: str = "127.0.0.1", **extra: Any) -> Any:
        body = {"tenant": tenant_of(user).slug, "email": user.email, "password": password, **extra}
        return client.post("/v1/auth/login", json=body, environ_base={"REMOTE_ADDR": addr})

    return do


@pytest.fixture()
def tokens_for(login: Callable[..., Any]) -> Callable[[Any], dict[str, str]]:
    """A fresh access/refresh pair for ``user``, through the login route."""

    def do(user: Any) -> dict[str, str]:
        response = login(user)
        assert response.status_code == 200, response.get_json()
        return dict(response.get_json())

    return do


@pytest.fixture()
def signed_in(
    make_user: Callable[..., Any], tokens_for: Callable[[Any], dict[str, str]]
) -> tuple[Any, dict[str, str]]:
    """A new member and their access/refresh pair, through the login route."""
    user = make_user()
    return user, tokens_for(user)


@pytest.fixture()
def pair(signed_in: tuple[Any, dict[str, str]]) -> dict[str, str]:
    """A new member's access/refresh pair, through the login route."""
    return signed_in[1]
