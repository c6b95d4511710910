"""A browser app on another origin, in Chromium (Debian's, through Playwright), on real gunicorn.

The page is served by a second loopback origin (``tests.support.browser.PageServer``). With that
origin in ``CORS_ORIGINS`` it calls ``POST /v1/chat/completions`` with a bearer token and reads the
stream, and follows a channel with a ticket ``EventSource``. A page from an origin not in
``CORS_ORIGINS`` gets neither: the browser blocks the chat call at its preflight (nothing reaches
the model server) and the ``EventSource`` although the server accepted its ticket.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from bench.fake_upstream import FakeUpstream, expected_text
from tests.support.browser import PageServer
from tests.support.hub import prompt, start_stream
from tests.support.pages import page_server
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.browser, pytest.mark.live]

WAIT_MS = 60_000  # an upper bound for a loaded machine; every wait ends when the page is ready

CHAT = """
async ([api, token, body]) => {
  try {
    const r = await fetch(api + "/v1/chat/completions", {method: "POST", body: JSON.stringify(body),
      headers: {"Authorization": "Bearer " + token, "Content-Type": "application/json"}});
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let raw = "";
    for (;;) {
      const {done, value} = await reader.read();
      if (done) break;
      raw += decoder.decode(value, {stream: true});
    }
    return {status: r.status, streamId: r.headers.get("X-Stream-Id"), raw};
  } catch (e) {
    return {blocked: e.name};
  }
}
"""

POST_JSON = """
async ([url, token, body]) => {
  try {
    const r = await fetch(url, {method: "POST", body: JSON.stringify(body),
      headers: {"Authorization": "Bearer " + token, "Content-Type": "application/json"}});
    return {status: r.status, body: await r.json()};
  } catch (e) {
    return {blocked: e.name};
  }
}
"""

FOLLOW = """
(url) => {
  const sg = window.sg = {text: "", events: 0, done: false, closed: false, errors: 0};
  const es = new EventSource(url);
  es.addEventListener("token", (e) => { sg.events += 1; sg.text += JSON.parse(e.data).text; });
  es.addEventListener("stream.completed", () => { sg.done = true; es.close(); });
  es.onerror = () => {
    sg.errors += 1;
    if (es.readyState === EventSource.CLOSED) sg.closed = true;
  };
}
"""


app_origin = pytest.fixture(page_server, scope="module", name="app_origin")
other_origin = pytest.fixture(page_server, scope="module", name="other_origin")


@pytest.fixture()
def live_overrides(app_origin: PageServer) -> dict[str, str]:
    return {"CORS_ORIGINS": app_origin.origin}


@pytest.fixture()
def bearer(
    live: Any, make_user: Callable[..., Any], auth_headers: Callable[..., dict[str, str]]
) -> str:
    with live.app.app_context():
        return auth_headers(make_user())["Authorization"].removeprefix("Bearer ")


def chat_in(page: Any, url: str, bearer: str, tokens: int) -> dict[str, Any]:
    """A streamed chat completion fetched by the page's script (``CHAT``): what the page saw."""
    body = {
        "model": "fake-model",
        "stream": True,
        "messages": [{"role": "user", "content": prompt(tokens=tokens)}],
    }
    return dict(page.evaluate(CHAT, [url, bearer, body]))


def _chunks_text(raw: str) -> str:
    text = ""
    for line in raw.splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            for choice in json.loads(line[6:]).get("choices", []):
                text += choice.get("delta", {}).get("content") or ""
    return text


def test_a_page_on_an_allowed_origin_streams_chat_and_follows_a_channel_with_a_ticket(
    live: Any, browser: Any, app_origin: PageServer, bearer: str
) -> None:
    context = browser.new_context()
    page = context.new_page()
    try:
        page.goto(app_origin.origin + "/")
        assert page.evaluate("location.origin") == app_origin.origin != live.url
        chat = chat_in(page, live.url, bearer, tokens=30)
        assert "blocked" not in chat, chat
        assert chat["status"] == 200
        assert chat["streamId"] and chat["streamId"].startswith("str_")  # an exposed header
        assert _chunks_text(chat["raw"]) == expected_text(30)
        assert chat["raw"].rstrip().endswith("data: [DONE]")

        started = page.evaluate(
            POST_JSON,
            [
                live.url + "/v1/streams",
                bearer,
                {
                    "model": "fake-model",
                    "messages": [
                        {"role": "user", "content": prompt(tokens=40, first_delay_ms=500)}
                    ],
                },
            ],
        )
        assert started.get("status") == 202, started
        ticket = page.evaluate(
            POST_JSON,
            [live.url + "/v1/events/tickets", bearer, {"channel": started["body"]["channel"]}],
        )
        assert ticket.get("status") == 201, ticket
        page.evaluate(FOLLOW, live.url + ticket["body"]["events_url"])
        page.wait_for_function("window.sg.done", timeout=WAIT_MS)
        sg = page.evaluate("window.sg")
    finally:
        context.close()
    assert sg["text"] == expected_text(40) and sg["errors"] == 0


def test_a_page_on_another_origin_is_blocked_by_the_browser(
    live: Any,
    browser: Any,
    other_origin: PageServer,
    bearer: str,
    redis: Any,
    fake_upstream: FakeUpstream,
) -> None:
    headers = {"Authorization": "Bearer " + bearer}
    with live.client() as client:
        started = start_stream(client, headers, tokens=20, first_delay_ms=300)
        ticket = client.post(
            "/v1/events/tickets", headers=headers, json={"channel": started["channel"]}
        ).json()
    # The stream's own upstream request starts in the background after the 202: count from
    # once it has arrived, so only what the blocked page might send is left to count.
    upstream_requests = wait_until(lambda: fake_upstream.snapshot()["requests"])

    context = browser.new_context()
    page = context.new_page()
    try:
        page.goto(other_origin.origin + "/")
        chat = chat_in(page, live.url, bearer, tokens=5)
        page.evaluate(FOLLOW, live.url + ticket["events_url"])
        page.wait_for_function("window.sg.closed", timeout=WAIT_MS)
        sg = page.evaluate("window.sg")
    finally:
        context.close()
    assert chat == {"blocked": "TypeError"}  # the preflight was refused: no request was sent
    assert fake_upstream.snapshot()["requests"] == upstream_requests
    # The server accepted the ticket (it is spent), yet the page saw nothing of the stream.
    assert redis.exists(f"sg:ticket:{ticket['ticket']}") == 0
    assert sg["events"] == 0 and sg["text"] == "" and not sg["done"]
