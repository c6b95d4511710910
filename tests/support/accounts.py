"""Signed-in members, for test modules that need one per test and nothing else of the user.

The functions take the ``make_user`` and ``auth_headers`` fixtures; a module makes one a fixture
of its own with ``headers = pytest.fixture(member_headers, name="headers")``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def member_headers(
    make_user: Callable[..., Any], auth_headers: Callable[..., dict[str, str]]
) -> dict[str, str]:
    """A new member's bearer headers (a new tenant of their own)."""
    return auth_headers(make_user())


def member_channel(
    make_user: Callable[..., Any], auth_headers: Callable[..., dict[str, str]]
) -> tuple[str, dict[str, str]]:
    """A new member's own channel (``users/<id>``, read before any request detaches the row)
    and their bearer headers."""
    from streaming.generation import user_channel

    user = make_user()
    return user_channel(user.id), auth_headers(user)
