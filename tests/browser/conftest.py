"""Playwright against Debian's Chromium (never a downloaded browser), on the live server."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.conftest import PASSWORD, ROOT

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts" / "browser"
# Waits end as soon as the page shows the state; the bound is for a loaded CI machine.
expect.set_options(timeout=20_000)
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (make test installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


@dataclass
class Account:
    tenant: str
    email: str
    user_id: str
    role: str
    tenant_id: str


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


def log_in(page: Any, base_url: str, account: Account) -> None:
    """Log in through the playground's form, as a person would."""
    page.goto(base_url + "/")
    page.locator("#login-view").wait_for(state="visible")
    page.fill("#login-tenant", account.tenant)
    page.fill("#login-email", account.email)
    page.fill("#login-password", PASSWORD)
    page.click("#login-submit")
    page.locator("#app-view").wait_for(state="visible")
    page.locator("#model option[value='fake-model']").wait_for(state="attached")
