"""The admin console in a real browser, at a desktop's and a phone's size.

Debian's Chromium through Playwright, real gunicorn gevent workers, the fake upstream. An admin
watches the tenant's streams arrive without a reload (pushed on ``tenants/<id>``, never polled),
revokes one with a reason that the member's tabs show, issues an app token and uses it with the
openai SDK, reads the usage charts; every tab fits 390 px without sideways scrolling and logs no
error. Screenshots of every tab go to test-artifacts/browser/ (docs/console.md shows them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import openai
import pytest
from playwright.sync_api import expect

from bench.fake_upstream import token_text
from tests.support.browser import (
    VIEWPORTS,
    Account,
    PageWatch,
    horizontal_overflow,
    log_in,
    open_console,
    send,
    wait_started,
)

pytestmark = [pytest.mark.browser, pytest.mark.live]
TIMEOUT_MS = 15_000
SIZES = pytest.mark.parametrize("viewport", list(VIEWPORTS))


def member_page(browser: Any, live: Any, account: Account, viewport: str) -> tuple[Any, Any]:
    context = browser.new_context(viewport=VIEWPORTS[viewport])
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    log_in(page, live.url, account)
    return context, page


def confirm(page: Any, reason: str) -> None:
    """Answer the console's confirmation dialog with ``reason``."""
    dialog = page.locator("#confirm")
    expect(dialog).to_be_visible()
    dialog.locator("#confirm-reason").fill(reason)
    dialog.locator("#confirm-ok").click()
    expect(dialog).to_be_hidden()


@SIZES
def test_the_live_list_is_pushed_and_a_revoke_with_a_reason_reaches_the_members_tabs(
    live: Any, browser: Any, accounts: Any, screenshot: Any, viewport: str
) -> None:
    member, first = member_page(browser, live, accounts["member"], viewport)
    second = member.new_page()  # same profile: the login cookie is shared
    second.set_default_timeout(TIMEOUT_MS)
    second.goto(live.url + "/")
    wait_started(second)  # not still loading the list when the first tab sends
    console, errors = open_console(browser, live.url, accounts["admin"], viewport)
    polled: list[str] = []
    console.on("request", lambda req: "/v1/admin/streams" in req.url and polled.append(req.url))

    send(first, "A long story [[fake infinite=1 delay_ms=30]]")
    expect(first.locator("#status")).to_have_text("running")
    stream_id = first.locator("#stream-id").inner_text()
    # The second tab hears stream.started on users/<id>, attaches and replays from the start.
    expect(second.locator("#stream-id")).to_have_text(stream_id)
    expect(second.locator("#attach-note")).to_be_visible()
    expect(second.locator("#status")).to_have_text("running")
    expect(second.locator("#transcript .reply .body").last).to_contain_text("Hello, world")

    # The console was open before the stream started: it arrives pushed, with no request.
    row = console.locator(f"#live-rows tr[data-stream-id='{stream_id}']")
    expect(row).to_be_visible()
    expect(row).to_contain_text(accounts["member"].email)
    expect(row).to_contain_text("fake-model")
    assert polled == []
    screenshot(console, "live")

    events: dict[str, list[str]] = {"first": [], "second": []}
    for name, page in (("first", first), ("second", second)):
        page.on(
            "request",
            lambda req, name=name: (
                "/v1/events?channel=streams" in req.url and events[name].append(req.url)
            ),
        )
    row.locator("button.revoke").click()
    confirm(console, "Runaway prompt")

    for page in (first, second):
        expect(page.locator("#status")).to_have_text("revoked")
        expect(page.locator("#conn-note")).to_contain_text("Revoked by an administrator")
        expect(page.locator("#transcript .reply .meta").last).to_contain_text("Runaway prompt")
        expect(page.locator("#stop")).to_be_hidden()
    expect(row).to_have_count(0)
    ended = console.locator(f"#ended-rows tr[data-stream-id='{stream_id}']")
    expect(ended).to_contain_text("revoked")
    expect(ended).to_contain_text("Runaway prompt")
    screenshot(console, "revoked")
    screenshot(first, "member-revoked")

    # The audit log has the revoke and its reason.
    console.click("#tab-audit")
    expect(console.locator("#audit-rows tr", has_text="stream.revoke").first).to_contain_text(
        "Runaway prompt"
    )
    first.wait_for_timeout(1000)  # ten retry intervals: a reconnecting tab would show up here
    assert events == {"first": [], "second": []}
    assert first.evaluate("document.cookie").count("csrf_access_token") == 1  # still logged in
    assert errors.errors == []
    member.close()
    console.context.close()


@SIZES
def test_an_app_token_issued_in_the_console_works_with_the_openai_sdk(
    live: Any, browser: Any, accounts: Any, screenshot: Any, viewport: str
) -> None:
    console, errors = open_console(browser, live.url, accounts["admin"], viewport)
    console.click("#tab-tokens")
    console.fill("#token-name", "reporting-app")
    console.fill("#token-days", "7")
    console.click("#token-issue")
    expect(console.locator("#token-secret-box")).to_be_visible()
    secret = console.locator("#token-secret").input_value()
    row = console.locator("#token-rows tr", has_text="reporting-app")
    expect(row).to_contain_text("chat, read")
    screenshot(console, "token-issued")

    client = openai.OpenAI(base_url=live.url + "/v1", api_key=secret, max_retries=0)
    chunks = client.chat.completions.create(
        model="fake-model",
        messages=[{"role": "user", "content": "hi [[fake tokens=5]]"}],
        stream=True,
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "".join(token_text(i) for i in range(5))

    row.get_by_role("button", name="Revoke").click()
    confirm(console, "Rotated")
    expect(row).to_contain_text("revoked")
    with pytest.raises(openai.AuthenticationError):
        client.models.list()
    assert errors.errors == []
    console.context.close()


def test_the_usage_charts_show_the_tenants_tokens(
    live: Any, browser: Any, accounts: Any, screenshot: Any
) -> None:
    from auth.tokens import issue_user_tokens

    member = accounts["member"]
    with live.app.app_context():
        token = issue_user_tokens(
            user_id=member.user_id, tenant_id=member.tenant_id, role="member"
        )["access_token"]
    with live.client(headers={"Authorization": "Bearer " + token}) as http:
        for _ in range(2):
            answer = http.post(
                "/v1/chat/completions",
                json={"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]},
            )
            assert answer.status_code == 200, answer.text

    console, errors = open_console(browser, live.url, accounts["admin"], "desktop")
    console.click("#tab-usage")
    for chart in ("#chart-users", "#chart-models", "#chart-requests"):
        expect(console.locator(chart)).to_have_attribute("data-total", _positive())
        expect(console.locator(f"{chart} canvas")).to_have_count(1)  # drawn by uPlot
    users = console.locator("#chart-users")
    assert member.email in users.get_attribute("data-series")
    assert "fake-model" in console.locator("#chart-models").get_attribute("data-series")
    requests = console.locator("#chart-requests")
    assert requests.get_attribute("data-series") == '["requests","refusals"]'
    # The numbers behind the chart, as a table: today's two requests.
    requests.locator("summary").click()
    expect(requests.locator("tbody tr").last.locator("td").nth(1)).to_have_text("2")
    screenshot(console, "usage")
    assert errors.errors == []
    console.context.close()


def _positive() -> Any:
    import re

    return re.compile(r"^[1-9][0-9]*$")


@SIZES
def test_every_tab_fits_the_screen_works_from_the_keyboard_and_logs_no_error(
    live: Any,
    browser: Any,
    accounts: Any,
    screenshot: Any,
    viewport: str,
    make_user: Callable[..., Any],
) -> None:
    from auth.models import Tenant
    from core.store import db

    with live.app.app_context():
        tenant = db.session.get(Tenant, accounts["admin"].tenant_id)
        user = make_user(tenant, role="operator")
        operator = Account(tenant.slug, user.email, user.id, "operator", tenant.id)
    console, errors = open_console(browser, live.url, operator, viewport)
    for name in ("live", "users", "tokens", "limits", "usage", "audit", "tenants"):
        console.click(f"#tab-{name}")
        expect(console.locator(f"#panel-{name}[data-loaded]")).to_be_visible()
        assert horizontal_overflow(console) <= 0, name
        screenshot(console, name)

    # The tabs are one keyboard stop: arrows move between them, with a visible focus ring.
    console.focus("#tab-live")
    console.keyboard.press("ArrowRight")
    expect(console.locator("#tab-users")).to_be_focused()
    expect(console.locator("#tab-users")).to_have_attribute("aria-selected", "true")
    expect(console.locator("#panel-users")).to_be_visible()
    outline = console.locator("#tab-users").evaluate("el => getComputedStyle(el).outlineStyle")
    assert outline != "none"
    console.keyboard.press("End")
    expect(console.locator("#tab-tenants")).to_be_focused()
    # Every control has a label a screen reader reads.
    unlabelled = console.evaluate(
        """() => [...document.querySelectorAll('input, select, textarea')]
            .filter(el => !el.closest('[hidden]') && !el.labels.length
                     && !el.getAttribute('aria-label'))
            .map(el => el.id || el.name)"""
    )
    assert unlabelled == []
    assert errors.errors == []
    console.context.close()


def test_a_member_and_a_stranger_are_told_what_the_console_is_in_dark_mode_too(
    live: Any, browser: Any, accounts: Any, screenshot: Any
) -> None:
    context = browser.new_context(viewport=VIEWPORTS["phone"], color_scheme="dark")
    page = context.new_page()
    errors = PageWatch(page, warnings=False)
    page.goto(live.url + "/console")
    # prefers-color-scheme: dark gives the dark theme (light text on a dark background).
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(18, 21, 28)", background
    expect(page.locator("#gate-message")).to_have_text("You are not logged in.")
    expect(page.locator("#gate-login a")).to_be_visible()
    # (The playground's own logged-out visit is the playground's business: a page of its own.)
    log_in(context.new_page(), live.url, accounts["member"])
    page.reload()
    expect(page.locator("#gate-message")).to_contain_text("for tenant admins and operators")
    expect(page.locator("#console")).to_be_hidden()
    screenshot(page, "member")
    assert horizontal_overflow(page) <= 0
    assert errors.errors == []
    context.close()
