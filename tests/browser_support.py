"""What every browser test shares: Debian's Chromium, its launch flags, the skip rule, a ``Watch`` that
records every URL a page asks for and every fault it shows (so a test can assert that the browser talked
to 127.0.0.1 only and that nothing failed to load or threw), launching Chromium, signing in, and finding
an article in the desk's knowledge panel. Playwright is imported inside the helpers: modules that skip
without it must still import this one."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
LOCAL_HOSTS = {"127.0.0.1"}
# Checked before any fixture runs: no server is started for nothing.
BROWSER_MARKS = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing: run scripts/setup.sh --test (installs Debian's chromium)"
    ),
]


@dataclass
class Watch:
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    # Pages a test opens on purpose to get an error status.
    expected_error_urls: set[str] = field(default_factory=set)

    def attach(self, context, page) -> None:  # noqa: ANN001 - Playwright objects
        context.on("request", lambda request: self.requests.append(request.url))
        page.on("websocket", lambda socket: self.requests.append(socket.url))
        page.on("console", self.on_console)
        page.on("response", self.on_response)
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))

    def on_console(self, message) -> None:  # noqa: ANN001
        # Failed loads are judged by on_response, which knows what kind of resource failed.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.errors.append(f"{message.text} ({(message.location or {}).get('url', '')})")

    def on_response(self, response) -> None:  # noqa: ANN001
        # Pages, scripts, styles and htmx calls must load. An image inside article content is the
        # author's (tests leave bodies with <img src=x> in the shared database): not a page fault.
        if response.status < 400 or response.request.resource_type == "image":
            return
        if response.url in self.expected_error_urls:
            return
        self.errors.append(f"{response.status} {response.request.resource_type} {response.url}")

    def assert_clean(self) -> None:
        foreign = sorted({u for u in self.requests if urlsplit(u).hostname not in LOCAL_HOSTS})
        assert not foreign, f"requests to non-local hosts: {foreign}"
        assert self.requests, "no requests were recorded"
        assert not self.errors, f"page faults: {self.errors}"


@contextmanager
def launched_chromium() -> Iterator[Any]:
    """Debian's Chromium, headless, through Playwright's sync API. Enter it only after every async fixture
    of the module has run: the sync API refuses to start inside a running event loop."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def sign_in(page: Any, username: str) -> None:
    """Signs ``page`` in through the (Chinese) login form with the test password; lands on the home page."""
    from playwright.sync_api import expect

    from conftest import TEST_PASSWORD

    page.goto("/login")
    page.get_by_label("用户名或邮箱").fill(username)
    page.get_by_label("密码", exact=True).fill(TEST_PASSWORD)
    page.get_by_role("button", name="登录").click()
    expect(page).to_have_url(re.compile(r"/$"))


INDEX_WAIT_SECONDS = 20  # the server's index follows a change within ~0.5 s; this only bounds a broken one


def find_in_panel(page: Any, word: str, article_id: int) -> Any:
    """Types into the desk's knowledge panel until the article shows (the server's index refreshes in the
    background, so a brand-new article may need a moment); returns its result row."""
    from playwright.sync_api import expect

    deadline = time.monotonic() + INDEX_WAIT_SECONDS
    box = page.locator("#desk-kb-q")
    hit = page.locator(f'#desk-kb-results li[data-article-id="{article_id}"]')
    while True:
        box.fill("")
        box.press_sequentially(word, delay=20)
        try:
            expect(hit).to_be_visible(timeout=2_000)
            return hit
        except AssertionError:
            if time.monotonic() > deadline:
                raise
