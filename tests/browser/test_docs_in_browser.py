"""docs/channels.md's browser example (cookie login, POST /v1/streams, EventSource) runs in
Chromium against the live server, exactly as printed."""

from __future__ import annotations

from typing import Any

import pytest

from bench.fake_upstream import token_text
from tests.support.config import PASSWORD
from tests.support.docs import examples

pytestmark = [pytest.mark.browser, pytest.mark.live]


def test_eventsource_cookie_example_streams_a_reply(live: Any, browser: Any, accounts: Any) -> None:
    (example,) = [e for e in examples("channels.md") if e.title == "eventsource-cookie"]
    member = accounts["member"]
    context = browser.new_context()
    page = context.new_page()
    page.goto(live.url + "/healthz")  # any page of the API's origin: the example is same-origin
    text = page.evaluate(
        "async ([credentials, model, prompt]) => {\n"
        + example.code
        + "\nreturn await streamInBrowser(credentials, model, prompt);\n}",
        [
            {"tenant": member.tenant, "email": member.email, "password": PASSWORD},
            "fake-model",
            "Tell a story [[fake tokens=12]]",
        ],
    )
    assert text == "".join(token_text(i) for i in range(12))
    context.close()
