"""Interactions through the API: creation with identity resolution, duplicate delivery, the write-once
timeline and its order rules, wrap-up, articles used, visibility, and listing."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest
from interaction_fixtures import customer_with_phone, external_id, new_mobile, reason, work_order

from conftest import is_postgres, login, signed_in_clients

API = "/api/v1/interactions"


def iso(moment: datetime) -> str:
    return moment.isoformat()


@pytest.fixture
async def agent_client(client, make):  # noqa: ANN001, ANN201
    agent = await make.user("agent")
    await login(client, agent)
    client.agent = agent
    return client


# --- creating ------------------------------------------------------------------------------------
@pytest.mark.parametrize("typed", ["138 {a} {b}", "+86 138-{a}-{b}", "0086138{a}{b}", "(+86)138{a}{b}"])
async def test_a_known_number_in_any_format_finds_the_customer(app, agent_client, typed: str) -> None:  # noqa: ANN001
    # A number of its own: other tests (the desk's browser test) use the usual example number.
    stored = new_mobile()
    digits = stored.removeprefix("+86138")
    typed = typed.format(a=digits[:4], b=digits[4:])
    customer_id = await customer_with_phone(app, stored, name="王小明")
    response = await agent_client.post(
        API, json={"channel": "phone", "external_id": external_id(), "identity": {"kind": "phone", "value": typed}}
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["customer_id"] == customer_id
    assert body["customer_name"] == "王小明"
    assert body["identity"] == {"kind": "phone", "value": stored}
    assert body["state"] == "arrived"
    assert body["created_by_id"] == agent_client.agent.id


async def test_an_unknown_number_makes_a_customer_only_when_asked(agent_client) -> None:  # noqa: ANN001
    number = new_mobile()
    national = number.removeprefix("+86")
    unknown = await agent_client.post(API, json={"channel": "sms", "identity": {"kind": "phone", "value": national}})
    assert unknown.status_code == 201, unknown.text
    assert unknown.json()["customer_id"] is None
    assert unknown.json()["identity"]["value"] == number

    made = await agent_client.post(
        API, json={"channel": "phone", "identity": {"kind": "phone", "value": national}, "create_customer": True}
    )
    assert made.status_code == 201, made.text
    customer_id = made.json()["customer_id"]
    assert customer_id is not None
    again = await agent_client.post(
        API, json={"channel": "phone", "identity": {"kind": "phone", "value": number}, "create_customer": True}
    )
    assert again.json()["customer_id"] == customer_id  # one number, one customer


async def test_customer_id_may_be_given_instead_of_an_identity(app, agent_client) -> None:  # noqa: ANN001
    customer_id = await customer_with_phone(app, new_mobile())
    response = await agent_client.post(API, json={"channel": "email", "customer_id": customer_id, "subject": "发票"})
    assert response.status_code == 201, response.text
    assert response.json()["customer_id"] == customer_id
    assert response.json()["subject"] == "发票"
    missing = await agent_client.post(API, json={"channel": "email", "customer_id": 987_654_321})
    assert missing.status_code == 422


async def test_the_same_delivery_is_stored_once(app, agent_client) -> None:  # noqa: ANN001
    from tests.routing.routing_support import make_queue

    billing = await make_queue(app)
    payload = {"channel": "phone", "external_id": external_id(), "queue": billing.code}
    first = await agent_client.post(API, json=payload)
    second = await agent_client.post(API, json={**payload, "queue": "other"})
    assert first.status_code == 201 and second.status_code == 200, second.text
    assert second.json()["id"] == first.json()["id"]
    assert second.json()["queue"] == billing.code  # the stored row, not the second delivery
    assert second.json()["state"] == "queued"
    # The same id on another channel is another contact.
    other_channel = await agent_client.post(API, json={**payload, "channel": "chat", "queue": None})
    assert other_channel.status_code == 201
    assert other_channel.json()["id"] != first.json()["id"]


async def test_an_unknown_queue_is_refused_and_nothing_is_written(app, agent_client) -> None:  # noqa: ANN001
    from sqlalchemy import func, select

    from kefu.interactions.models import Interaction

    async with app.state.session_factory() as db:
        before = await db.scalar(select(func.count()).select_from(Interaction))
    response = await agent_client.post(API, json={"channel": "phone", "external_id": external_id(), "queue": "nope"})
    assert response.status_code == 422 and response.json()["error"]["details"]["field"] == "queue"
    async with app.state.session_factory() as db:
        assert await db.scalar(select(func.count()).select_from(Interaction)) == before


async def test_concurrent_duplicate_deliveries_make_one_row(app, make) -> None:  # noqa: ANN001
    """Racing deliveries of one contact (and one unknown number): the unique constraint decides, no 500."""
    users = {f"a{i}": await make.user("agent") for i in range(6)}
    payload = {
        "channel": "phone",
        "external_id": external_id(),
        "identity": {"kind": "phone", "value": new_mobile()},
        "create_customer": True,
    }
    async with signed_in_clients(app, users) as clients:
        responses = await asyncio.gather(*(c.post(API, json=payload) for c in clients.values()))
        statuses = sorted(r.status_code for r in responses)
        assert statuses == [200] * 5 + [201], [r.text for r in responses]
        assert len({r.json()["id"] for r in responses}) == 1
        assert len({r.json()["customer_id"] for r in responses}) == 1
        listed = await clients["a0"].get(API, params={"customer_id": responses[0].json()["customer_id"]})
        assert len(listed.json()["items"]) == 1


@pytest.mark.skipif(not is_postgres(), reason="many writers at once need PostgreSQL")
async def test_concurrent_deliveries_of_many_contacts_on_postgresql(app, make) -> None:  # noqa: ANN001
    users = {f"b{i}": await make.user("agent") for i in range(4)}
    ids = [external_id() for _ in range(5)]
    async with signed_in_clients(app, users) as clients:
        calls = [c.post(API, json={"channel": "chat", "external_id": x}) for x in ids for c in clients.values()]
        responses = await asyncio.gather(*calls)
    assert all(r.status_code in (200, 201) for r in responses), [r.text for r in responses if r.status_code >= 300]
    assert sum(r.status_code == 201 for r in responses) == len(ids)
    assert len({r.json()["id"] for r in responses}) == len(ids)


async def test_agent_must_be_an_active_staff_member(make, agent_client) -> None:  # noqa: ANN001
    good = await make.user("agent")
    customer_user = await make.user("customer")
    ok = await agent_client.post(API, json={"channel": "phone", "agent_id": good.id})
    assert ok.status_code == 201 and ok.json()["agent_id"] == good.id
    assert ok.json()["agent_name"] == good.display_name
    refused = await agent_client.post(API, json={"channel": "phone", "agent_id": customer_user.id})
    assert refused.status_code == 422
    nobody = await agent_client.post(API, json={"channel": "phone", "agent_id": 987_654_321})
    assert nobody.status_code == 422


async def test_a_disabled_agent_cannot_be_given_a_contact(app, make, agent_client) -> None:  # noqa: ANN001
    from kefu.core.audit import Actor
    from kefu.identity import service as identity

    agent = await make.user("agent")
    async with app.state.session_factory() as db, db.begin():
        await identity.set_active(db, Actor.system("test"), await identity.get_user(db, agent.id), False)
    refused = await agent_client.post(API, json={"channel": "phone", "agent_id": agent.id})
    assert refused.status_code == 422, refused.text


async def test_arrival_cannot_be_in_the_future_or_without_a_zone(agent_client) -> None:  # noqa: ANN001
    future = datetime.now(UTC) + timedelta(hours=1)
    assert (await agent_client.post(API, json={"channel": "phone", "arrived_at": iso(future)})).status_code == 422
    naive = "2024-05-01T10:00:00"
    assert (await agent_client.post(API, json={"channel": "phone", "arrived_at": naive})).status_code == 422
    past = datetime.now(UTC) - timedelta(minutes=3)
    ok = await agent_client.post(API, json={"channel": "phone", "arrived_at": iso(past)})
    assert ok.status_code == 201
    assert datetime.fromisoformat(ok.json()["arrived_at"]) == past


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"channel": "pigeon"},
        {"channel": "phone", "direction": "sideways"},
        {"channel": "phone", "bogus": 1},
        {"channel": "phone", "identity": {"kind": "fax", "value": "1"}},
        {"channel": "phone", "identity": {"kind": "phone", "value": "not a number"}},
        {"channel": "phone", "identity": {"kind": "email", "value": "nobody"}},
        {"channel": "phone", "external_id": "x" * 256},
        {"channel": "phone", "external_id": "a\x00b"},
        {"channel": "phone", "subject": "x" * 301},
        {"channel": "phone", "team_id": 0},
        {"channel": "phone", "team_id": 2**63},
        {"channel": "phone", "team_id": 987_654_321},
        {"channel": "phone", "work_order_id": 987_654_321},
        {"channel": "phone", "create_customer": True},
        {"channel": "phone", "arrived_at": "0001-01-01T00:00:00+05:00"},
        {"channel": "phone", "arrived_at": "yesterday"},
    ],
)
async def test_bad_input_on_create_is_a_clear_4xx(agent_client, body: dict) -> None:  # noqa: ANN001
    response = await agent_client.post(API, json=body)
    assert 400 <= response.status_code < 500 and response.status_code != 404, response.text
    assert response.json()["error"]["code"] in ("invalid", "malformed_json")


# --- the timeline ----------------------------------------------------------------------------------
async def _new(client, **extra) -> dict:  # noqa: ANN001
    arrived = datetime.now(UTC) - timedelta(minutes=10)
    response = await client.post(API, json={"channel": "phone", "arrived_at": iso(arrived), **extra})
    assert response.status_code == 201, response.text
    return response.json()


async def _event(client, interaction_id: int, event: str, at: datetime | None = None, **extra):  # noqa: ANN001, ANN202
    body = {"event": event, **extra}
    if at is not None:
        body["at"] = iso(at)
    return await client.post(f"{API}/{interaction_id}/events", json=body)


async def test_the_timeline_is_written_once_and_the_state_follows(make, agent_client) -> None:  # noqa: ANN001
    handler = await make.user("agent")
    row = await _new(agent_client)
    start = datetime.fromisoformat(row["arrived_at"])
    steps = [
        ("queued", 5, "queued", {}),
        ("offered", 20, "offered", {"agent_id": handler.id}),
        ("answered", 25, "answered", {}),
        ("ended", 200, "wrap_up", {}),
        ("wrap_up_ended", 260, "done", {}),
    ]
    for event, seconds, state, extra in steps:
        at = start + timedelta(seconds=seconds)
        response = await _event(agent_client, row["id"], event, at, **extra)
        assert response.status_code == 200, response.text
        assert response.json()["state"] == state
        assert datetime.fromisoformat(response.json()[f"{event}_at"]) == at
        # The same fact again (a channel retrying): no change, no error.
        again = await _event(agent_client, row["id"], event, at)
        assert again.status_code == 200 and again.json() == response.json()
        # Another time for a fact already recorded: history is never rewritten.
        moved = await _event(agent_client, row["id"], event, at + timedelta(seconds=1))
        assert moved.status_code == 409, moved.text
        assert datetime.fromisoformat(moved.json()["error"]["details"]["at"]) == at
    final = (await agent_client.get(f"{API}/{row['id']}")).json()
    assert final["agent_id"] == handler.id and final["state"] == "done"


async def test_a_fact_without_a_time_is_now(agent_client) -> None:  # noqa: ANN001
    row = await _new(agent_client)
    before = datetime.now(UTC)
    response = await _event(agent_client, row["id"], "queued")
    assert response.status_code == 200
    assert before <= datetime.fromisoformat(response.json()["queued_at"]) <= datetime.now(UTC)
    # "now" a second time is another time: refused, the first stays.
    assert (await _event(agent_client, row["id"], "queued")).status_code == 409


async def test_order_rules(make, agent_client) -> None:  # noqa: ANN001
    agent = await make.user("agent")
    row = await _new(agent_client)
    start = datetime.fromisoformat(row["arrived_at"])
    at = lambda s: start + timedelta(seconds=s)  # noqa: E731

    # Nothing before the contact arrived; nothing in the future.
    assert (await _event(agent_client, row["id"], "queued", at(-1))).status_code == 422
    future = datetime.now(UTC) + timedelta(minutes=5)
    assert (await _event(agent_client, row["id"], "queued", future)).status_code == 422
    # An inbound contact ends only after it was answered; wrap-up ends only after the end.
    assert (await _event(agent_client, row["id"], "ended", at(5))).status_code == 422
    assert (await _event(agent_client, row["id"], "wrap_up_ended", at(5))).status_code == 422
    # Offering or answering needs an agent; agent_id belongs to offered/answered only.
    assert (await _event(agent_client, row["id"], "answered", at(5))).status_code == 422
    assert (await _event(agent_client, row["id"], "queued", at(5), agent_id=agent.id)).status_code == 422
    assert (await _event(agent_client, row["id"], "queued", at(5))).status_code == 200
    # Offered not before queued.
    assert (await _event(agent_client, row["id"], "offered", at(4), agent_id=agent.id)).status_code == 422
    assert (await _event(agent_client, row["id"], "offered", at(6), agent_id=agent.id)).status_code == 200
    # Abandoned before answered; then nothing more is answered.
    assert (await _event(agent_client, row["id"], "abandoned", at(9))).json()["state"] == "abandoned"
    assert (await _event(agent_client, row["id"], "answered", at(10))).status_code == 422
    assert (await _event(agent_client, row["id"], "ended", at(10))).status_code == 422

    # Answered straight from arrival (no queue); then it cannot be abandoned.
    direct = await _new(agent_client, agent_id=agent.id)
    start = datetime.fromisoformat(direct["arrived_at"])
    assert (await _event(agent_client, direct["id"], "answered", start + timedelta(seconds=3))).status_code == 200
    abandoned = await _event(agent_client, direct["id"], "abandoned", start + timedelta(seconds=4))
    assert abandoned.status_code == 422
    assert (await _event(agent_client, direct["id"], "ended", start + timedelta(seconds=2))).status_code == 422
    ended = await _event(agent_client, direct["id"], "ended", start + timedelta(seconds=30))
    assert ended.json()["state"] == "wrap_up"
    # After the end, nothing but the end of wrap-up.
    assert (await _event(agent_client, direct["id"], "queued", start + timedelta(seconds=40))).status_code == 422
    early = await _event(agent_client, direct["id"], "wrap_up_ended", start + timedelta(seconds=29))
    assert early.status_code == 422


async def test_an_outbound_contact_may_end_without_an_answer(make, agent_client) -> None:  # noqa: ANN001
    agent = await make.user("agent")
    row = await _new(agent_client, direction="outbound", agent_id=agent.id)
    start = datetime.fromisoformat(row["arrived_at"])
    response = await _event(agent_client, row["id"], "ended", start + timedelta(seconds=40))
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "wrap_up"


@pytest.mark.parametrize(
    "body",
    [
        {"event": "teleported"},
        {"event": "queued", "at": "2024-01-01T00:00:00"},
        {"event": "queued", "at": "0001-01-01T00:00:00+05:00"},
        {"event": "queued", "extra": True},
        {"event": "offered", "agent_id": -1},
        {"event": "offered", "agent_id": 987_654_321},
    ],
)
async def test_bad_events_are_refused(agent_client, body: dict) -> None:  # noqa: ANN001
    row = await _new(agent_client)
    response = await agent_client.post(f"{API}/{row['id']}/events", json=body)
    assert response.status_code == 422, response.text
    assert (await agent_client.get(f"{API}/{row['id']}")).json()["state"] == "arrived"


async def test_events_on_an_unknown_interaction_are_404(agent_client) -> None:  # noqa: ANN001
    assert (await _event(agent_client, 987_654_321, "queued")).status_code == 404
    assert (await agent_client.get(f"{API}/987654321")).status_code == 404
    assert (await agent_client.patch(f"{API}/987654321", json={"summary": "x"})).status_code == 404


# --- wrap-up and articles ------------------------------------------------------------------------------
async def test_wrap_up_fields(app, agent_client) -> None:  # noqa: ANN001
    row = await _new(agent_client)
    parent = await reason(app)
    child = await reason(app, parent_id=parent)
    retired = await reason(app, active=False)
    order = await work_order(app)
    response = await agent_client.patch(
        f"{API}/{row['id']}",
        json={
            "contact_reason_id": child,
            "disposition": "resolved",
            "resolved_first_contact": True,
            "summary": "客户询问账单\n已解释",
            "work_order_id": order,
            "subject": "账单",
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["contact_reason_id"] == child and body["contact_reason_name"] == "原因"
    assert (body["disposition"], body["resolved_first_contact"], body["work_order_id"]) == ("resolved", True, order)
    # Only what is sent changes; null clears.
    cleared = await agent_client.patch(f"{API}/{row['id']}", json={"disposition": None})
    assert cleared.json()["disposition"] is None and cleared.json()["summary"] == "客户询问账单\n已解释"
    for bad in (
        {"contact_reason_id": retired},
        {"contact_reason_id": 987_654_321},
        {"disposition": "happy"},
        {"work_order_id": 987_654_321},
        {"state": "done"},
        {"answered_at": "2024-01-01T00:00:00+00:00"},
        {"summary": "x" * 10_001},
    ):
        refused = await agent_client.patch(f"{API}/{row['id']}", json=bad)
        assert refused.status_code == 422, (bad, refused.text)
    assert (await agent_client.get(f"{API}/{row['id']}")).json()["contact_reason_id"] == child


async def test_articles_used_are_noted_once(app, make, agent_client) -> None:  # noqa: ANN001
    from conftest import principal_of
    from kefu.knowledge import service as knowledge
    from kefu.knowledge.service import Content, Placement

    manager = await make.user("knowledge_manager")
    async with app.state.session_factory() as db, db.begin():
        view = await knowledge.create_article(
            db, principal_of(manager), Content(title="退款流程", body_markdown="步骤"), Placement()
        )
        draft_id = view.article.id
    row = await _new(agent_client)
    # A draft someone else is writing is not visible to the agent.
    hidden = await agent_client.post(f"{API}/{row['id']}/articles", json={"article_id": draft_id})
    assert hidden.status_code == 422, hidden.text
    async with app.state.session_factory() as db, db.begin():
        await knowledge.publish(db, principal_of(manager), app.state.settings, draft_id)
    first = await agent_client.post(f"{API}/{row['id']}/articles", json={"article_id": draft_id})
    assert first.status_code == 201, first.text
    again = await agent_client.post(f"{API}/{row['id']}/articles", json={"article_id": draft_id})
    assert again.status_code == 200
    assert again.json()["article_ids"] == [draft_id]
    assert (await agent_client.get(f"{API}/{row['id']}")).json()["article_ids"] == [draft_id]


# --- visibility -------------------------------------------------------------------------------------
async def test_interactions_of_restricted_work_orders_are_hidden(app, make) -> None:  # noqa: ANN001
    team = await make.team()
    users = {
        "outsider": await make.user("agent"),
        "member": await make.user("agent", team_ids=(team,)),
        "supervisor": await make.user("supervisor"),
    }
    customer_id = await customer_with_phone(app, new_mobile())
    restricted = await work_order(app, restricted=True, team_id=team)
    async with signed_in_clients(app, users) as c:
        # An agent outside the team cannot even link a contact to it.
        refused = await c["outsider"].post(API, json={"channel": "phone", "work_order_id": restricted})
        assert refused.status_code == 422
        made = await c["member"].post(
            API, json={"channel": "phone", "customer_id": customer_id, "work_order_id": restricted}
        )
        assert made.status_code == 201, made.text
        secret = made.json()["id"]
        public = (await c["member"].post(API, json={"channel": "chat", "customer_id": customer_id})).json()["id"]

        def ids(response) -> set[int]:  # noqa: ANN001
            return {item["id"] for item in response.json()["items"]}

        for who in ("member", "supervisor"):
            assert ids(await c[who].get(API, params={"customer_id": customer_id})) == {secret, public}
            assert (await c[who].get(f"{API}/{secret}")).status_code == 200
        outsider = c["outsider"]
        assert ids(await outsider.get(API, params={"customer_id": customer_id})) == {public}
        assert ids(await outsider.get(API, params={"work_order_id": restricted})) == set()
        assert (await outsider.get(f"{API}/{secret}")).status_code == 404
        assert (await outsider.post(f"{API}/{secret}/events", json={"event": "queued"})).status_code == 404
        assert (await outsider.patch(f"{API}/{secret}", json={"summary": "x"})).status_code == 404
        # A redelivery of the hidden contact does not reveal it either.
        external = external_id()
        await c["member"].post(API, json={"channel": "email", "external_id": external, "work_order_id": restricted})
        again = await outsider.post(API, json={"channel": "email", "external_id": external})
        assert again.status_code == 409 and "work_order_id" not in again.text


async def test_customers_cannot_use_the_interaction_api(client, make) -> None:  # noqa: ANN001
    await login(client, await make.user("customer"))
    assert (await client.get(API)).status_code == 403
    assert (await client.post(API, json={"channel": "phone"})).status_code == 403


# --- listing ----------------------------------------------------------------------------------------
async def test_list_is_newest_first_with_a_stable_cursor(app, agent_client) -> None:  # noqa: ANN001
    customer_id = await customer_with_phone(app, new_mobile())
    base = datetime.now(UTC) - timedelta(hours=1)
    made = []
    for minutes in (0, 5, 5, 10, 20):  # two at the same instant: the id breaks the tie
        row = await agent_client.post(
            API,
            json={"channel": "phone", "customer_id": customer_id, "arrived_at": iso(base + timedelta(minutes=minutes))},
        )
        made.append(row.json()["id"])
    seen: list[int] = []
    cursor = None
    while True:
        params = {"customer_id": customer_id, "limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await agent_client.get(API, params=params)).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [made[4], made[3], made[2], made[1], made[0]]
    recent = await agent_client.get(
        API, params={"customer_id": customer_id, "since": iso(base + timedelta(minutes=10))}
    )
    assert [item["id"] for item in recent.json()["items"]] == [made[4], made[3]]
    by_channel = await agent_client.get(API, params={"customer_id": customer_id, "channel": "chat"})
    assert by_channel.json()["items"] == []
    by_state = await agent_client.get(API, params={"customer_id": customer_id, "state": "arrived", "limit": 200})
    assert len(by_state.json()["items"]) == 5


@pytest.mark.parametrize(
    "params",
    [
        {"cursor": "junk"},
        {"cursor": "2024-01-01T00:00:00~1"},
        {"cursor": "0001-01-01T00:00:00+05:00~1"},
        {"cursor": "2024-01-01T00:00:00+00:00~99999999999999999999"},
        {"limit": 0},
        {"limit": 201},
        {"channel": "pigeon"},
        {"state": "sleeping"},
        {"customer_id": 0},
        {"since": "2024-01-01T00:00:00"},
        {"since": "0001-01-01T00:00:00+05:00"},
    ],
)
async def test_bad_list_parameters_are_422(agent_client, params: dict) -> None:  # noqa: ANN001
    response = await agent_client.get(API, params=params)
    assert response.status_code == 422, response.text


NAUGHTY = [
    "\x00",
    "nul\x00inside",
    "\ud800",
    "\x1b[31mred\x1b[0m",
    "<script>alert(1)</script>",
    "'; DROP TABLE interactions; --",
    "\u202egnp.exe",
    "   ",
    "",
    "x" * 10_001,
    "客服中心 🎧 ﾟ･✿ヾ╲(｡◕‿◕｡)╱✿･ﾟ",
    "\ufeffbom",
]
TEXT_FIELDS = [
    ("POST", API, lambda: {"channel": "phone", "external_id": external_id()}, ["external_id", "queue", "subject"]),
    ("POST", API, lambda: {"channel": "phone", "identity": {"kind": "phone", "value": "13812345678"}}, ["identity"]),
    ("POST", API, lambda: {"channel": "phone", "identity": {"kind": "chat", "value": "visitor-1"}}, ["identity"]),
    ("PATCH", API + "/{id}", lambda: {}, ["summary", "subject"]),
    ("POST", "/api/v1/contact-reasons", lambda: {"code": external_id()[:60], "name": "n"}, ["code", "name"]),
]


@pytest.mark.parametrize("naughty", NAUGHTY, ids=[repr(n)[:20] for n in NAUGHTY])
async def test_naughty_strings_never_cause_a_5xx(app, make, client, naughty: str) -> None:  # noqa: ANN001
    await login(client, await make.user("supervisor"))
    row = (await client.post(API, json={"channel": "phone"})).json()
    for method, path, valid, fields in TEXT_FIELDS:
        for name in fields:
            body = valid()
            if name == "identity":
                body["identity"]["value"] = naughty
            else:
                body[name] = naughty
            # json.dumps escapes a lone surrogate as \\ud800 (valid JSON, invalid Unicode); httpx cannot send it.
            raw = json.dumps(body)
            headers = {"Content-Type": "application/json"}
            response = await client.request(method, path.format(id=row["id"]), content=raw, headers=headers)
            assert response.status_code < 500, (path, name, response.text)
            if response.status_code >= 400:
                assert set(response.json()) == {"error"}
