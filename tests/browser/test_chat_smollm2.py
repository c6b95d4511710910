"""The chat page with the embedded model: a real three-turn conversation, on a desktop and a phone.

SmolLM2-135M-Instruct served by llama-cpp-python (``tests.support.smollm2``) behind real gunicorn;
Debian's Chromium through Playwright. The replies are real model text, so the test checks what
carries over (history, context, the model server's own refusal), not what the model says.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.support.browser import (
    DESKTOP,
    PHONE,
    Account,
    PageWatch,
    horizontal_overflow,
    log_in,
)
from tests.support.smollm2 import MODEL, ModelServer

# Three real generations a test on 2 shared cores: more than the suite's default 120 s bound.
pytestmark = [pytest.mark.browser, pytest.mark.live, pytest.mark.e2e, pytest.mark.timeout(360)]
TIMEOUT_MS = 90_000  # a small CPU model on a loaded machine; every wait ends when the page is ready

QUESTIONS = [
    "My name is Ada. Say hello to me.",
    "Name one colour of the sky.",
    "What is my name?",
]
# About 10,000 characters: more tokens than SmolLM2's 2,048-token context.
LONG_PROMPT = "Summarise this report. " + " ".join(
    f"Section {i}: the quarterly figures rose, fell and rose again." for i in range(170)
)


@pytest.fixture()
def live_overrides(smollm2: ModelServer) -> dict[str, str]:
    """The live Streamgate server talks to SmolLM2 instead of the fake upstream."""
    return {"LLM_BASE_URL": smollm2.base_url, "LLM_MODELS": MODEL}


@pytest.fixture()
def member(live: Any, make_tenant: Callable[..., Any], make_user: Callable[..., Any]) -> Account:
    """A member of a tenant allowed the embedded model."""
    with live.app.app_context():
        tenant = make_tenant(models=[MODEL])
        user = make_user(tenant)
        return Account(tenant.slug, user.email, user.id, "member", tenant.id)


@pytest.fixture(params=[DESKTOP, PHONE], ids=["desktop", "phone"])
def page(request: pytest.FixtureRequest, browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport=request.param)
    made = context.new_page()
    made.set_default_timeout(TIMEOUT_MS)
    yield made
    context.close()


def replies(page: Any) -> Any:
    return page.locator("#transcript .reply")


def test_a_three_turn_conversation_keeps_its_context_and_survives_a_reload(
    live: Any, page: Any, member: Account, screenshot: Any
) -> None:
    watch = PageWatch(page)
    log_in(page, live.url, member, model=MODEL)
    page.locator("#settings summary").click()
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "24")
    page.fill("#system-prompt", "You are a friendly assistant. Answer in one short sentence.")
    for n, question in enumerate(QUESTIONS):
        page.fill("#prompt", question)
        page.press("#prompt", "Enter")
        expect(replies(page)).to_have_count(n + 1)
        expect(page.locator("#status")).to_have_text("completed")
    written = [text.strip() for text in replies(page).locator(".body").all_inner_texts()]
    assert all(written), written

    # The third reply was asked with the whole conversation: the stream's record shows it.
    third = page.locator("#stream-id").inner_text()
    record = page.request.get(f"{live.url}/v1/streams/{third}").json()
    roles = [m["role"] for m in record["messages"]]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user"]
    assert [m["content"] for m in record["messages"] if m["role"] == "user"] == QUESTIONS
    assert record["settings"] == {"max_tokens": 24, "temperature": 0.0}
    screenshot(page, "three-turns")

    page.reload()
    expect(replies(page)).to_have_count(3)
    expect(page.locator("#transcript .msg.user")).to_have_text(QUESTIONS)
    again = [text.strip() for text in replies(page).locator(".body").all_inner_texts()]
    assert again == written
    assert horizontal_overflow(page) == 0
    assert watch.errors == [] and watch.refused == []


def test_a_prompt_longer_than_the_model_context_says_so(
    live: Any, page: Any, member: Account, screenshot: Any
) -> None:
    log_in(page, live.url, member, model=MODEL)
    page.fill("#prompt", LONG_PROMPT)
    page.press("#prompt", "Enter")
    expect(page.locator("#status")).to_have_text("failed")
    meta = replies(page).last.locator(".meta")
    expect(meta).to_contain_text("Prompt too long for this model")
    expect(meta).to_contain_text("maximum context length is 2048 tokens")  # the model server's
    screenshot(page, "prompt-too-long")
