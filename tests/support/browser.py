"""Debian's Chromium (never a downloaded browser) and the playground as a person uses it."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from typing import Any

from tests.support.config import PASSWORD, ROOT

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts" / "browser"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@dataclass
class Account:
    tenant: str
    email: str
    user_id: str
    role: str
    tenant_id: str


def log_in(page: Any, base_url: str, account: Account, model: str = "fake-model") -> None:
    """Log in through the chat page's form, as a person would, and wait until the page has
    started (``wait_started``): a test that sends at once would otherwise race the page's own
    first load of its conversation list."""
    page.goto(base_url + "/")
    page.locator("#login-view").wait_for(state="visible")
    page.fill("#login-tenant", account.tenant)
    page.fill("#login-email", account.email)
    page.fill("#login-password", PASSWORD)
    page.click("#login-submit")
    page.locator("#app-view").wait_for(state="visible")
    page.locator(f"#model option[value='{model}']").wait_for(state="attached")
    wait_started(page)


class PageServer:
    """A second loopback origin: serves one empty HTML page, so a browser's requests to the API
    from it are cross-origin (``http://127.0.0.1:<other port>``)."""

    PAGE = b"<!doctype html><meta charset=utf-8><title>an app on another origin</title><body>"

    def __init__(self) -> None:
        import http.server
        import threading

        page = self.PAGE

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


def send(page: Any, prompt: str) -> None:
    """Type a prompt in the chat page and press Send."""
    page.fill("#prompt", prompt)
    page.click("#send")


PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 800}


class PageWatch:
    """What a page logged and what it was refused, for "no console errors" assertions:
    console errors (and warnings, unless ``warnings=False``), uncaught exceptions, 4xx/5xx."""

    def __init__(self, page: Any, warnings: bool = True) -> None:
        self.errors: list[str] = []
        self.refused: list[str] = []
        logged = ("error", "warning") if warnings else ("error",)
        page.on("console", lambda msg: msg.type in logged and self.errors.append(msg.text))
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        page.on(
            "response",
            lambda r: r.status >= 400 and self.refused.append(f"{r.status} {r.url}"),
        )


VIEWPORTS = {"desktop": DESKTOP, "phone": PHONE}


def open_console(
    browser: Any, base_url: str, account: Account, viewport: str
) -> tuple[Any, PageWatch]:
    """A new browser context at ``viewport``, logged in as ``account`` on the playground, and
    a page on the admin console its link points at; that page and its errors."""
    context = browser.new_context(viewport=VIEWPORTS[viewport])
    playground = context.new_page()
    log_in(playground, base_url, account)
    link = playground.locator("#admin-link a")
    link.wait_for(state="visible")
    page = context.new_page()
    page.set_default_timeout(15_000)
    errors = PageWatch(page, warnings=False)  # the console's own errors, from its first request
    page.goto(base_url + str(link.get_attribute("href")))
    playground.close()
    page.locator("#console").wait_for(state="visible")
    page.locator("#feed-status[data-state='live']").wait_for()
    return page, errors


def horizontal_overflow(page: Any) -> int:
    """How many CSS pixels the page is wider than its viewport (0: no sideways scrolling)."""
    return int(
        page.evaluate(
            "() => Math.max(document.documentElement.scrollWidth, document.body.scrollWidth)"
            " - document.documentElement.clientWidth"
        )
    )


def wait_started(page: Any) -> None:
    """Wait until the chat page has finished starting: its conversation chosen and its user
    channel open, so a reply started on another tab or device from now on reaches it."""
    from playwright.sync_api import expect

    expect(page.locator("#app-view")).to_have_attribute("data-user-channel", "open")
