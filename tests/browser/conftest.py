"""Playwright against Debian's Chromium (never a downloaded browser), on the live server."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.support.browser import ARTIFACTS, Account
from tests.support.pages import chromium_browser

# Waits end as soon as the page shows the state; the bound is for a loaded CI machine.
expect.set_options(timeout=20_000)


browser = pytest.fixture(chromium_browser, scope="module", name="browser")


@pytest.fixture()
def live_overrides() -> dict[str, str]:
    """The browser tests' server (a module may replace it): a quick EventSource retry hint, so a
    tab that would reconnect does so at once and "does not reconnect" checks catch it."""
    return {"SSE_RETRY_MS": "100"}


@pytest.fixture()
def accounts(
    live: Any, make_tenant: Callable[..., Any], make_user: Callable[..., Any]
) -> dict[str, Account]:
    """A tenant with a member and an admin, created in the live server's database."""
    with live.app.app_context():
        tenant = make_tenant()
        made = {role: make_user(tenant, role=role) for role in ("member", "admin")}
        return {
            role: Account(tenant.slug, user.email, user.id, role, tenant.id)
            for role, user in made.items()
        }


@pytest.fixture()
def screenshot(request: pytest.FixtureRequest) -> Callable[[Any, str], Path]:
    """Save a page's screenshot under test-artifacts/browser/<test>-<name>.png."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    test = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)

    def take(page: Any, name: str) -> Path:
        path = ARTIFACTS / f"{test}-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take
