"""The playground outlives its access token: short-lived cookies are refreshed, and a stream that
spans the expiry is resumed from its last event with nothing lost or repeated."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import expect

from bench.fake_upstream import token_text
from tests.support.browser import log_in
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.browser, pytest.mark.live]
TIMEOUT_MS = 20_000
TOKENS = 120


@pytest.fixture()
def live_overrides() -> dict[str, str]:
    # Access tokens live 3 s: the stream below (120 tokens, 40 ms apart) outlives several.
    return {"JWT_ACCESS_TTL_S": "3", "SSE_RETRY_MS": "100"}


def test_a_stream_spanning_token_expiry_completes_without_gap_or_duplicate(
    live: Any, browser: Any, accounts: Any, screenshot: Any
) -> None:
    context = browser.new_context()
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live.url)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    refreshes: list[int] = []
    page.on("response", lambda r: "/v1/auth/refresh" in r.url and refreshes.append(r.status))
    log_in(page, live.url, accounts["member"])

    page.fill("#prompt", f"Long one [[fake tokens={TOKENS} delay_ms=40]]")
    page.click("#send")
    expect(page.locator("#status")).to_have_text("completed")
    reply = page.locator("#transcript .reply").last
    reply.get_by_role("button", name="Copy reply").click()
    text = wait_until(lambda: page.evaluate("navigator.clipboard.readText()"))
    assert text == "".join(token_text(i) for i in range(TOKENS))
    expect(page.locator("#tokens")).to_have_text(str(TOKENS))
    assert 200 in refreshes  # the hub closed the connection at exp; the page refreshed and resumed

    # The access cookie has expired again by now: the next request refreshes it first.
    page.fill("#prompt", "Short [[fake tokens=3]]")
    page.click("#send")
    expect(page.locator("#status")).to_have_text("completed")
    expect(page.locator("#who")).to_be_visible()  # still logged in
    screenshot(page, "after-expiry")
    context.close()
