"""The playground in a real browser: log in, stream, stop, a revoked user signed out.

A second tab attaching and an admin's revoke from the console: tests/browser/test_console.py.

Every test drives Debian's Chromium through Playwright against real gunicorn gevent workers and
the fake upstream; screenshots go to test-artifacts/browser/.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.sync_api import expect

from bench.fake_upstream import token_text
from tests.support.browser import log_in

pytestmark = [pytest.mark.browser, pytest.mark.live]
TIMEOUT_MS = 15_000


@pytest.fixture()
def live_overrides() -> dict[str, str]:
    # A quick EventSource retry hint: a tab that would reconnect does so at once, so the
    # "does not reconnect" checks below have something to catch.
    return {"SSE_RETRY_MS": "100"}


def expected_text(tokens: int) -> str:
    return "".join(token_text(i) for i in range(tokens))


def send(page: Any, prompt: str) -> None:
    page.fill("#prompt", prompt)
    page.click("#send")


def status(page: Any) -> Any:
    return page.locator("#status")


def test_log_in_stream_a_reply_and_see_it_complete(
    live: Any, browser: Any, accounts: Any, screenshot: Any
) -> None:
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(live.url + "/")
    page.locator("#login-view").wait_for(state="visible")
    screenshot(page, "login")
    log_in(page, live.url, accounts["member"])
    expect(page.locator("#who-email")).to_have_text(accounts["member"].email)
    expect(page.locator("#admin-link")).to_be_hidden()  # members get no admin console link

    send(page, "Say hello [[fake tokens=24 delay_ms=15]]")
    expect(status(page)).to_have_text("completed", timeout=TIMEOUT_MS)
    # Byte for byte what the model produced: spaces, line breaks, U+2028 and emoji included.
    assert page.locator("#output").evaluate("el => el.textContent") == expected_text(24)
    expect(page.locator("#tokens")).to_have_text("24")
    expect(page.locator("#ttft")).to_have_text(re.compile(r"^\d+ ms$"))
    expect(page.locator("#tps")).not_to_have_text("–")
    screenshot(page, "completed")
    context.close()


def test_stop_a_generation(live: Any, browser: Any, accounts: Any, screenshot: Any) -> None:
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    log_in(page, live.url, accounts["member"])
    send(page, "Go on forever [[fake infinite=1 delay_ms=40]]")
    expect(status(page)).to_have_text("running")
    expect(page.locator("#tokens")).not_to_have_text("0")
    expect(page.locator("#stop")).to_be_enabled()
    page.click("#stop")
    expect(status(page)).to_have_text("cancelled")
    expect(page.locator("#stop")).to_be_disabled()
    stream_id = page.locator("#stream-id").inner_text()
    record = page.request.get(live.url + "/v1/streams/" + stream_id).json()
    assert record["status"] == "cancelled"
    screenshot(page, "stopped")
    context.close()


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
    from auth.tokens import issue_user_tokens

    context = browser.new_context()
    page = context.new_page()
    log_in(page, live.url, accounts["member"])
    send(page, "Forever [[fake infinite=1 delay_ms=30]]")
    expect(page.locator("#tokens")).not_to_have_text("0")

    admin = accounts["admin"]
    with live.app.app_context():
        token = issue_user_tokens(
            user_id=admin.user_id,
            tenant_id=admin.tenant_id,
            role="admin",
        )["access_token"]
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
