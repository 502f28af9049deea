"""What every browser test shares: Debian's Chromium, its launch flags, the skip rule, and a ``Watch`` that
records every URL a page asks for and every fault it shows, so a test can assert that the browser talked
to 127.0.0.1 only and that nothing failed to load or threw."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
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
