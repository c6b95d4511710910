"""The chat page in a real browser, on a desktop and on a phone, against the fake upstream.

Debian's Chromium through Playwright, real gunicorn gevent workers, real Redis and SQL. Every test
runs at 1280x800 and at 390x844; screenshots go to test-artifacts/browser/ (see docs/console.md).
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import expect

from bench.fake_upstream import expected_text
from tests.support.browser import (
    DESKTOP,
    PHONE,
    PageWatch,
    horizontal_overflow,
    log_in,
    wait_started,
)
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.browser, pytest.mark.live]
TIMEOUT_MS = 20_000


@pytest.fixture(params=[DESKTOP, PHONE], ids=["desktop", "phone"])
def viewport(request: pytest.FixtureRequest) -> dict[str, int]:
    return dict(request.param)


@pytest.fixture()
def context(browser: Any, live: Any, viewport: dict[str, int]) -> Iterator[Any]:
    """A fresh browser profile at the test's size, allowed to use the clipboard."""
    made = browser.new_context(viewport=viewport)
    made.grant_permissions(["clipboard-read", "clipboard-write"], origin=live.url)
    made.set_default_timeout(TIMEOUT_MS)
    yield made
    made.close()


@pytest.fixture()
def page(context: Any) -> Any:
    """A tab in the test's browser profile."""
    return context.new_page()


@pytest.fixture()
def watch(page: Any) -> PageWatch:
    """What the tab logs and which of its requests fail, from its first request on."""
    return PageWatch(page)


def replies(page: Any) -> Any:
    return page.locator("#transcript .reply")


def send(page: Any, text: str) -> None:
    """Type a message and press Enter, as a person does."""
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")


def copied_reply(page: Any, index: int = -1) -> str:
    """The reply's text as its Copy button puts it on the clipboard."""
    page.evaluate("navigator.clipboard.writeText('')")
    replies(page).nth(index).get_by_role("button", name="Copy reply").click()
    return str(wait_until(lambda: page.evaluate("navigator.clipboard.readText()"), timeout=10))


def said(text: str) -> str:
    """A fake-upstream directive making the model answer exactly ``text``."""
    return f"[[fake say={urllib.parse.quote(text, safe='')} delay_ms=5]]"


def test_a_reply_streams_in_follows_the_text_and_copies_byte_for_byte(
    live: Any, page: Any, watch: PageWatch, accounts: Any, screenshot: Any, viewport: dict[str, int]
) -> None:
    log_in(page, live.url, accounts["member"])
    expect(page.locator("#who-email")).to_have_text(accounts["member"].email)
    # The header wraps on a phone: the whole email and Log out stay on screen.
    for control in ("#who-email", "#logout"):
        box = page.locator(control).bounding_box()
        assert box and 0 <= box["x"] and box["x"] + box["width"] <= viewport["width"], control
    screenshot(page, "empty")

    send(page, "Say hello [[fake tokens=24 delay_ms=15]]")
    expect(page.locator("#stop")).to_be_visible()  # Send became Stop while the reply runs
    expect(page.locator("#send")).to_be_hidden()
    expect(page.locator("#status")).to_have_text("completed")
    expect(page.locator("#send")).to_be_visible()
    expect(page.locator("#tokens")).to_have_text("24")
    expect(page.locator("#ttft")).to_have_text(re.compile(r"^\d+ ms$"))
    expect(page.locator("#tps")).not_to_have_text("–")
    # Byte for byte what the model produced: spaces, CR, CRLF, U+2028 and emoji included.
    assert copied_reply(page) == expected_text(24)
    # The first message names the conversation, listed in the sidebar.
    expect(page.locator("#conv-title")).to_have_text("Say hello [[fake tokens=24 delay_ms=15]]")
    expect(page.locator("#conversations li")).to_have_count(1)
    # Usage and what is left of the budget, from /v1/usage.
    expect(page.locator("#usage-today")).not_to_have_text(re.compile(r"^(–|0)$"))
    assert horizontal_overflow(page) == 0
    screenshot(page, "completed")
    assert watch.errors == [] and watch.refused == []


def test_markdown_is_rendered_and_nothing_the_model_writes_runs(
    live: Any, page: Any, watch: PageWatch, accounts: Any, screenshot: Any
) -> None:
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    log_in(page, live.url, accounts["member"])
    reply = (
        "**Bold** and a [good link](https://example.org/docs).\n\n"
        "<img src=x onerror=\"window.pwned='img';alert(1)\">\n\n"
        "[click me](javascript:window.pwned='link') and "
        "[data](data:text/html,<script>alert(2)</script>)\n\n"
        "<script>window.pwned='script'</script>\n\n"
        '<a href="javascript:alert(3)" onclick="window.pwned=\'a\'">raw anchor</a>\n\n'
        "![tracker](http://127.0.0.1:9/pixel.png)\n\n"
        '```python\ndef hello():\n    return "<b>hi</b>"\n```\n'
    )
    send(page, "Show me everything " + said(reply))
    expect(page.locator("#status")).to_have_text("completed")
    body = replies(page).last.locator(".body")

    expect(body.locator("strong")).to_have_text("Bold")
    good = body.get_by_role("link", name="good link")
    expect(good).to_have_attribute("href", "https://example.org/docs")
    expect(good).to_have_attribute("rel", re.compile("noopener"))
    # The HTML and the unsafe links are shown as the text the model wrote, never as elements.
    expect(body).to_contain_text("<img src=x onerror=")
    expect(body).to_contain_text("[click me](javascript:window.pwned='link')")
    expect(body).to_contain_text("<script>window.pwned='script'</script>")
    expect(body).to_contain_text("![tracker](http://127.0.0.1:9/pixel.png)")
    for selector in ("img", "script", "a[href^='javascript']", "a[href^='data']", "[onclick]"):
        assert body.locator(selector).count() == 0, selector
    assert body.locator("a").count() == 1
    # Code: a language label, highlight.js colours, its own Copy button; the text kept as is.
    block = body.locator(".code")
    expect(block.locator(".code-head")).to_contain_text("python")
    expect(block.locator("code .hljs-keyword").first).to_have_text("def")
    expect(block.locator("code")).to_contain_text('return "<b>hi</b>"')
    assert block.locator("code b").count() == 0
    block.get_by_role("button", name="Copy code").click()
    copied = wait_until(lambda: page.evaluate("navigator.clipboard.readText()"))
    assert copied == 'def hello():\n    return "<b>hi</b>"'

    page.mouse.move(5, 5)  # hover and focus do not wake anything up either
    body.get_by_text("raw anchor", exact=False).hover()
    assert page.evaluate("window.pwned") is None
    assert dialogs == []
    screenshot(page, "markdown")
    assert watch.errors == [] and watch.refused == []


def test_stop_ends_the_reply_and_send_comes_back(
    live: Any, page: Any, watch: PageWatch, accounts: Any, screenshot: Any
) -> None:
    log_in(page, live.url, accounts["member"])
    send(page, "Go on forever [[fake infinite=1 delay_ms=40]]")
    expect(page.locator("#status")).to_have_text("running")
    expect(page.locator("#tokens")).not_to_have_text("0")
    page.click("#stop")
    expect(page.locator("#status")).to_have_text("cancelled")
    expect(replies(page).last.locator(".meta")).to_contain_text("Stopped")
    expect(page.locator("#stop")).to_be_hidden()
    expect(page.locator("#send")).to_be_enabled()
    stream_id = page.locator("#stream-id").inner_text()
    assert page.request.get(live.url + "/v1/streams/" + stream_id).json()["status"] == "cancelled"
    screenshot(page, "stopped")
    assert watch.errors == [] and watch.refused == []


def test_truncated_at_max_tokens_is_said(live: Any, page: Any, accounts: Any) -> None:
    log_in(page, live.url, accounts["member"])
    page.locator("#settings summary").click()
    page.fill("#max-tokens", "5")
    send(page, "Tell me a long story [[fake tokens=50]]")
    expect(page.locator("#status")).to_have_text("completed")
    expect(replies(page).last.locator(".meta")).to_contain_text("Truncated at max tokens")
    expect(page.locator("#tokens")).to_have_text("5")


def test_conversations_keep_their_history_settings_and_names(
    live: Any, page: Any, watch: PageWatch, accounts: Any, fake_upstream: Any, screenshot: Any
) -> None:
    log_in(page, live.url, accounts["member"])
    page.locator("#settings summary").click()
    page.fill("#system-prompt", "You answer briefly.")
    page.fill("#temperature", "0.4")
    page.fill("#top-p", "0.8")
    page.fill("#max-tokens", "64")
    sent = [f"Question {n} [[fake tokens={n + 2}]]" for n in range(3)]
    for n, text in enumerate(sent):
        send(page, text)
        expect(replies(page)).to_have_count(n + 1)
        expect(page.locator("#status")).to_have_text("completed")
    body = fake_upstream.stats.last_body
    assert body["messages"][0] == {"role": "system", "content": "You answer briefly."}
    assert [m["content"] for m in body["messages"][1:]] == [
        sent[0],
        expected_text(2),
        sent[1],
        expected_text(3),
        sent[2],
    ]
    assert (body["temperature"], body["top_p"], body["max_tokens"]) == (0.4, 0.8, 64)

    page.reload()  # the conversation is on the server: all of it comes back
    expect(replies(page)).to_have_count(3)
    expect(page.locator("#transcript .msg.user")).to_have_text(sent)
    expect(page.locator("#system-prompt")).to_have_value("You answer briefly.")
    expect(page.locator("#temperature")).to_have_value("0.4")
    expect(page.locator("#attach-note")).to_be_hidden()
    assert copied_reply(page, 1) == expected_text(3)

    page.once("dialog", lambda d: d.accept("Three questions"))
    page.click("#rename")
    expect(page.locator("#conv-title")).to_have_text("Three questions")
    sidebar = page.locator("#conversations")
    if not sidebar.is_visible():
        page.click("#toggle-sidebar")  # a phone shows the list on demand
    expect(sidebar.locator("li")).to_have_text(["Three questions"])
    page.click("#new-conversation")
    expect(page.locator("#conv-title")).to_have_text("New conversation")
    send(page, "Another topic [[fake tokens=2]]")
    expect(page.locator("#status")).to_have_text("completed")
    assert [m["content"] for m in fake_upstream.stats.last_body["messages"]] == [
        "You answer briefly.",
        "Another topic [[fake tokens=2]]",
    ]
    if not sidebar.is_visible():
        page.click("#toggle-sidebar")
    expect(sidebar.locator("li")).to_have_count(2)
    screenshot(page, "sidebar")
    sidebar.get_by_role("button", name="Three questions").click()
    expect(replies(page)).to_have_count(3)
    page.once("dialog", lambda d: d.accept())
    page.click("#delete")
    expect(page.locator("#conv-title")).to_have_text("Another topic [[fake tokens=2]]")
    if not sidebar.is_visible():
        page.click("#toggle-sidebar")
    expect(sidebar.locator("li")).to_have_count(1)
    assert horizontal_overflow(page) == 0
    assert watch.errors == [] and watch.refused == []


def test_attach_from_another_device_shows_the_real_prompt_and_a_reload_resumes_in_place(
    live: Any, browser: Any, page: Any, accounts: Any, viewport: dict[str, int], screenshot: Any
) -> None:
    log_in(page, live.url, accounts["member"])
    other = browser.new_context(viewport=viewport)  # another device: its own login
    second = other.new_page()
    second.set_default_timeout(TIMEOUT_MS)
    second_watch = PageWatch(second)
    log_in(second, live.url, accounts["member"])
    # Fully started before the first device sends (else it may load the new conversation's list
    # and open it itself, which is no attach).
    wait_started(second)

    page.locator("#settings summary").click()
    page.fill("#system-prompt", "Speak like a pirate.")
    page.fill("#temperature", "1.3")
    page.fill("#max-tokens", "3000")
    send(page, "A long story [[fake infinite=1 delay_ms=30]]")
    expect(page.locator("#status")).to_have_text("running")
    stream_id = page.locator("#stream-id").inner_text()

    expect(second.locator("#stream-id")).to_have_text(stream_id)
    expect(second.locator("#attach-note")).to_be_visible()
    expect(second.locator("#transcript .msg.user")).to_have_text(
        "A long story [[fake infinite=1 delay_ms=30]]"
    )
    expect(second.locator("#transcript .msg.system")).to_contain_text("Speak like a pirate.")
    expect(second.locator("#temperature")).to_have_value("1.3")
    expect(second.locator("#max-tokens")).to_have_value("3000")
    expect(second.locator("#ttft")).to_have_text("– (attached)")
    expect(replies(second).last.locator(".body")).to_contain_text("Hello, world")
    screenshot(second, "attached")

    page.reload()  # the same device: its reply is followed in place, not "another device"
    expect(page.locator("#stream-id")).to_have_text(stream_id)
    expect(page.locator("#status")).to_have_text("running")
    expect(page.locator("#ttft")).to_have_text("– (resumed)")
    expect(page.locator("#attach-note")).to_be_hidden()
    expect(replies(page).last.locator(".body")).to_contain_text("Hello, world")
    page.click("#stop")
    for tab in (page, second):
        expect(tab.locator("#status")).to_have_text("cancelled")
        expect(replies(tab).last.locator(".meta")).to_contain_text("Stopped")
    assert second_watch.errors == [] and second_watch.refused == []
    other.close()


def test_auto_scroll_follows_until_the_reader_scrolls_up(
    live: Any, page: Any, accounts: Any
) -> None:
    log_in(page, live.url, accounts["member"])
    # A reply that outlasts the test however slow the machine (the test stops it): the highest
    # max_tokens at 20 ms a token is 80 s; with the default 512 at 10 ms it ended after 5 s and a
    # loaded machine's test was still scrolling.
    page.locator("#settings summary").click()
    page.fill("#max-tokens", "4096")
    page.locator("#settings summary").click()  # closed again: the transcript keeps its height
    send(page, "Many lines [[fake infinite=1 delay_ms=20 pad=40]]")
    transcript = page.locator("#transcript")

    def gap() -> int:
        return int(transcript.evaluate("t => t.scrollHeight - t.scrollTop - t.clientHeight"))

    overflowing = "t => t.scrollHeight > t.clientHeight * 2"
    wait_until(lambda: transcript.evaluate(overflowing), timeout=20)
    assert gap() <= 48  # kept at the newest text
    transcript.evaluate("t => t.scrollTo(0, 0)")  # the reader scrolls up to read
    expect(page.locator("#jump")).to_be_visible()
    height = transcript.evaluate("t => t.scrollHeight")
    wait_until(lambda: transcript.evaluate("t => t.scrollHeight") > height + 200)
    assert transcript.evaluate("t => t.scrollTop") == 0  # left where the reader is
    page.click("#jump")
    wait_until(lambda: gap() <= 48)
    page.click("#stop")
    expect(page.locator("#status")).to_have_text("cancelled")


def test_keyboard_labels_and_focus(live: Any, page: Any, accounts: Any) -> None:
    log_in(page, live.url, accounts["member"])
    page.fill("#prompt", "first line")
    page.press("#prompt", "Shift+Enter")
    page.keyboard.type("second line [[fake tokens=2]]")
    expect(page.locator("#prompt")).to_have_value("first line\nsecond line [[fake tokens=2]]")
    expect(replies(page)).to_have_count(0)
    page.press("#prompt", "Control+Enter")
    expect(page.locator("#status")).to_have_text("completed")
    expect(page.locator("#transcript .msg.user")).to_have_text(
        "first line\nsecond line [[fake tokens=2]]"
    )
    # Every control has a name a screen reader can read.
    unnamed = page.evaluate(
        """() => [...document.querySelectorAll(`#app-view input, #app-view select,
              #app-view textarea, #app-view button, header button`)]
            .filter(el => el.offsetParent !== null || el.closest('details'))
            .filter(el => !((el.labels && el.labels.length) || el.getAttribute('aria-label')
                            || el.textContent.trim()))
            .map(el => el.outerHTML)"""
    )
    assert unnamed == []
    # The keyboard reaches the composer's button, and focus is visible there.
    page.focus("#prompt")
    page.keyboard.press("Tab")
    focused = page.evaluate("document.activeElement.id")
    assert focused == "send"
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline not in ("none", "")


def test_a_logged_out_visit_logs_nothing_and_the_favicon_is_served(
    live: Any, page: Any, watch: PageWatch, viewport: dict[str, int], screenshot: Any
) -> None:
    page.goto(live.url + "/")
    expect(page.locator("#login-view")).to_be_visible()
    page.wait_for_load_state("networkidle")
    assert watch.errors == [] and watch.refused == []
    assert horizontal_overflow(page) == 0
    icon = page.request.get(live.url + "/favicon.ico")
    assert icon.status == 200 and icon.headers["content-type"].startswith("image/")
    screenshot(page, "login")


def test_dark_mode_follows_the_system_setting(
    live: Any, browser: Any, accounts: Any, viewport: dict[str, int], screenshot: Any
) -> None:
    context = browser.new_context(viewport=viewport, color_scheme="dark")
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    log_in(page, live.url, accounts["member"])
    send(page, "Some code " + said("```js\nconst x = 1;\n```\n"))
    expect(page.locator("#status")).to_have_text("completed")
    luminance = page.evaluate(
        """() => {
            const [r, g, b] = getComputedStyle(document.body).backgroundColor
                .match(/\\d+/g).map(Number);
            return (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255;
        }"""
    )
    assert luminance < 0.2
    assert horizontal_overflow(page) == 0
    screenshot(page, "dark")
    context.close()
