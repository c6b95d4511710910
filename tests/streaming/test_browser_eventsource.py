"""A real browser's EventSource on the hub: cookie login, cut off mid-stream, resumed by itself.

Debian's Chromium through Playwright (never a downloaded browser), real gunicorn gevent workers.
The page logs in with ``{"cookie": true}`` (HttpOnly access cookie + CSRF cookie), starts a
generation with ``fetch``, and reads it with ``new EventSource('/v1/events?channel=...')``.
Mid-stream the workers' Redis pub/sub connections are killed: each worker then ends its open hub
connections (it may have missed events) without ending the stream. The browser reconnects on its
own, sending ``Last-Event-ID``, and the page ends with exactly the complete text.

A second test opens the hub from another origin (a page of ``CORS_ORIGINS``, served by a second
loopback server) with a one-time ticket (CORS, no cookie).
"""

from __future__ import annotations

from typing import Any

import pytest

from bench.fake_upstream import expected_text
from tests.support.browser import PageServer
from tests.support.config import PASSWORD, ROOT
from tests.support.hub import prompt, start_stream, tenant_of
from tests.support.pages import chromium_browser, page_server

pytestmark = [pytest.mark.browser, pytest.mark.live]

ARTIFACTS = ROOT / "test-artifacts" / "streaming"
TOKENS = 300
WAIT_MS = (
    60_000  # an upper bound for a loaded machine; every wait ends as soon as the page is ready
)

# The page's side: counts opens and errors, checks token continuity, renders the text.
READER = """
([url, terminal]) => {
  const sg = window.sg = {text: "", next: 0, opens: 0, errors: 0, bad: [], done: false, ids: []};
  const status = document.createElement("p");
  const out = document.createElement("pre");
  document.body.replaceChildren(status, out);
  const show = () => {
    status.textContent = `EventSource opens: ${sg.opens}, errors: ${sg.errors}, ` +
      `tokens: ${sg.next}, last id: ${sg.ids.at(-1) || "-"}${sg.done ? ", complete" : ""}`;
  };
  const es = window.es = new EventSource(url);
  es.onopen = () => { sg.opens += 1; show(); };
  es.onerror = () => { sg.errors += 1; show(); };
  es.addEventListener("token", (e) => {
    const d = JSON.parse(e.data);
    if (d.index !== sg.next) sg.bad.push([d.index, sg.next]);
    sg.text += d.text;
    sg.next = d.index + d.count;
    sg.ids.push(e.lastEventId);
    out.textContent = sg.text;
    show();
  });
  es.addEventListener(terminal, () => { sg.done = true; es.close(); show(); });
}
"""


other_origin = pytest.fixture(page_server, scope="module", name="other_origin")
chromium = pytest.fixture(chromium_browser, name="chromium")


@pytest.fixture()
def live_overrides(other_origin: PageServer) -> dict[str, str]:
    return {"SSE_RETRY_MS": "300", "SSE_COALESCE_MS": "5", "CORS_ORIGINS": other_origin.origin}


def _screenshot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_eventsource_is_cut_off_mid_stream_and_resumes_by_itself_to_the_complete_text(
    live: Any,
    live_user: Any,
    chromium: Any,
    redis: Any,
) -> None:
    user, _ = live_user()
    with live.app.app_context():
        credentials = {
            "tenant": tenant_of(user).slug,
            "email": user.email,
            "password": PASSWORD,
            "cookie": True,
        }
    context = chromium.new_context()
    page = context.new_page()
    try:
        page.goto(live.url + "/healthz")  # any page of the API's origin
        status = page.evaluate(
            """async (body) => (await fetch("/v1/auth/login", {
            method: "POST", headers: {"Content-Type": "application/json"},
            body: JSON.stringify(body)})).status""",
            credentials,
        )
        assert status == 200
        cookies = {c["name"]: c for c in context.cookies()}
        assert cookies["sg_access"]["httpOnly"]  # the page cannot read its token

        started = page.evaluate(
            """async (body) => {
            const csrf = document.cookie.split("; ").find((c) => c.startsWith("csrf_access_"));
            const r = await fetch("/v1/streams", {method: "POST", body: JSON.stringify(body),
                headers: {"Content-Type": "application/json",
                          "X-CSRF-TOKEN": csrf.split("=")[1]}});
            return [r.status, await r.json()];
        }""",
            {
                "model": "fake-model",
                "max_tokens": TOKENS,
                "messages": [{"role": "user", "content": prompt(tokens=TOKENS, delay_ms=15)}],
            },
        )
        assert started[0] == 202, started
        page.evaluate(READER, [started[1]["events_url"], "stream.completed"])

        page.wait_for_function("window.sg.next >= 40", timeout=WAIT_MS)
        assert page.evaluate("window.sg.opens") == 1
        killed = redis.client_kill_filter(_type="pubsub")  # the server side drops, not the page
        assert killed >= 1
        page.wait_for_function("window.sg.done", timeout=WAIT_MS)
        sg = page.evaluate("window.sg")
        _screenshot(page, "eventsource-resumed")
    finally:
        context.close()

    assert sg["errors"] >= 1 and sg["opens"] >= 2  # cut off, then reopened by the browser itself
    assert sg["bad"] == []  # no gap, no repeat
    assert sg["text"] == expected_text(TOKENS)
    assert len(sg["ids"]) == len(set(sg["ids"]))
    assert sg["next"] == TOKENS
    assert "control/hub connection lost" in live.log()


def test_another_origin_reads_a_channel_with_a_one_time_ticket(
    live: Any,
    live_user: Any,
    chromium: Any,
    other_origin: PageServer,
) -> None:
    user, headers = live_user()
    with live.client() as client:
        started = start_stream(client, headers, tokens=40, delay_ms=10, first_delay_ms=1000)
        ticket = client.post(
            "/v1/events/tickets", headers=headers, json={"channel": started["channel"]}
        ).json()
    api_origin = live.url  # http://127.0.0.1:<port>
    context = chromium.new_context()
    page = context.new_page()
    try:
        page.goto(other_origin.origin + "/")
        assert page.evaluate("location.origin") != api_origin
        page.evaluate(READER, [api_origin + ticket["events_url"], "stream.completed"])
        page.wait_for_function("window.sg.done", timeout=WAIT_MS)
        sg = page.evaluate("window.sg")
        _screenshot(page, "eventsource-ticket")
    finally:
        context.close()
    assert sg["text"] == expected_text(40) and sg["bad"] == [] and sg["opens"] == 1
    assert all(sg["ids"]) and len(sg["ids"]) == len(set(sg["ids"]))  # each with its own id
