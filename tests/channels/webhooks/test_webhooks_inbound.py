"""Inbound webhook messages: signatures, validation, dedupe (also concurrent), conversations, and the
replay property: every message delivered 2-5 times in random order leaves the state one in-order
delivery leaves."""

from __future__ import annotations

import asyncio
import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from webhooks_support import SECRET, body_of, make_channel, message, post_signed, sign

from kefu.channels.intake import CHANNEL_PRINCIPAL
from kefu.channels.webhooks import service
from kefu.channels.webhooks.models import WebhookMessage
from kefu.core import signing
from kefu.interactions.models import Interaction
from kefu.tickets import service as tickets


@pytest.fixture
async def anon(app) -> Any:  # noqa: ANN001
    transport = httpx.ASGITransport(app=app, client=("10.20.0.1", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


async def stored_messages(app, channel_id: int) -> int:  # noqa: ANN001
    async with app.state.session_factory() as db:
        stmt = select(func.count()).select_from(WebhookMessage).where(WebhookMessage.channel_id == channel_id)
        return await db.scalar(stmt)


def ago(**delta: float) -> str:
    return (datetime.now(UTC) - timedelta(**delta)).isoformat()


# --- signatures -------------------------------------------------------------------------------------------
def test_signing_helper_round_trip_and_refusals() -> None:
    body = b'{"a":1}'
    now = 1_800_000_000
    headers = signing.signed_headers(SECRET, body, now=now)
    assert headers["X-Kefu-Signature"] == sign(SECRET, now, body)
    signing.verify(SECRET, headers["X-Kefu-Timestamp"], headers["X-Kefu-Signature"], body, now=now + 10)
    cases = [
        ((None, headers["X-Kefu-Signature"]), "missing"),
        ((headers["X-Kefu-Timestamp"], None), "missing"),
        (("12ab", headers["X-Kefu-Signature"]), "malformed"),
        ((headers["X-Kefu-Timestamp"], "md5=abc"), "malformed"),
        ((headers["X-Kefu-Timestamp"], sign("another-secret-000000", now, body)), "invalid"),
        ((headers["X-Kefu-Timestamp"], sign(SECRET, now, body + b" ")), "invalid"),
    ]
    for (ts, sig), code in cases:
        with pytest.raises(signing.SignatureProblem) as caught:
            signing.verify(SECRET, ts, sig, body, now=now)
        assert caught.value.code == code
        assert SECRET not in str(caught.value)
    with pytest.raises(signing.SignatureProblem) as stale:
        signing.verify(SECRET, headers["X-Kefu-Timestamp"], headers["X-Kefu-Signature"], body, now=now + 301)
    assert stale.value.code == "stale"


async def test_endpoint_accepts_good_signatures_and_refuses_bad_stale_and_missing(app, anon) -> None:  # noqa: ANN001
    channel = await make_channel(app)
    good = await post_signed(anon, channel.code, message("sig-1", "alice", ago(minutes=1)))
    assert good.status_code == 200, good.text
    assert good.json()["results"][0]["status"] == "created"

    bad = await post_signed(
        anon, channel.code, message("sig-2", "alice", ago(minutes=1)), secret="wrong-secret-0000000"
    )
    assert (bad.status_code, bad.json()["error"]["code"]) == (401, "signature_invalid")
    stale = await post_signed(
        anon, channel.code, message("sig-3", "alice", ago(minutes=1)), timestamp=int(time.time()) - 310
    )
    assert (stale.status_code, stale.json()["error"]["code"]) == (401, "signature_stale")
    future = await post_signed(
        anon, channel.code, message("sig-3", "alice", ago(minutes=1)), timestamp=int(time.time()) + 310
    )
    assert future.status_code == 401
    body = body_of(message("sig-4", "alice", ago(minutes=1)))
    missing = await anon.post(f"/api/v1/channels/{channel.code}/messages", content=body)
    assert missing.status_code == 422
    assert missing.json()["error"]["details"]["field"] == "X-Kefu-Timestamp"
    no_sig = await anon.post(
        f"/api/v1/channels/{channel.code}/messages", content=body, headers={"X-Kefu-Timestamp": str(int(time.time()))}
    )
    assert no_sig.json()["error"]["details"]["field"] == "X-Kefu-Signature"
    # A body changed after signing is refused: the signature covers every byte.
    ts = int(time.time())
    tampered = await anon.post(
        f"/api/v1/channels/{channel.code}/messages",
        content=body.replace(b"alice", b"mallory"),
        headers={"X-Kefu-Timestamp": str(ts), "X-Kefu-Signature": sign(SECRET, ts, body)},
    )
    assert tampered.status_code == 401
    unknown = await post_signed(anon, "no-such-channel", message("sig-5", "alice", ago(minutes=1)))
    assert unknown.status_code == 404
    async with app.state.session_factory() as db:
        stored = await db.scalar(
            select(func.count()).select_from(WebhookMessage).where(WebhookMessage.channel_id == channel.id)
        )
    assert stored == 1  # only the good one
    # The secret is write-only: never in what the API returns.
    assert SECRET not in good.text


# --- validation -------------------------------------------------------------------------------------------
GOOD = {"message_id": "v-1", "from": "bob", "to": "10690000", "text": "hi", "sent_at": "2026-01-05T10:00:00+08:00"}
INVALID_FIELDS = [
    ({"message_id": ""}, "message_id"),
    ({"message_id": "x" * 201}, "message_id"),
    ({"message_id": None}, "message_id"),
    ({"from": ""}, "from"),
    ({"from": "has space"}, "from"),  # a social handle has no spaces
    ({"to": ""}, "to"),
    ({"text": "x" * 10_001}, "text"),
    ({"text": "bell\x07"}, "text"),
    ({"text": "", "attachments": []}, None),  # nothing said at all
    ({"sent_at": "yesterday"}, "sent_at"),
    ({"sent_at": "2026-01-05T10:00:00"}, "sent_at"),  # no zone: ambiguous
    ({"sent_at": "2999-01-01T00:00:00Z"}, "sent_at"),  # in the future
    ({"attachments": [{"url": "ftp://x.test/a", "name": "a"}]}, "attachments.0.url"),
    ({"attachments": [{"url": "https://x.test/a", "name": ""}]}, "attachments.0.name"),
    ({"attachments": [{"url": "https://x.test/a", "name": "a", "type": "not a type"}]}, "attachments.0.type"),
    ({"conversation_id": "c" * 129}, "conversation_id"),
    ({"unexpected": 1}, "unexpected"),
]


@pytest.mark.parametrize(("change", "field"), INVALID_FIELDS, ids=[str(c)[:40] for c, _ in INVALID_FIELDS])
async def test_each_field_is_validated_with_its_index(app, anon, change: dict[str, Any], field: str | None) -> None:  # noqa: ANN001
    channel = await make_channel(app)
    bad = {**GOOD, "message_id": "v-2", **change}
    response = await post_signed(anon, channel.code, [GOOD, bad])
    assert response.status_code == 422, response.text
    details = response.json()["error"]["details"]
    assert details["index"] == 1
    assert details["field"] == field
    async with app.state.session_factory() as db:
        stored = await db.scalar(
            select(func.count()).select_from(WebhookMessage).where(WebhookMessage.channel_id == channel.id)
        )
    assert stored == 0  # one bad message refuses the request: nothing half-lands


async def test_malformed_bodies_and_batch_limits(app, anon, settings) -> None:  # noqa: ANN001
    channel = await make_channel(app)
    assert (await post_signed(anon, channel.code, None, raw=b"{not json")).status_code == 400
    assert (await post_signed(anon, channel.code, [])).status_code == 422
    assert (await post_signed(anon, channel.code, ["text"])).json()["error"]["details"]["index"] == 0
    too_many = [{**GOOD, "message_id": f"b{i}"} for i in range(settings.webhooks_max_batch + 1)]
    assert (await post_signed(anon, channel.code, too_many)).status_code == 422


async def test_phone_senders_are_normalized_and_bad_numbers_refused(app, anon) -> None:  # noqa: ANN001
    channel = await make_channel(app, kind="sms", identity_prefix=None)
    ok = await post_signed(anon, channel.code, message("p-1", "138 0013 8000", ago(minutes=2)))
    assert ok.status_code == 200
    async with app.state.session_factory() as db:
        row = await db.scalar(select(WebhookMessage).where(WebhookMessage.channel_id == channel.id))
        interaction = await db.get(Interaction, row.interaction_id)
    assert row.customer_address == "+8613800138000"
    assert (interaction.channel, interaction.identity_kind, interaction.identity_value) == (
        "sms",
        "phone",
        "+8613800138000",
    )
    bad = await post_signed(anon, channel.code, message("p-2", "not-a-number", ago(minutes=2)))
    assert bad.status_code == 422 and bad.json()["error"]["details"]["field"] == "from"


async def test_markup_is_stored_as_plain_text(app, anon) -> None:  # noqa: ANN001
    channel = await make_channel(app)
    text = '<script>alert(1)</script><b onclick="x()">粗体</b> & 1 < 2'
    response = await post_signed(anon, channel.code, message("h-1", "carol", ago(minutes=1), text=text))
    work_order_id = response.json()["results"][0]["work_order_id"]
    async with app.state.session_factory() as db:
        row = await db.scalar(select(WebhookMessage).where(WebhookMessage.channel_id == channel.id))
        comments = await tickets.list_comments(db, CHANNEL_PRINCIPAL, work_order_id)
    assert row.text == "粗体 & 1 < 2"
    assert "<script" not in comments[-1][0].body and "粗体 & 1 < 2" in comments[-1][0].body


# --- dedupe and conversations ----------------------------------------------------------------------------------
async def test_a_message_delivered_twice_is_stored_once(app, anon) -> None:  # noqa: ANN001
    channel = await make_channel(app)
    first = await post_signed(anon, channel.code, message("d-1", "dave", ago(minutes=3)))
    again = await post_signed(
        anon, channel.code, [message("d-1", "dave", ago(minutes=3)), message("d-1", "dave", ago(minutes=3))]
    )
    assert first.json()["results"][0]["status"] == "created"
    assert [r["status"] for r in again.json()["results"]] == ["duplicate"]
    assert again.json()["results"][0]["work_order_id"] == first.json()["results"][0]["work_order_id"]
    async with app.state.session_factory() as db:
        count = await db.scalar(
            select(func.count()).select_from(WebhookMessage).where(WebhookMessage.channel_id == channel.id)
        )
        comments = await tickets.list_comments(db, CHANNEL_PRINCIPAL, first.json()["results"][0]["work_order_id"])
    assert count == 1 and len(comments) == 1


async def test_concurrent_duplicates_are_stored_once(app) -> None:  # noqa: ANN001
    channel = await make_channel(app)
    payload = [message("c-1", "erin", ago(minutes=4)), message("c-2", "erin", ago(minutes=3))]

    async def deliver(n: int) -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=(f"10.20.1.{n}", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            return await post_signed(c, channel.code, payload)

    responses = await asyncio.gather(*(deliver(n) for n in range(1, 7)))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    statuses = [r["status"] for resp in responses for r in resp.json()["results"]]
    assert statuses.count("created") == 2 and statuses.count("duplicate") == 10
    async with app.state.session_factory() as db:
        rows = (await db.scalars(select(WebhookMessage).where(WebhookMessage.channel_id == channel.id))).all()
        interactions = await db.scalar(
            select(func.count()).select_from(Interaction).where(Interaction.external_id.like(f"{channel.code}:%"))
        )
        comments = await tickets.list_comments(db, CHANNEL_PRINCIPAL, rows[0].work_order_id)
    assert len(rows) == 2 and interactions == 1 and len(comments) == 2


async def test_conversation_window_groups_a_senders_messages(app, anon) -> None:  # noqa: ANN001
    # Windows of one hour in Asia/Shanghai: 10:05 and 10:50 share one, 11:10 starts the next.
    channel = await make_channel(app, conversation_window_seconds=3600)
    day = "2026-03-02T{}:00+08:00"
    batch = [
        message("w-1", "frank", day.format("10:05")),
        message("w-2", "frank", day.format("10:50")),
        message("w-3", "frank", day.format("11:10")),
        message("w-4", "grace", day.format("10:06")),
        message("w-5", "frank", day.format("11:11"), conversation_id="thread-9"),
        message("w-6", "frank", day.format("15:00"), conversation_id="thread-9"),
    ]
    results = {r["message_id"]: r for r in (await post_signed(anon, channel.code, batch)).json()["results"]}
    interaction = {k: v["interaction_id"] for k, v in results.items()}
    assert interaction["w-1"] == interaction["w-2"]
    assert len({interaction["w-1"], interaction["w-3"], interaction["w-4"], interaction["w-5"]}) == 4
    assert interaction["w-5"] == interaction["w-6"]  # the gateway's own thread id wins over the clock
    # Every conversation of one customer lands on that customer's one open case.
    case = {k: v["work_order_id"] for k, v in results.items()}
    assert case["w-1"] == case["w-3"] == case["w-5"] == case["w-6"] != case["w-4"]
    async with app.state.session_factory() as db:
        comments = await tickets.list_comments(db, CHANNEL_PRINCIPAL, case["w-1"])
    assert len(comments) == 5


# --- the replay property ----------------------------------------------------------------------------------------
def _script() -> list[dict[str, Any]]:
    """Three customers over three days: crossings of the day boundary, a thread id, attachments, markup."""
    base = datetime(2026, 2, 1, 15, 0, tzinfo=UTC)  # 23:00 in Shanghai: the local day ends in an hour
    plan = [
        ("m01", "alice", 0, "你好，我的订单没有到", None),
        ("m02", "alice", 20, "订单号 12345", None),
        ("m03", "bob", 30, "<b>查询</b>余额", None),
        ("m04", "alice", 70, "还在吗？", None),  # next local day: a new conversation, the same case
        ("m05", "carol", 75, "投诉", "wx-thread-1"),
        ("m06", "carol", 60 * 26, "补充材料", "wx-thread-1"),
        ("m07", "bob", 60 * 27, "谢谢", None),
        ("m08", "alice", 60 * 50, "已收到", None),
        ("m09", "bob", 60 * 27, "同一时刻的第二条", None),  # same sent_at as m07: ordered by message_id
    ]
    out = []
    for mid, who, minutes, text, thread in plan:
        extra: dict[str, Any] = {}
        if thread:
            extra["conversation_id"] = thread
        if mid == "m06":
            extra["attachments"] = [{"url": "https://files.example.test/a.jpg", "name": "a.jpg", "type": "image/jpeg"}]
        out.append(message(mid, who, (base + timedelta(minutes=minutes)).isoformat(), text=text, **extra))
    return out


async def _deliver(app, settings, channel, batch: list[dict[str, Any]]) -> None:  # noqa: ANN001
    prepared = service.prepare_batch(channel, body_of(batch), settings)
    async with app.state.session_factory() as db, db.begin():
        await service.receive_batch(db, settings, channel, prepared)


async def _state(app, channel) -> dict[str, Any]:  # noqa: ANN001
    """What a delivery leaves, with database ids and the run's network name replaced by stable labels."""
    async with app.state.session_factory() as db:
        shown = await service.list_messages(db, channel_id=channel.id)
        labels: dict[tuple[str, int | None], str] = {}

        def label(kind: str, value: int | None) -> str:
            return labels.setdefault((kind, value), f"{kind}{sum(1 for k in labels if k[0] == kind)}")

        messages = []
        for s in shown:
            m = s.message
            messages.append(
                (
                    s.seq,
                    m.message_id,
                    m.customer_raw,
                    m.customer_address.replace(channel.identity_prefix, "P"),
                    m.text,
                    m.attachments,
                    m.sent_at.isoformat(),
                    m.conversation_key.replace(channel.identity_prefix, "P"),
                    label("customer", m.customer_id),
                    label("interaction", m.interaction_id),
                    label("case", m.work_order_id),
                )
            )
        interactions = []
        for (kind, value), name in sorted(labels.items(), key=lambda kv: kv[1]):
            if kind == "interaction":
                i = await db.get(Interaction, value)
                interactions.append(
                    (
                        name,
                        i.channel,
                        i.external_id.replace(channel.code, "C").replace(channel.identity_prefix, "P"),
                        i.identity_value.replace(channel.identity_prefix, "P"),
                        i.subject,
                        label("customer", i.customer_id),
                        label("case", i.work_order_id),
                    )
                )
        cases = []
        for (kind, value), name in sorted(labels.items(), key=lambda kv: kv[1]):
            if kind == "case":
                work_order = await tickets.get_work_order(db, CHANNEL_PRINCIPAL, value)
                bodies = sorted(c.body for c, _ in await tickets.list_comments(db, CHANNEL_PRINCIPAL, value))
                cases.append(
                    (name, work_order.title, work_order.status, label("customer", work_order.customer_id), bodies)
                )
        counted = await db.scalar(
            select(func.count()).select_from(Interaction).where(Interaction.external_id.like(f"{channel.code}:%"))
        )
    return {"messages": messages, "interactions": interactions, "cases": cases, "interaction_count": counted}


async def test_replays_in_random_order_leave_the_state_of_one_in_order_delivery(app, settings) -> None:  # noqa: ANN001
    script = _script()
    reference_channel = await make_channel(app, name="重放")
    for item in script:
        await _deliver(app, settings, reference_channel, [item])
    reference = await _state(app, reference_channel)
    assert len(reference["messages"]) == len(script)
    assert [m[1] for m in reference["messages"]][-3:] == ["m07", "m09", "m08"]  # (sent_at, message_id)
    assert reference["interaction_count"] == 6  # alice x3 days, bob x2, carol's thread
    assert len(reference["cases"]) == 3  # one open case per customer

    for seed in range(10):
        rng = random.Random(seed)
        copies = [item for item in script for _ in range(rng.randint(2, 5))]
        rng.shuffle(copies)
        channel = await make_channel(app, name="重放")
        while copies:
            size = rng.randint(1, 4)
            batch, copies = copies[:size], copies[size:]
            await _deliver(app, settings, channel, batch)
        assert await _state(app, channel) == reference, f"seed {seed}"
