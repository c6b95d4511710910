"""Signed-in members, for test modules that need one per test and nothing else of the user.

The functions take the ``make_user`` and ``auth_headers`` fixtures; a module makes one a fixture
of its own with ``headers = pytest.fixture(member_headers, name="headers")``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# Live servers for tests that log in many times, some at once (the login throttle is tested on
# its own): neither the per-minute ceilings nor the in-flight attempts of one account and address
# (each counts as a failure until it succeeds) stop them. One value, so that such modules run one
# after another share one server.
UNLIMITED_LOGINS = {
    "LOGIN_ACCOUNT_RPM": "1000000",
    "LOGIN_ADDRESS_RPM": "1000000",
    "LOGIN_MAX_FAILURES": "1000",
}


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


def tenant_member(
    make_tenant: Callable[..., Any],
    make_user: Callable[..., Any],
    auth_headers: Callable[..., dict[str, str]],
) -> Callable[..., dict[str, str]]:
    """Makes a new tenant (``make_tenant``'s keywords: ``models=``, ``limits=``) with one member;
    returns the member's bearer headers."""

    def make(**tenant: Any) -> dict[str, str]:
        return auth_headers(make_user(make_tenant(**tenant)))

    return make


def admin_and_member(
    make_tenant: Callable[..., Any],
    make_user: Callable[..., Any],
    auth_headers: Callable[..., dict[str, str]],
) -> tuple[dict[str, str], dict[str, str]]:
    """The bearer headers of an admin and of a member of one new tenant."""
    tenant = make_tenant()
    return auth_headers(make_user(tenant, role="admin")), auth_headers(make_user(tenant))


def add_account(
    slug: str,
    name: str,
    *,
    email: str,
    role: str,
    password_hash: str,
    limits: dict[str, int] | None = None,
) -> tuple[Any, Any]:
    """A new tenant allowed ``fake-model`` and its one user, committed in the current app context
    (for fixtures that run without ``make_tenant``/``make_user``); returns both rows."""
    from auth.models import Tenant, User
    from core.store import db

    tenant = Tenant(slug=slug, name=name, allowed_models=["fake-model"])
    db.session.add(tenant)
    db.session.flush()
    user = User(
        tenant_id=tenant.id, email=email, role=role, password_hash=password_hash, limits=limits
    )
    db.session.add(user)
    db.session.commit()
    return tenant, user
