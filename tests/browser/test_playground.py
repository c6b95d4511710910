"""The chat page in a real browser: a revoked user, /docs.

Streaming, stop, Markdown, conversations and attach are in test_chat_page.py; a second tab attaching
and an admin's revoke from the console reaching both tabs, in test_console.py.

Every test drives Debian's Chromium through Playwright against real gunicorn gevent workers and
the fake upstream; screenshots go to test-artifacts/browser/.
"""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import expect

from tests.support.browser import log_in, send

pytestmark = [pytest.mark.browser, pytest.mark.live]
TIMEOUT_MS = 15_000


def status(page: Any) -> Any:
    return page.locator("#status")


def admin_token(live: Any, accounts: Any) -> str:
    from auth.tokens import issue_user_tokens

    admin = accounts["admin"]
    with live.app.app_context():
        tokens = issue_user_tokens(user_id=admin.user_id, tenant_id=admin.tenant_id, role="admin")
    return str(tokens["access_token"])


def test_api_reference_renders_from_local_files_only(
    live: Any, browser: Any, screenshot: Any
) -> None:
    context = browser.new_context()
    page = context.new_page()
    requested: list[str] = []
    page.on("request", lambda req: requested.append(req.url))
    page.goto(live.url + "/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("Streamgate")
    expect(page.locator(".opblock-summary-path", has_text="/v1/streams").first).to_be_visible()
    expect(page.locator(".opblock-summary-path", has_text="/v1/events").first).to_be_visible()
    screenshot(page, "docs")
    offsite = [url for url in requested if not url.startswith((live.url, "data:"))]
    assert offsite == [], f"the reference page reached off the machine: {offsite}"
    context.close()


def test_a_revoked_user_is_signed_out_and_nothing_reconnects(
    live: Any, browser: Any, accounts: Any, screenshot: Any
) -> None:
    context = browser.new_context()
    page = context.new_page()
    log_in(page, live.url, accounts["member"])
    send(page, "Forever [[fake infinite=1 delay_ms=30]]")
    expect(page.locator("#tokens")).not_to_have_text("0")

    token = admin_token(live, accounts)
    events: list[str] = []
    page.on("request", lambda req: "/v1/events" in req.url and events.append(req.url))
    with live.client() as http:
        answer = http.post(
            f"/v1/admin/users/{accounts['member'].user_id}/revoke",
            json={"reason": "left the company"},
            headers={"Authorization": "Bearer " + token},
        )
    assert answer.status_code == 202, answer.text

    expect(page.locator("#login-view")).to_be_visible()
    expect(page.locator("#login-error")).to_contain_text("session ended")
    screenshot(page, "signed-out")
    seen = len(events)  # at most the one reconnect that was refused with 401
    page.wait_for_timeout(1000)  # ten retry intervals: a reconnecting tab would show up here
    assert len(events) == seen <= 2, events
    context.close()
