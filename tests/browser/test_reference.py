"""The reference and the login page in a real browser: ``/openapi.yaml`` opens as text (it is
not downloaded), and a throttled login says in how many seconds to retry."""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.support.config import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.live]


@pytest.fixture()
def live_overrides() -> dict[str, str]:
    return {"LOGIN_MAX_FAILURES": "2"}


def test_openapi_yaml_opens_in_the_browser(live: Any, browser: Any) -> None:
    context = browser.new_context()
    page = context.new_page()
    # A download would make goto fail ("Download is starting"): the browser shows it instead.
    response = page.goto(live.url + "/openapi.yaml")
    assert response is not None and response.ok
    expect(page.locator("body")).to_contain_text("openapi: 3.1.0")
    expect(page.locator("body")).to_contain_text("/v1/chat/completions:")
    context.close()


def test_a_throttled_login_says_when_to_retry(
    live: Any, browser: Any, accounts: Any, screenshot: Any
) -> None:
    member = accounts["member"]
    context = browser.new_context()
    page = context.new_page()
    page.goto(live.url + "/")
    page.locator("#login-view").wait_for(state="visible")
    page.fill("#login-tenant", member.tenant)
    page.fill("#login-email", member.email)
    error = page.locator("#login-error")
    for _ in range(2):
        page.fill("#login-password", PASSWORD + " wrong")
        with page.expect_response(lambda r: r.url.endswith("/v1/auth/login")) as answer:
            page.click("#login-submit")
        assert answer.value.status == 401
    page.fill("#login-password", PASSWORD)  # even the right one waits now
    with page.expect_response(lambda r: r.url.endswith("/v1/auth/login")) as answer:
        page.click("#login-submit")
    assert answer.value.status == 429
    retry_after = int(answer.value.headers["retry-after"])
    expect(error).to_have_text(re.compile(r"try again in \d+ seconds"))
    shown = int(re.search(r"try again in (\d+) seconds", error.inner_text()).group(1))  # type: ignore[union-attr]
    assert 0 < shown <= retry_after
    screenshot(page, "login-throttled")
    context.close()
