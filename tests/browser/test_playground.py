"""The chat page in a real browser: a second tab, an admin's revoke, a revoked user, /docs.

Streaming, stop, Markdown, conversations and attach are in test_chat.py.

Every test drives Debian's Chromium through Playwright against real gunicorn gevent workers and
the fake upstream; screenshots go to test-artifacts/browser/.
"""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import expect

from tests.support.browser import log_in

pytestmark = [pytest.mark.browser, pytest.mark.live]
TIMEOUT_MS = 15_000


@pytest.fixture()
def live_overrides() -> dict[str, str]:
    # A quick EventSource retry hint: a tab that would reconnect does so at once, so the
    # "does not reconnect" checks below have something to catch.
    return {"SSE_RETRY_MS": "100"}


def send(page: Any, prompt: str) -> None:
    page.fill("#prompt", prompt)
    page.click("#send")


def status(page: Any) -> Any:
    return page.locator("#status")


def admin_token(live: Any, accounts: Any) -> str:
    from auth.tokens import issue_user_tokens

    admin = accounts["admin"]
    with live.app.app_context():
        tokens = issue_user_tokens(user_id=admin.user_id, tenant_id=admin.tenant_id, role="admin")
    return str(tokens["access_token"])


def test_second_tab_picks_up_the_stream_and_an_admin_revoke_ends_it_everywhere(
    live: Any, browser: Any, accounts: Any, screenshot: Any
) -> None:
    member = browser.new_context()
    first = member.new_page()
    first.set_default_timeout(TIMEOUT_MS)
    log_in(first, live.url, accounts["member"])
    second = member.new_page()  # same browser profile: the login cookie is shared
    second.set_default_timeout(TIMEOUT_MS)
    second.goto(live.url + "/")
    second.locator("#app-view").wait_for(state="visible")

    send(first, "A long story [[fake infinite=1 delay_ms=30]]")
    expect(status(first)).to_have_text("running")
    stream_id = first.locator("#stream-id").inner_text()

    # The second tab hears stream.started on users/<id>, attaches and replays from the start.
    expect(second.locator("#stream-id")).to_have_text(stream_id)
    expect(second.locator("#attach-note")).to_be_visible()
    expect(status(second)).to_have_text("running")
    reply = second.locator("#transcript .reply .body").last
    expect(reply).to_contain_text("Hello, world")

    events: dict[str, list[str]] = {"first": [], "second": []}
    for name, page in (("first", first), ("second", second)):
        page.on(
            "request",
            lambda req, name=name: (
                "/v1/events?channel=streams" in req.url and events[name].append(req.url)
            ),
        )
    # An admin revokes it (the console does this through the same public API).
    with live.client() as http:
        answer = http.post(
            f"/v1/admin/streams/{stream_id}/revoke",
            json={"reason": "too long"},
            headers={"Authorization": "Bearer " + admin_token(live, accounts)},
        )
    assert answer.status_code in (200, 202), answer.text

    for page in (first, second):
        expect(status(page)).to_have_text("revoked")
        expect(page.locator("#conn-note")).to_contain_text("Revoked by an administrator")
        expect(page.locator("#transcript .reply .meta").last).to_contain_text("too long")
        expect(page.locator("#stop")).to_be_hidden()
    screenshot(first, "revoked-first-tab")
    screenshot(second, "revoked-second-tab")

    # Neither tab reconnects: with a 100 ms retry hint, a reconnecting EventSource would have
    # tried ten times in this second.
    first.wait_for_timeout(1000)
    assert events == {"first": [], "second": []}
    assert first.evaluate("document.cookie").count("csrf_access_token") == 1  # still logged in
    member.close()


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
