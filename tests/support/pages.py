"""Fixture functions for browser tests (``tests/browser/conftest.py`` registers the browser):
Debian's Chromium and a second loopback origin to serve pages from.

A module registers one with ``pytest.fixture``, e.g.
``other_origin = pytest.fixture(page_server, scope="module", name="other_origin")``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.browser import CHROMIUM, CHROMIUM_ARGS, PageServer


def page_server() -> Iterator[PageServer]:
    """A loopback origin of its own (another port is another origin), stopped afterwards."""
    server = PageServer()
    yield server
    server.stop()


def chromium_browser() -> Iterator[Any]:
    """Debian's Chromium, headless, under Playwright; the test is skipped where it is missing."""
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (make test installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()
