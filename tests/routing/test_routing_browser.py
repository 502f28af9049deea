"""Routing in a real browser (headless Debian Chromium, Playwright's sync API) against ``kefu serve`` in
another process: an agent on the desk makes themselves available; a contact is posted to
/api/v1/interactions with the queue's code, as a channel does; the offer rings on the agent's desk with
its countdown; the agent accepts with the keyboard and the desk pops the contact. Meanwhile a supervisor's
live view, never reloaded, follows: the agent available, the queue's contact waiting, then the agent on
contact and nobody waiting. Both pages talk to 127.0.0.1 only and stay free of errors.

Accounts and the queue are made before the browser starts by a module-scoped async fixture (Playwright's
sync API refuses to run inside a running loop)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from tests.routing.routing_support import code

from browser_support import BROWSER_MARKS, Watch, launched_chromium, sign_in
from conftest import Factory, LiveServer
from kefu.routing.models import QueueMember, RoutingQueue

pytestmark = BROWSER_MARKS
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is missing: pip install -e '.[test]'")
expect = sync_api.expect
expect.set_options(timeout=10_000)


@dataclass
class Scene:
    queue_id: int
    queue_code: str
    queue_name: str
    agent_id: int
    agent_username: str
    supervisor_username: str
    channel_token: str


@pytest.fixture(scope="module")
async def scene(app) -> Scene:  # noqa: ANN001
    make = Factory(app)
    agent = await make.user("agent")
    supervisor = await make.user("supervisor")
    channel = await make.user("supervisor")  # the integration user a chat or phone server posts as
    name = f"信用卡热线 {code('n')}"
    async with app.state.session_factory() as db, db.begin():
        queue = RoutingQueue(code=code("card"), name=name, channel="phone", offer_timeout_seconds=120)
        db.add(queue)
        await db.flush()
        db.add(QueueMember(queue_id=queue.id, user_id=agent.id))
    return Scene(
        queue_id=queue.id,
        queue_code=queue.code,
        queue_name=name,
        agent_id=agent.id,
        agent_username=agent.username,
        supervisor_username=supervisor.username,
        channel_token=await make.token(channel),
    )


@pytest.fixture(scope="module")
def browser(scene: Scene, live_server: LiveServer) -> Iterator[sync_api.Browser]:
    # Depends on every async fixture of the module: they must run before Playwright's loop starts.
    with launched_chromium() as chromium:
        yield chromium


def signed_in_page(browser: sync_api.Browser, server: LiveServer, username: str, path: str, watch: Watch):
    context = browser.new_context(locale="zh-CN", base_url=server.url)
    context.set_default_timeout(10_000)
    page = context.new_page()
    watch.attach(context, page)
    sign_in(page, username)
    page.goto(path)
    expect(page.locator("#live-status")).to_have_class(re.compile(r"\bon\b"))  # the WebSocket is open
    page.evaluate("window.__sameDocument = true")  # gone if anything reloads the page
    return context, page


def test_offer_rings_on_the_desk_is_accepted_and_the_live_view_follows(
    browser: sync_api.Browser, live_server: LiveServer, scene: Scene
) -> None:
    watch = Watch()
    boss_context, boss = signed_in_page(browser, live_server, scene.supervisor_username, "/routing/live", watch)
    agent_context, desk = signed_in_page(browser, live_server, scene.agent_username, "/desk", watch)
    try:
        queue_row = boss.locator(f'#rl-panel tr[data-queue-id="{scene.queue_id}"]')
        agent_row = boss.locator(f'#rl-panel tr[data-user-id="{scene.agent_id}"]')
        expect(queue_row).to_contain_text(scene.queue_name)
        expect(queue_row.locator(".rl-waiting")).to_have_attribute("data-waiting", "0")
        expect(agent_row).to_have_attribute("data-presence", "offline")  # a member who has not signed in yet

        # --- the agent makes themselves available on the desk ---------------------------------------
        expect(desk.locator("#desk-presence")).to_have_attribute("data-presence", "offline")
        desk.locator("#desk-go-available").click()
        expect(desk.locator("#desk-presence-state .rp-available")).to_be_visible()
        expect(agent_row).to_have_attribute("data-presence", "available")

        # --- a contact arrives for the queue, as a channel posts it ---------------------------------
        posted = httpx.post(
            f"{live_server.url}/api/v1/interactions",
            json={
                "channel": "phone",
                "identity": {"kind": "phone", "value": "139 0000 1234"},
                "queue": scene.queue_code,
            },
            headers={"Authorization": f"Bearer {scene.channel_token}"},
            timeout=10,
        )
        assert posted.status_code == 201, posted.text
        interaction_id = int(posted.json()["id"])

        offer = desk.locator(f'#desk-offers [data-offer-id="{interaction_id}"]')
        expect(offer).to_be_visible()
        expect(offer).to_contain_text(scene.queue_code)
        expect(offer.locator(".desk-offer-left")).to_have_text(re.compile(r"^\d+ "))  # the countdown runs
        # The supervisor sees it in the queue (ringing counts as waiting) without reloading.
        expect(queue_row.locator(".rl-waiting")).to_have_attribute("data-waiting", "1")
        expect(boss.locator(f'#rl-panel tr[data-interaction-id="{interaction_id}"]')).to_be_visible()

        # --- the agent accepts (Alt+A) and the desk pops the contact --------------------------------
        desk.keyboard.press("Alt+KeyA")
        expect(offer).to_have_count(0)
        expect(desk.locator(f'#desk-pop [data-interaction-id="{interaction_id}"]')).to_be_visible()
        expect(desk.locator(f'#desk-contact-list li[data-interaction-id="{interaction_id}"]')).to_be_visible()
        expect(desk.locator("#desk-presence-state .rp-on_contact")).to_be_visible()

        expect(agent_row).to_have_attribute("data-presence", "on_contact")
        expect(queue_row.locator(".rl-waiting")).to_have_attribute("data-waiting", "0")
        expect(boss.locator(f'#rl-panel tr[data-interaction-id="{interaction_id}"]')).to_have_count(0)

        assert desk.evaluate("window.__sameDocument === true"), "the desk reloaded"
        assert boss.evaluate("window.__sameDocument === true"), "the live view reloaded"
        watch.assert_clean()
    finally:
        agent_context.close()
        boss_context.close()
