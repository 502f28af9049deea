"""The agent desk in a real browser (headless Debian Chromium driven by Playwright's sync API) against
``kefu serve`` in another process, as tests/knowledge/test_kb_browser.py does for the knowledge pages.

A known customer (phone +8613812345678) has an open work order. An agent is signed in on /desk. A contact
for "138 1234 5678" is posted through the API for that agent: the desk pops the right customer without a
reload and shows a toast. The agent searches the knowledge panel as they type, inserts a published
article's answer into the reply, sends it on the customer's open work order, picks a contact reason and
resolves. The database then holds the whole story: the interaction ended and wrapped up with the reason
and the article used, the work order resolved with the public reply. Keyboard shortcuts and the help
overlay work, the browser talks to 127.0.0.1 only and the console stays free of errors.

Accounts and data are made before the browser starts by a module-scoped async fixture on the app's event
loop; the browser part is a plain sync test (Playwright's sync API refuses to run inside a running loop).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
import pytest
from sqlalchemy import select

from browser_support import BROWSER_MARKS, Watch, find_in_panel, launched_chromium, sign_in
from conftest import Factory, LiveServer, principal_of, unique
from kefu.db.engine import make_engine, make_session_factory
from kefu.settings import Settings

pytestmark = BROWSER_MARKS
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is missing: pip install -e '.[test]'")
expect = sync_api.expect
expect.set_options(timeout=10_000)
PHONE = "+8613812345678"


@dataclass
class Scene:
    agent_id: int
    agent_username: str
    api_token: str
    customer_id: int
    customer_name: str
    work_order_id: int
    work_order_number: str
    reason_id: int
    reason_name: str
    article_id: int
    article_word: str
    answer: str


@pytest.fixture(scope="module")
async def scene(app) -> Scene:  # noqa: ANN001
    from kefu.customers import service as customers
    from kefu.interactions import service as interactions
    from kefu.knowledge import service as knowledge
    from kefu.tickets import service as tickets
    from kefu.tickets.schemas import WorkOrderCreate

    make = Factory(app)
    team = await make.team()
    agent = await make.user("agent", team_ids=(team,))
    supervisor = await make.user("supervisor")
    km = await make.user("knowledge_manager")
    boss = principal_of(supervisor)
    word = unique("desk")
    name = f"李四 {unique('c')}"
    async with app.state.session_factory() as db, db.begin():
        # The number is the test's: whoever had it in this shared database gives it up.
        holder = await customers.find_by_identity(db, "phone", PHONE)
        if holder is not None:
            for identity in list(holder.identities):
                if identity.kind == "phone" and identity.value == PHONE:
                    await customers.remove_identity(db, boss, holder.id, identity.id)
        customer = await customers.create_customer(
            db, boss, display_name=name, identities=[customers.NewIdentity("phone", PHONE, label="mobile")]
        )
        work_order = await tickets.create_work_order(
            db,
            principal_of(agent),
            WorkOrderCreate(title=f"信用卡年费疑问 {word}", customer_id=customer.id, team_id=team),
        )
        billing = await interactions.create_reason(db, boss, code=unique("fee"), name=f"年费 {word}")
        reason = await interactions.create_reason(
            db, boss, code=unique("feeq"), name=f"年费咨询 {word}", parent_id=billing.reason.id
        )
        km_principal = principal_of(km)
        answer = "信用卡年费 200 元，一年刷卡满六次免次年年费。"
        view = await knowledge.create_article(
            db,
            km_principal,
            knowledge.Content(title=f"{word} 信用卡年费怎么免", body_markdown=answer),
            knowledge.Placement(),
        )
        await knowledge.publish(db, km_principal, app.state.settings, view.article.id)
    return Scene(
        agent_id=agent.id,
        agent_username=agent.username,
        api_token=await make.token(agent),
        customer_id=customer.id,
        customer_name=name,
        work_order_id=work_order.id,
        work_order_number=work_order.number,
        reason_id=reason.reason.id,
        reason_name=reason.reason.name,
        article_id=view.article.id,
        article_word=word,
        answer=answer,
    )


@pytest.fixture(scope="module")
def browser(scene: Scene, live_server: LiveServer) -> Iterator[sync_api.Browser]:
    # Depends on every async fixture of the module: they must run before Playwright's loop starts.
    with launched_chromium() as chromium:
        yield chromium


def test_contact_pops_and_is_answered_with_the_knowledge_base(
    browser: sync_api.Browser, live_server: LiveServer, scene: Scene, settings: Settings
) -> None:
    context = browser.new_context(locale="zh-CN", base_url=live_server.url)
    context.set_default_timeout(10_000)
    page = context.new_page()
    watch = Watch()
    watch.attach(context, page)
    try:
        sign_in(page, scene.agent_username)
        page.goto("/desk")
        page.wait_for_function("typeof window.htmx === 'object' && typeof window.Alpine === 'object'")
        expect(page.locator("#live-status")).to_have_class(re.compile(r"\bon\b"))  # the WebSocket is open
        page.evaluate("window.__sameDocument = true")  # gone if anything reloads the page

        # --- keyboard help --------------------------------------------------------------------------
        page.locator("body").press("?")
        expect(page.locator("#desk-help")).to_be_visible()
        page.keyboard.press("Escape")
        expect(page.locator("#desk-help")).to_be_hidden()

        # --- a contact arrives through the API for this agent --------------------------------------
        posted = httpx.post(
            f"{live_server.url}/api/v1/interactions",
            json={
                "channel": "phone",
                "identity": {"kind": "phone", "value": "138 1234 5678"},
                "agent_id": scene.agent_id,
            },
            headers={"Authorization": f"Bearer {scene.api_token}"},
            timeout=10,
        )
        assert posted.status_code == 201, posted.text
        interaction_id = int(posted.json()["id"])

        pop = page.locator("#desk-pop")
        expect(pop.locator(f'[data-interaction-id="{interaction_id}"]')).to_be_visible()
        expect(page.locator("#desk-customer-name")).to_have_text(scene.customer_name)
        expect(page.locator("#toasts .toast").first).to_contain_text(scene.customer_name)
        expect(page.locator(f'#desk-contact-list li[data-interaction-id="{interaction_id}"]')).to_be_visible()
        expect(page.locator("#desk-open-work-orders")).to_contain_text(scene.work_order_number)
        assert page.evaluate("window.__sameDocument === true"), "the desk reloaded instead of popping"
        assert urlsplit_path(page.url) == "/desk"

        # --- the knowledge panel: "/" focuses it; the answer goes into the reply -------------------
        page.locator("body").press("/")
        expect(page.locator("#desk-kb-q")).to_be_focused()
        hit = find_in_panel(page, scene.article_word, scene.article_id)
        hit.locator("button.desk-insert").click()
        expect(hit.locator("button.desk-insert")).to_have_class(re.compile(r"\bused\b"))  # recorded
        reply = page.locator("#desk-reply-body")
        expect(reply).to_have_value(re.compile(re.escape(scene.answer)))
        expect(page.locator("#desk-articles-used")).to_have_attribute("data-count", "1")

        # Alt+R goes to the reply; the reply goes on the customer's open work order.
        page.locator("#desk-kb-q").focus()
        page.keyboard.press("Alt+r")
        expect(reply).to_be_focused()
        page.locator("#desk-reply-target").select_option(str(scene.work_order_id))
        expect(page.locator("#desk-new-work-order")).to_be_hidden()
        page.locator("#desk-send-reply").click()
        expect(page.locator("#desk-notice")).to_be_visible()
        expect(page.locator("#desk-work-order")).to_contain_text(scene.work_order_number)
        expect(page.locator("#desk-replies")).to_contain_text(scene.answer)

        # --- wrap-up: Alt+W, a reason from the tree, resolve ----------------------------------------
        page.keyboard.press("Alt+w")
        expect(page.locator("#desk-reason")).to_be_focused()
        page.locator("#desk-reason").select_option(str(scene.reason_id))
        page.locator("#desk-disposition").select_option("resolved")
        page.locator("#desk-fcr").check()
        page.locator("#desk-resolve").check()
        page.locator("#desk-wrap-up-submit").click()
        expect(page.locator("#desk-wrap-up-summary")).to_contain_text(scene.reason_name)
        expect(page.locator(f'#desk-contact-list li[data-interaction-id="{interaction_id}"]')).to_have_count(0)
        assert page.evaluate("window.__sameDocument === true")
        watch.assert_clean()
    finally:
        context.close()

    # --- the database holds the whole story ---------------------------------------------------------
    outcome = read_back(settings.resolved_database_url, interaction_id)
    assert outcome["wrap_up_ended_at"] is not None and outcome["ended_at"] is not None
    assert outcome["state"] == "done"
    assert outcome["customer_id"] == scene.customer_id
    assert outcome["contact_reason_id"] == scene.reason_id
    assert outcome["disposition"] == "resolved" and outcome["resolved_first_contact"] is True
    assert outcome["articles"] == [scene.article_id]
    assert outcome["work_order_id"] == scene.work_order_id
    assert outcome["work_order_status"] == "resolved"
    assert [(scene.answer in body, internal) for body, internal in outcome["comments"]] == [(True, False)]


def urlsplit_path(url: str) -> str:
    return urlsplit(url).path


def read_back(database_url: str, interaction_id: int) -> dict:
    """The stored outcome, read on a thread of its own with its own engine: Playwright's sync API holds
    an event loop in this thread, so the app's async session cannot be used here."""

    async def read() -> dict:
        engine = make_engine(database_url)
        try:
            return await _stored(make_session_factory(engine), interaction_id)
        finally:
            await engine.dispose()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, read()).result(timeout=60)


async def _stored(factory, interaction_id: int) -> dict:  # noqa: ANN001
    from kefu.interactions.models import Interaction, InteractionArticle
    from kefu.tickets.models import WorkOrder, WorkOrderComment

    async with factory() as db:
        interaction = await db.get(Interaction, interaction_id)
        articles = await db.scalars(
            select(InteractionArticle.article_id).where(InteractionArticle.interaction_id == interaction_id)
        )
        work_order = await db.get(WorkOrder, interaction.work_order_id) if interaction.work_order_id else None
        comments = (
            await db.execute(
                select(WorkOrderComment.body, WorkOrderComment.internal)
                .where(WorkOrderComment.work_order_id == interaction.work_order_id)
                .order_by(WorkOrderComment.id)
            )
        ).all()
        return {
            "state": interaction.state,
            "customer_id": interaction.customer_id,
            "ended_at": interaction.ended_at,
            "wrap_up_ended_at": interaction.wrap_up_ended_at,
            "contact_reason_id": interaction.contact_reason_id,
            "disposition": interaction.disposition,
            "resolved_first_contact": interaction.resolved_first_contact,
            "articles": list(articles),
            "work_order_id": interaction.work_order_id,
            "work_order_status": work_order.status if work_order else None,
            "comments": [(body, internal) for body, internal in comments],
        }


def test_contact_list_moves_with_j_and_k(browser: sync_api.Browser, live_server: LiveServer, scene: Scene) -> None:
    context = browser.new_context(locale="zh-CN", base_url=live_server.url)
    context.set_default_timeout(10_000)
    page = context.new_page()
    watch = Watch()
    watch.attach(context, page)
    try:
        ids = []
        for channel in ("chat", "email"):
            posted = httpx.post(
                f"{live_server.url}/api/v1/interactions",
                json={"channel": channel, "customer_id": scene.customer_id, "agent_id": scene.agent_id},
                headers={"Authorization": f"Bearer {scene.api_token}"},
                timeout=10,
            )
            assert posted.status_code == 201, posted.text
            ids.append(int(posted.json()["id"]))
        older, newer = ids
        sign_in(page, scene.agent_username)
        page.goto("/desk")
        page.wait_for_function("typeof window.htmx === 'object'")
        # Newest first, and the newest is in the pop panel.
        items = page.locator("#desk-contact-list li[data-interaction-id]")
        expect(items.first).to_have_attribute("data-interaction-id", str(newer))
        expect(page.locator(f'#desk-pop [data-interaction-id="{newer}"]')).to_be_visible()
        page.locator("body").click(position={"x": 5, "y": 5})
        page.keyboard.press("j")
        expect(page.locator(f'#desk-pop [data-interaction-id="{older}"]')).to_be_visible()
        expect(page.locator(f'#desk-contact-list li[data-interaction-id="{older}"]')).to_have_class(
            re.compile(r"\bselected\b")
        )
        assert urlsplit(page.url).query == f"interaction={older}"
        page.keyboard.press("k")
        expect(page.locator(f'#desk-pop [data-interaction-id="{newer}"]')).to_be_visible()
        # A click on a contact loads it in place too.
        page.locator(f'#desk-contact-list a[data-interaction-id="{older}"]').click()
        expect(page.locator(f'#desk-pop [data-interaction-id="{older}"]')).to_be_visible()
        watch.assert_clean()
    finally:
        context.close()
