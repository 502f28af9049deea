"""One case across channels, in a real browser (headless Debian Chromium) against ``kefu serve``.

A customer chats in the widget on the demo host page; the chat is routed to the agent, who accepts it on
/desk and answers with a knowledge article (the knowledge panel's "insert"). The customer then calls: the
PBX posts signed CTI events (a new call from the same number, written the way a PBX writes it, ringing at
the agent's extension). The call pops on the agent's desk with the same customer and the chat's case among
their open work orders, and the database has the call on that same case.

Accounts, queue, article, extension and PBX are made before the browser starts (Playwright's sync API
refuses to run inside a running event loop); the server gets the chat queue through ``KEFU_CHAT_WIDGETS``.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
import pytest
from sqlalchemy import select
from tests.channels.chat.chat_support import agent_for, chat_queue

from browser_support import BROWSER_MARKS, Watch, find_in_panel, launched_chromium, sign_in
from conftest import Factory, LiveServer, principal_of, start_server, unique
from kefu.channels.cti import service as cti
from kefu.channels.cti.schemas import PbxCreate
from kefu.interactions.models import Interaction

pytestmark = BROWSER_MARKS
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is missing: pip install -e '.[test]'")
expect = sync_api.expect
expect.set_options(timeout=10_000)
CUSTOMER = "李女士"


@dataclass
class Scene:
    queue_code: str
    agent_username: str
    agent_id: int
    extension: str
    pbx: str
    pbx_secret: str
    article_id: int
    article_word: str
    answer: str
    phone: str


@pytest.fixture(scope="module")
async def scene(app) -> Scene:  # noqa: ANN001
    from kefu.channels.intake import CHANNEL_PRINCIPAL
    from kefu.knowledge import service as knowledge

    make = Factory(app)
    queue = await chat_queue(app)
    agent = await agent_for(app, make, queue, presence="available")
    extension = f"8{uuid.uuid4().int % 10**6:06d}"
    km = await make.user("knowledge_manager")
    word = unique("xckb")
    answer = "宽带报修后，师傅会在 24 小时内上门，费用全免。"
    async with app.state.session_factory() as db, db.begin():
        await cti.set_extension(db, CHANNEL_PRINCIPAL, agent.id, extension)
        pbx = await cti.create_pbx(db, CHANNEL_PRINCIPAL, PbxCreate(code=unique("pbx"), name="浏览器测试交换机"))
        view = await knowledge.create_article(
            db,
            principal_of(km),
            knowledge.Content(title=f"{word} 宽带报修多久上门", body_markdown=answer),
            knowledge.Placement(),
        )
        await knowledge.publish(db, principal_of(km), app.state.settings, view.article.id)
    phone = f"137{uuid.uuid4().int % 10**8:08d}"
    return Scene(
        queue.code, agent.username, agent.id, extension, pbx.code, pbx.secret, view.article.id, word, answer, phone
    )


@pytest.fixture(scope="module")
def server(scene: Scene, settings) -> Iterator[LiveServer]:  # noqa: ANN001
    live = start_server(settings, env={"KEFU_CHAT_WIDGETS": json.dumps({"default": scene.queue_code})})
    yield live
    live.stop()


@pytest.fixture(scope="module")
def browser(scene: Scene, server: LiveServer) -> Iterator[sync_api.Browser]:
    with launched_chromium() as chromium:
        yield chromium


def post_call_event(server: LiveServer, scene: Scene, **event: object) -> dict:
    """What the PBX does: one signed event to the CTI API."""
    raw = json.dumps(event, ensure_ascii=False).encode()
    timestamp = str(int(time.time()))
    headers = {
        "X-Kefu-Pbx": scene.pbx,
        "X-Kefu-Timestamp": timestamp,
        "X-Kefu-Signature": cti.sign(scene.pbx_secret, timestamp, raw),
        "Content-Type": "application/json",
    }
    response = httpx.post(f"{server.url}/api/v1/cti/events", content=raw, headers=headers, timeout=10)
    assert response.status_code in (200, 201), response.text
    return response.json()


def test_a_chat_then_a_call_pop_the_same_case(
    settings,  # noqa: ANN001
    browser: sync_api.Browser,
    server: LiveServer,
    scene: Scene,
) -> None:
    watch = Watch()
    desk_context = browser.new_context(locale="zh-CN", base_url=server.url)
    desk_context.set_default_timeout(10_000)
    desk = desk_context.new_page()
    watch.attach(desk_context, desk)
    visitor_context = browser.new_context(locale="zh-CN", base_url=server.url)
    visitor_context.set_default_timeout(10_000)
    visitor = visitor_context.new_page()
    watch.attach(visitor_context, visitor)
    try:
        sign_in(desk, scene.agent_username)
        desk.goto("/desk")
        expect(desk.locator("#live-status")).to_have_class(re.compile(r"\bon\b"))
        expect(desk.locator("#desk-chat")).to_have_attribute("data-connected", "true")

        # --- the customer chats in the widget; it rings on the desk; the agent accepts ------------
        visitor.goto("/chat/demo")
        widget = visitor.locator("#kefu-chat-widget")
        widget.locator("button.launcher").click()
        panel = widget.locator("section.panel")
        form = panel.locator("form.prechat")
        form.locator('[data-field="name"]').fill(CUSTOMER)
        form.locator('[data-field="phone"]').fill(f"{scene.phone[:3]} {scene.phone[3:7]} {scene.phone[7:]}")
        form.locator('[data-field="question"]').fill("家里宽带断了，多久能修好？")
        form.locator("button[type=submit]").click()
        offer = desk.locator("#desk-offers [data-offer-id]")
        expect(offer).to_have_count(1)
        chat_interaction_id = int(offer.get_attribute("data-offer-id") or 0)
        offer.locator(".desk-offer-accept").click()
        expect(desk.locator("#desk-chat")).to_have_attribute("data-interaction-id", str(chat_interaction_id))
        expect(panel).to_have_attribute("data-status", "active")

        # --- the agent answers with an article ------------------------------------------------------
        chat_input = desk.locator("#desk-chat-input")
        chat_input.click()
        hit = find_in_panel(desk, scene.article_word, scene.article_id)
        hit.locator("button.desk-insert").click()
        expect(chat_input).to_have_value(scene.answer)
        desk.locator("#desk-chat-send").click()
        expect(panel.locator("ol.log li", has_text=scene.answer)).to_have_count(1)

        # --- then the customer calls: the PBX reports the call ringing at the agent's extension -----
        call_id = unique("call")
        now = datetime.now(UTC).isoformat()
        post_call_event(
            server,
            scene,
            event_id=unique("e"),
            call_id=call_id,
            seq=1,
            type="call_new",
            at=now,
            caller=f"+86 {scene.phone}",
            called="4008008000",
        )
        post_call_event(
            server,
            scene,
            event_id=unique("e"),
            call_id=call_id,
            seq=2,
            type="ringing",
            at=now,
            extension=scene.extension,
        )

        # The call pops on the desk: the same customer, the chat's case among their open work orders.
        chat = stored_interaction(settings, chat_interaction_id)
        call_pop = desk.locator(f'#desk-pop [data-interaction-id]:not([data-interaction-id="{chat_interaction_id}"])')
        expect(call_pop).to_have_count(1)
        expect(call_pop.locator("#desk-customer-name")).to_contain_text(CUSTOMER)
        expect(
            call_pop.locator(f'#desk-open-work-orders tr[data-work-order-id="{chat.work_order_id}"]')
        ).to_be_visible()
        expect(call_pop.locator("#desk-recent")).to_contain_text(re.compile("聊天|在线|chat", re.IGNORECASE))

        call_interaction_id = int(call_pop.get_attribute("data-interaction-id") or 0)
        call = stored_interaction(settings, call_interaction_id)
        assert call.channel == "phone"
        assert (call.customer_id, call.work_order_id) == (chat.customer_id, chat.work_order_id)
        assert chat.work_order_id is not None and chat.customer_id is not None
        watch.assert_clean()
    finally:
        desk_context.close()
        visitor_context.close()


def stored_interaction(settings, interaction_id: int) -> Interaction:  # noqa: ANN001
    """The interaction as stored, read with an engine of its own in a thread of its own (the test body is
    synchronous and Playwright's loop runs in this thread; the app's pool belongs to the test's loop)."""
    import asyncio
    import concurrent.futures

    from kefu.db.engine import make_engine, make_session_factory

    async def read() -> Interaction:
        engine = make_engine(settings.resolved_database_url)
        try:
            async with make_session_factory(engine)() as db:
                found = await db.scalar(select(Interaction).where(Interaction.id == interaction_id))
                assert found is not None
                return found
        finally:
            await engine.dispose()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, read()).result()
