"""The web chat in a real browser (headless Debian Chromium, Playwright's sync API) against ``kefu serve``
in another process, end to end as a visitor and an agent live it.

A visitor opens the demo host page (``/chat/demo``, the widget's one script tag), opens the widget, fills
the pre-chat form and sees their place in the queue. The agent, signed in on /desk and on a break, makes
themselves available: the chat rings on the desk, the agent accepts and the chat opens in a tab. Messages
go both ways and typing shows on the other side; the agent finds an article in the knowledge panel,
"insert" puts its answer in the chat box and the agent sends it. The visitor reloads the page mid-chat:
the conversation comes back whole, every message once, and goes on. The visitor ends the chat: the desk's
tab shows it ended and closes on a click, and the widget offers a new chat. Both pages talk to 127.0.0.1
only and stay free of errors.

Accounts, the chat queue and the article are made before the browser starts by a module-scoped async
fixture (Playwright's sync API refuses to run inside a running loop); the server gets the queue's code
through the widget setting (``KEFU_CHAT_WIDGETS``), as an administrator configures it."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from tests.channels.chat.chat_support import agent_for, chat_queue

from browser_support import BROWSER_MARKS, Watch, find_in_panel, launched_chromium, sign_in
from conftest import Factory, LiveServer, principal_of, start_server, unique

pytestmark = BROWSER_MARKS
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is missing: pip install -e '.[test]'")
expect = sync_api.expect
expect.set_options(timeout=10_000)
VISITOR = "张三"


@dataclass
class Scene:
    queue_code: str
    agent_username: str
    agent_name: str
    article_id: int
    article_word: str
    answer: str


@pytest.fixture(scope="module")
async def scene(app) -> Scene:  # noqa: ANN001
    from kefu.knowledge import service as knowledge

    make = Factory(app)
    queue = await chat_queue(app)
    # Signed in but on a break: the queue is staffed, so the chat waits (and the visitor sees their place).
    agent = await agent_for(app, make, queue, presence="break")
    km = await make.user("knowledge_manager")
    word = unique("chatkb")
    answer = "退货请在签收后七天内申请，运费由我们承担。"
    async with app.state.session_factory() as db, db.begin():
        view = await knowledge.create_article(
            db,
            principal_of(km),
            knowledge.Content(title=f"{word} 怎么退货", body_markdown=answer),
            knowledge.Placement(),
        )
        await knowledge.publish(db, principal_of(km), app.state.settings, view.article.id)
    return Scene(queue.code, agent.username, agent.display_name, view.article.id, word, answer)


@pytest.fixture(scope="module")
def server(scene: Scene, settings) -> Iterator[LiveServer]:  # noqa: ANN001
    live = start_server(settings, env={"KEFU_CHAT_WIDGETS": json.dumps({"default": scene.queue_code})})
    yield live
    live.stop()


@pytest.fixture(scope="module")
def browser(scene: Scene, server: LiveServer) -> Iterator[sync_api.Browser]:
    # Depends on every async fixture of the module: they must run before Playwright's loop starts.
    with launched_chromium() as chromium:
        yield chromium


def texts_once(log: sync_api.Locator, *texts: str) -> None:
    """Each text is in exactly one entry of the log."""
    for text in texts:
        expect(log.locator("li", has_text=text)).to_have_count(1)


def test_visitor_and_agent_chat_in_the_browser_and_a_reload_resumes(
    browser: sync_api.Browser, server: LiveServer, scene: Scene
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
        # --- the agent on the desk, on a break ----------------------------------------------------
        sign_in(desk, scene.agent_username)
        desk.goto("/desk")
        expect(desk.locator("#live-status")).to_have_class(re.compile(r"\bon\b"))  # the desk's socket
        expect(desk.locator("#desk-chat")).to_have_attribute("data-connected", "true")  # the chat socket
        expect(desk.locator("#desk-presence")).to_have_attribute("data-presence", "break")
        desk.evaluate("window.__sameDocument = true")  # gone if anything reloads the desk

        # --- the visitor opens the widget and fills the pre-chat form -----------------------------
        visitor.goto("/chat/demo")
        widget = visitor.locator("#kefu-chat-widget")
        launcher = widget.locator("button.launcher")
        expect(launcher).to_be_visible()
        launcher.click()
        panel = widget.locator("section.panel")
        expect(panel).to_be_visible()
        form = panel.locator("form.prechat")
        form.locator('[data-field="name"]').fill(VISITOR)
        form.locator('[data-field="phone"]').fill("139 1234 5678")
        question = "我买的鞋子尺码不对，可以退吗？"
        form.locator('[data-field="question"]').fill(question)
        form.locator("button[type=submit]").click()
        log = panel.locator("ol.log")
        texts_once(log, question)
        # The place in the queue: the agent is on a break, so the chat waits, first in line.
        expect(panel).to_have_attribute("data-status", "waiting")
        expect(panel.locator(".status")).to_have_attribute("data-position", "1")
        expect(panel.locator(".status")).to_contain_text("1")

        # --- the agent becomes available: the chat rings, the agent accepts -----------------------
        desk.locator("#desk-go-available").click()
        offer = desk.locator("#desk-offers [data-offer-id]")
        expect(offer).to_have_count(1)
        interaction_id = offer.get_attribute("data-offer-id")
        offer.locator(".desk-offer-accept").click()
        expect(offer).to_have_count(0)
        chat_box = desk.locator("#desk-chat")
        expect(chat_box).to_be_visible()
        tab = desk.locator("#desk-chat-tabs [role=tab]", has_text=VISITOR)
        expect(tab).to_have_attribute("aria-selected", "true")
        expect(chat_box).to_have_attribute("data-interaction-id", interaction_id or "")
        desk_log = desk.locator("#desk-chat-log")
        texts_once(desk_log, question)
        expect(desk.locator(f'#desk-pop [data-interaction-id="{interaction_id}"]')).to_be_visible()
        # The visitor is told who answers, and no longer sees a queue position.
        expect(panel).to_have_attribute("data-status", "active")
        expect(log.locator("li.system", has_text=scene.agent_name)).to_have_count(1)

        # --- messages both ways, typing shows on the other side -----------------------------------
        visitor_input = panel.locator("form.send textarea")
        visitor_input.press_sequentially("是四十二码的", delay=10)
        expect(desk.locator("#desk-chat-typing")).not_to_be_empty()
        visitor_input.press("Enter")
        texts_once(desk_log, "是四十二码的")
        expect(log.locator("li.visitor.pending")).to_have_count(0)  # acknowledged: stored on the server
        texts_once(log, "是四十二码的")

        chat_input = desk.locator("#desk-chat-input")
        chat_input.press_sequentially("好的，我帮您查一下", delay=10)
        typing = panel.locator(".typing")
        expect(typing).not_to_be_empty()
        chat_input.press("Enter")
        texts_once(log, "好的，我帮您查一下")
        expect(typing).to_be_empty()  # the message ends the typing note
        texts_once(desk_log, "好的，我帮您查一下")

        # --- the knowledge panel's "insert" fills the chat box; the answer reaches the visitor ----
        chat_input.click()  # the chat box is where answers go (not a work-order reply)
        hit = find_in_panel(desk, scene.article_word, scene.article_id)
        hit.locator("button.desk-insert").click()
        expect(hit.locator("button.desk-insert")).to_have_class(re.compile(r"\bused\b"))  # recorded as used
        expect(chat_input).to_have_value(scene.answer)
        desk.locator("#desk-chat-send").click()
        expect(chat_input).to_have_value("")
        texts_once(log, scene.answer)
        texts_once(desk_log, scene.answer)

        # --- the visitor reloads mid-chat: the conversation resumes, nothing twice ----------------
        before = log.locator("li").count()
        seqs_before = log.locator("li[data-seq]").evaluate_all("items => items.map(i => i.dataset.seq)")
        visitor.reload()
        expect(panel).to_be_visible()  # an open chat keeps its panel open
        expect(panel).to_have_attribute("data-status", "active")
        texts_once(log, question, "是四十二码的", "好的，我帮您查一下", scene.answer)
        expect(log.locator("li")).to_have_count(before)
        seqs_after = log.locator("li[data-seq]").evaluate_all("items => items.map(i => i.dataset.seq)")
        assert seqs_after == seqs_before and len(set(seqs_after)) == len(seqs_after)
        expect(panel.locator(".status")).not_to_have_attribute("data-position", re.compile(r"."))

        visitor_input.fill("谢谢，我这就申请")
        visitor_input.press("Enter")
        texts_once(desk_log, "谢谢，我这就申请")
        texts_once(log, "谢谢，我这就申请")
        expect(log.locator("li")).to_have_count(before + 1)

        # --- the visitor ends the chat: the desk's tab closes on a click; the visitor may start anew --
        panel.locator(".tools button.end").click()
        expect(panel).to_have_attribute("data-status", "closed")
        expect(visitor_input).to_be_disabled()
        expect(tab).to_have_class(re.compile(r"\bclosed\b"))
        expect(chat_input).to_be_disabled()
        end_button = desk.locator("#desk-chat-end")
        expect(end_button).to_have_attribute("data-action", "close")
        end_button.click()
        expect(tab).to_have_count(0)
        expect(chat_box).to_be_hidden()
        panel.locator(".tools button.new").click()
        expect(panel.locator("form.prechat")).to_be_visible()
        expect(panel.locator(".foot")).to_be_hidden()

        assert desk.evaluate("window.__sameDocument === true"), "the desk reloaded"
        watch.assert_clean()
    finally:
        visitor_context.close()
        desk_context.close()
