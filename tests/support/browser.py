"""Debian's Chromium (never a downloaded browser) and the playground as a person uses it."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from typing import Any

from tests.support.config import PASSWORD, ROOT

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts" / "browser"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@dataclass
class Account:
    tenant: str
    email: str
    user_id: str
    role: str
    tenant_id: str


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
