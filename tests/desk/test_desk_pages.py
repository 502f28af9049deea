"""The agent desk and the customer 360 page, used the way a browser uses them (httpx against the app).

A contact for a known number is posted through the API for an agent; the desk shows it in the agent's
hands and pops the right customer (open work orders with SLA due, last contacts and the reason of the
last one, but never another team's restricted work order); the knowledge panel answers as the agent
types; the agent records the article, opens a work order with the reply, replies again, wraps up with a
reason and resolves. The 360 page shows profile, identities, one timeline across channels (paged),
open and past work orders and notes; a merged customer's page sends you to the survivor. Refusals
re-render instead of failing, and what users typed is escaped.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import select

from conftest import Factory, login, principal_of, unique
from kefu.customers import service as customers
from kefu.customers.models import Customer
from kefu.db.base import utcnow
from kefu.identity.models import User
from kefu.interactions import service as interactions
from kefu.interactions.models import Interaction, InteractionArticle
from kefu.knowledge import service as knowledge
from kefu.tickets import service as tickets
from kefu.tickets.models import WorkOrder, WorkOrderComment
from kefu.tickets.schemas import WorkOrderCreate


def random_mobile() -> tuple[str, str]:
    """A Chinese mobile number as a caller types it and as it is stored."""
    digits = "139" + "".join(random.choice("0123456789") for _ in range(8))
    return f"{digits[:3]} {digits[3:7]} {digits[7:]}", f"+86{digits}"


@dataclass
class World:
    agent: User
    other_agent: User
    supervisor: User
    customer_id: int
    customer_name: str
    phone_typed: str
    open_wo: WorkOrder
    hidden_wo: WorkOrder
    reason_id: int
    reason_name: str
    child_reason_id: int
    child_reason_name: str
    article_id: int
    article_word: str


async def make_world(app) -> World:  # noqa: ANN001
    make = Factory(app)
    team_a, team_b = await make.team(), await make.team()
    agent = await make.user("agent", team_ids=(team_a,))
    other_agent = await make.user("agent", team_ids=(team_b,))
    supervisor = await make.user("supervisor")
    km = await make.user("knowledge_manager")
    typed, stored = random_mobile()
    word = unique("deskkb")
    name = f"王小明 {unique('c')} <b>&"
    async with app.state.session_factory() as db, db.begin():
        customer = await customers.create_customer(
            db,
            principal_of(supervisor),
            display_name=name,
            language="zh-CN",
            preferred_channel="phone",
            attributes={"membership": "gold", "products": ["信用卡", "储蓄卡"]},
            identities=[customers.NewIdentity("phone", stored, label="mobile")],
        )
        open_wo = await tickets.create_work_order(
            db, principal_of(agent), WorkOrderCreate(title=f"账单疑问 {word}", customer_id=customer.id)
        )
        hidden_wo = await tickets.create_work_order(
            db,
            principal_of(other_agent),
            WorkOrderCreate(
                title=f"员工投诉 {word}", customer_id=customer.id, type="complaint", restricted=True, team_id=team_b
            ),
        )
        parent = await interactions.create_reason(db, principal_of(supervisor), code=unique("bill"), name="账单")
        child = await interactions.create_reason(
            db, principal_of(supervisor), code=unique("dispute"), name="扣费异议", parent_id=parent.reason.id
        )
        km_principal = principal_of(km)
        view = await knowledge.create_article(
            db,
            km_principal,
            knowledge.Content(title=f"{word} 信用卡年费怎么收", body_markdown="年费 **200** 元，刷满六次免年费。"),
            knowledge.Placement(),
        )
        await knowledge.publish(db, km_principal, app.state.settings, view.article.id)
    await app.state.kb_index.catch_up()
    return World(
        agent=agent,
        other_agent=other_agent,
        supervisor=supervisor,
        customer_id=customer.id,
        customer_name=name,
        phone_typed=typed,
        open_wo=open_wo,
        hidden_wo=hidden_wo,
        reason_id=parent.reason.id,
        reason_name="账单",
        child_reason_id=child.reason.id,
        child_reason_name="扣费异议",
        article_id=view.article.id,
        article_word=word,
    )


@pytest.fixture
async def world(app) -> World:  # noqa: ANN001
    return await make_world(app)


async def signed_in(app, user: User) -> httpx.AsyncClient:  # noqa: ANN001
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")
    await login(client, user)
    return client


def escaped(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


async def post_contact(client: httpx.AsyncClient, world: World, agent_id: int, **extra: object) -> int:
    response = await client.post(
        "/api/v1/interactions",
        json={"channel": "phone", "identity": {"kind": "phone", "value": world.phone_typed}, "agent_id": agent_id}
        | extra,
    )
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


async def test_contact_pops_the_customer_and_is_handled_to_the_end(app, world: World) -> None:  # noqa: ANN001
    agent = await signed_in(app, world.agent)
    try:
        # An earlier contact with a reason: the pop shows it as "the reason of the last contact".
        earlier = await post_contact(
            agent, world, world.agent.id, channel="email", identity=None, customer_id=world.customer_id
        )
        async with app.state.session_factory() as db, db.begin():
            await interactions.update_wrap_up(
                db, principal_of(world.agent), earlier, {"contact_reason_id": world.child_reason_id}
            )
        interaction_id = await post_contact(agent, world, world.agent.id, subject="来电")

        desk = await agent.get("/desk", params={"interaction": interaction_id})
        assert desk.status_code == 200, desk.text[:500]
        page = desk.text
        assert 'id="desk-contact-list"' in page
        assert f'data-interaction-id="{interaction_id}"' in page
        assert escaped(world.customer_name) in page and world.customer_name not in page

        pop = await agent.get(f"/desk/pop/{interaction_id}")
        assert pop.status_code == 200
        html = pop.text
        assert f'data-interaction-id="{interaction_id}"' in html
        assert escaped(world.customer_name) in html
        assert "+86" in html  # the identity as stored
        assert world.open_wo.number in html
        assert world.hidden_wo.number not in html, "another team's restricted work order leaked into the pop"
        last_reason = re.search(r'id="desk-last-reason">(.*?)</p>', html, re.S)
        assert last_reason and world.child_reason_name in last_reason.group(1)
        assert f'<option value="{world.child_reason_id}"' in html  # the reason tree
        # No work order yet: the reply goes on one of the customer's open ones, or a new one.
        target = re.search(r'<select name="work_order_id".*?</select>', html, re.S).group(0)
        assert f'value="{world.open_wo.id}"' in target and 'value="new"' in target
        assert f'value="{world.hidden_wo.id}"' not in target

        # The knowledge panel answers as the agent types, with the answer text to insert.
        kb = await agent.get("/desk/kb", params={"q": world.article_word, "interaction_id": str(interaction_id)})
        assert kb.status_code == 200
        assert f'data-article-id="{world.article_id}"' in kb.text
        assert "年费 200 元" in kb.text
        for odd in ("", " ", "x" * 500, "a\x00b"):
            assert (await agent.get("/desk/kb", params={"q": odd})).status_code == 200

        used = await agent.post(f"/desk/interactions/{interaction_id}/articles", data={"article_id": world.article_id})
        assert used.status_code == 204, used.text
        again = await agent.post(f"/desk/interactions/{interaction_id}/articles", data={"article_id": world.article_id})
        assert again.status_code == 204
        kb = await agent.get("/desk/kb", params={"q": world.article_word, "interaction_id": str(interaction_id)})
        assert "desk-hit used" in kb.text
        bad = await agent.post(f"/desk/interactions/{interaction_id}/articles", data={"article_id": "nope"})
        assert bad.status_code == 422

        # The reply opens a work order for the customer (htmx: the pop panel comes back).
        missing = await agent.post(
            f"/desk/interactions/{interaction_id}/reply",
            data={"work_order_id": "new", "type": "inquiry", "title": "", "body": "您好"},
            headers={"HX-Request": "true"},
        )
        assert missing.status_code == 422 and 'id="desk-errors"' in missing.text
        assert "您好" in missing.text  # the reply is kept
        hidden = await agent.post(
            f"/desk/interactions/{interaction_id}/reply",
            data={"work_order_id": world.hidden_wo.id, "body": "您好"},
            headers={"HX-Request": "true"},
        )
        assert hidden.status_code == 404  # another team's restricted work order is not there to reply on
        created = await agent.post(
            f"/desk/interactions/{interaction_id}/reply",
            data={"work_order_id": "new", "type": "inquiry", "title": "年费咨询", "body": "年费 200 元。"},
            headers={"HX-Request": "true"},
        )
        assert created.status_code == 200, created.text[:500]
        assert 'id="desk-notice"' in created.text
        assert f'action="/desk/interactions/{interaction_id}/reply"' in created.text

        # A second reply, as a plain form post: redirected back to the desk.
        replied = await agent.post(f"/desk/interactions/{interaction_id}/reply", data={"body": "还有别的问题吗？"})
        assert replied.status_code == 303
        assert replied.headers["location"] == f"/desk?interaction={interaction_id}&done=replied"
        assert "还有别的问题吗" in (await agent.get(replied.headers["location"])).text

        # Wrap-up: a reason is required; then the contact ends, wrap-up ends and the work order resolves.
        refused = await agent.post(f"/desk/interactions/{interaction_id}/wrap-up", data={"contact_reason_id": ""})
        assert refused.status_code == 422
        done = await agent.post(
            f"/desk/interactions/{interaction_id}/wrap-up",
            data={
                "contact_reason_id": world.child_reason_id,
                "disposition": "resolved",
                "resolved_first_contact": "1",
                "resolve_work_order": "1",
            },
        )
        assert done.status_code == 303, done.text[:500]
        async with app.state.session_factory() as db:
            interaction = await db.get(Interaction, interaction_id)
            assert interaction.customer_id == world.customer_id
            assert interaction.answered_at is not None and interaction.ended_at is not None
            assert interaction.wrap_up_ended_at is not None
            assert interaction.state == "done"
            assert interaction.contact_reason_id == world.child_reason_id
            assert interaction.disposition == "resolved" and interaction.resolved_first_contact is True
            articles = (
                await db.scalars(
                    select(InteractionArticle.article_id).where(InteractionArticle.interaction_id == interaction_id)
                )
            ).all()
            assert list(articles) == [world.article_id]
            work_order = await db.get(WorkOrder, interaction.work_order_id)
            assert work_order.status == "resolved" and work_order.customer_id == world.customer_id
            replies = (
                await db.scalars(select(WorkOrderComment).where(WorkOrderComment.work_order_id == work_order.id))
            ).all()
            assert [(c.body, c.internal) for c in replies] == [("年费 200 元。", False), ("还有别的问题吗？", False)]

        # Done: no longer in the agent's hands; the pop shows the wrap-up summary.
        desk = await agent.get("/desk")
        in_hand = re.search(r'<ul id="desk-contact-list".*?</ul>', desk.text, re.S).group(0)
        assert f'data-interaction-id="{interaction_id}"' not in in_hand
        pop = await agent.get(f"/desk/pop/{interaction_id}")
        assert 'id="desk-wrap-up-summary"' in pop.text and world.child_reason_name in pop.text
    finally:
        await agent.aclose()


async def test_desk_lists_contacts_in_hand_newest_first(app, world: World) -> None:  # noqa: ANN001
    agent = await signed_in(app, world.agent)
    try:
        first = await post_contact(agent, world, world.agent.id)
        second = await post_contact(agent, world, world.agent.id, channel="chat", identity=None)
        someone_elses = await post_contact(agent, world, world.other_agent.id)
        page = (await agent.get("/desk")).text
        contacts = re.search(r'<ul id="desk-contact-list".*?</ul>', page, re.S).group(0)
        ids = [int(i) for i in re.findall(r'<li class="desk-contact[^"]*" data-interaction-id="(\d+)"', contacts)]
        assert ids.index(second) < ids.index(first)
        assert someone_elses not in ids
        # With nothing chosen, the newest contact pops.
        assert re.search(rf'class="desk-pop-inner" data-interaction-id="{second}"', page)
    finally:
        await agent.aclose()


async def test_customer_360(app, world: World) -> None:  # noqa: ANN001
    agent = await signed_in(app, world.agent)
    supervisor = await signed_in(app, world.supervisor)
    try:
        await post_contact(agent, world, world.agent.id)
        async with app.state.session_factory() as db, db.begin():
            closed = await tickets.create_work_order(
                db, principal_of(world.agent), WorkOrderCreate(title="已解决的旧工单", customer_id=world.customer_id)
            )
            await tickets.set_status(db, principal_of(world.agent), closed.id, "resolved")
        page = await agent.get(f"/customers/{world.customer_id}")
        assert page.status_code == 200, page.text[:500]
        html = page.text
        assert escaped(world.customer_name) in html and world.customer_name not in html
        assert "membership" in html and "gold" in html and "信用卡, 储蓄卡" in html
        assert world.phone_typed.replace(" ", "")[-4:] in html
        open_table = re.search(r'id="c360-open-work-orders".*?</table>', html, re.S).group(0)
        past_table = re.search(r'id="c360-past-work-orders".*?</table>', html, re.S).group(0)
        assert world.open_wo.number in open_table and closed.number in past_table
        assert world.hidden_wo.number not in html, "another team's restricted work order is listed for an agent"
        assert 'id="c360-timeline"' in html and "desk-channel-phone" in html

        # A supervisor sees the restricted one.
        assert world.hidden_wo.number in (await supervisor.get(f"/customers/{world.customer_id}")).text
        # ...and its owner team's agent too.
        other = await signed_in(app, world.other_agent)
        try:
            assert world.hidden_wo.number in (await other.get(f"/customers/{world.customer_id}")).text
        finally:
            await other.aclose()

        # Notes: added through the form, escaped; an empty one is refused with the page shown again.
        note = "<i>客户</i> 希望晚上回电"
        added = await agent.post(f"/customers/{world.customer_id}/notes", data={"body": note})
        assert added.status_code == 303 and added.headers["location"] == f"/customers/{world.customer_id}?done=noted"
        html = (await agent.get(added.headers["location"])).text
        assert escaped(note) in html and note not in html
        empty = await agent.post(f"/customers/{world.customer_id}/notes", data={"body": "   "})
        assert empty.status_code == 422 and 'role="alert"' in empty.text

        assert (await agent.get("/customers/999999999")).status_code == 404
        assert (await agent.get(f"/customers/{world.customer_id}", params={"before": "junk"})).status_code == 422
    finally:
        await agent.aclose()
        await supervisor.aclose()


async def test_360_timeline_is_paged_newest_first(app, world: World) -> None:  # noqa: ANN001
    from kefu.desk.service import TIMELINE_PAGE

    start = utcnow() - timedelta(days=3)
    async with app.state.session_factory() as db, db.begin():
        principal = principal_of(world.agent)
        for n in range(TIMELINE_PAGE + 3):
            await interactions.create_interaction(
                db,
                principal,
                interactions.NewInteraction(
                    channel=("phone", "email", "chat")[n % 3],
                    customer_id=world.customer_id,
                    subject=f"subject-{n:03d}",
                    arrived_at=start + timedelta(minutes=n),
                ),
            )
    agent = await signed_in(app, world.agent)
    try:
        first = (await agent.get(f"/customers/{world.customer_id}")).text
        subjects = re.findall(r"subject-(\d{3})", first)
        assert len(subjects) == TIMELINE_PAGE
        assert subjects == sorted(subjects, reverse=True) and subjects[0] == f"{TIMELINE_PAGE + 2:03d}"
        older = re.search(r'id="c360-older" href="([^"]+)"', first)
        assert older, "no link to older contacts"
        second = (await agent.get(older.group(1).replace("&amp;", "&"))).text
        rest = re.findall(r"subject-(\d{3})", second)
        assert rest == ["002", "001", "000"]
        assert 'id="c360-older"' not in second
    finally:
        await agent.aclose()


async def test_merged_customer_page_redirects_to_the_survivor(app, world: World) -> None:  # noqa: ANN001
    async with app.state.session_factory() as db, db.begin():
        principal = principal_of(world.supervisor)
        twin = await customers.create_customer(db, principal, display_name=f"twin {unique('c')}")
        await customers.merge_customers(db, principal, world.customer_id, twin.id)
    agent = await signed_in(app, world.agent)
    try:
        response = await agent.get(f"/customers/{twin.id}")
        assert response.status_code == 303
        assert response.headers["location"] == f"/customers/{world.customer_id}"
    finally:
        await agent.aclose()


async def test_who_may_use_the_desk_and_the_360_page(app, world: World) -> None:  # noqa: ANN001
    make = Factory(app)
    customer_user = await make.user("customer")
    km = await make.user("knowledge_manager")
    agent = await signed_in(app, world.agent)
    try:
        interaction_id = await post_contact(agent, world, world.agent.id)
    finally:
        await agent.aclose()
    for user in (customer_user, km):
        client = await signed_in(app, user)
        try:
            assert (await client.get("/desk")).status_code == 403
            assert (await client.get(f"/desk/pop/{interaction_id}")).status_code == 404
            assert (await client.get(f"/customers/{world.customer_id}")).status_code == 404
            refused = await client.post(f"/customers/{world.customer_id}/notes", data={"body": "x"})
            assert refused.status_code == 403
        finally:
            await client.aclose()
    anonymous = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")
    try:
        response = await anonymous.get("/desk", headers={"Accept": "text/html"})
        assert response.status_code == 303 and response.headers["location"].startswith("/login")
    finally:
        await anonymous.aclose()


async def test_pop_of_a_contact_on_a_hidden_work_order_is_not_found(app, world: World) -> None:  # noqa: ANN001
    async with app.state.session_factory() as db, db.begin():
        hidden_contact, _ = await interactions.create_interaction(
            db,
            principal_of(world.supervisor),
            interactions.NewInteraction(
                channel="phone", customer_id=world.customer_id, work_order_id=world.hidden_wo.id
            ),
        )
    agent = await signed_in(app, world.agent)
    try:
        assert (await agent.get(f"/desk/pop/{hidden_contact.interaction.id}")).status_code == 404
        refused = await agent.post(f"/desk/interactions/{hidden_contact.interaction.id}/reply", data={"body": "hello"})
        assert refused.status_code == 404
        timeline = (await agent.get(f"/customers/{world.customer_id}")).text
        assert f'data-interaction-id="{hidden_contact.interaction.id}"' not in timeline
    finally:
        await agent.aclose()


async def test_customer_of_the_pop_is_the_survivor(app, world: World) -> None:  # noqa: ANN001
    """A contact recorded for a customer that was merged later pops the survivor."""
    async with app.state.session_factory() as db, db.begin():
        principal = principal_of(world.supervisor)
        twin = await customers.create_customer(db, principal, display_name=f"twin {unique('c')}")
        contact, _ = await interactions.create_interaction(
            db,
            principal_of(world.agent),
            interactions.NewInteraction(channel="chat", customer_id=twin.id, agent_id=world.agent.id),
        )
        await customers.merge_customers(db, principal, world.customer_id, twin.id)
        assert (await db.get(Customer, twin.id)).merged_into_id == world.customer_id
    agent = await signed_in(app, world.agent)
    try:
        pop = (await agent.get(f"/desk/pop/{contact.interaction.id}")).text
        assert escaped(world.customer_name) in pop
    finally:
        await agent.aclose()
