"""Outbound webhooks against a real HTTP receiver on loopback: signed, retried with backoff on 503,
dead after the last attempt (visible with its error, retried by an admin), exactly one effective
delivery per event; agents' replies on SMS/social cases go to the channel's outbound URL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update
from webhooks_support import SECRET, Receiver, make_channel, message, post_signed, run_jobs

from conftest import Factory, login, principal_of
from kefu.channels.intake import CHANNEL_PRINCIPAL
from kefu.channels.webhooks import service
from kefu.channels.webhooks.models import WebhookDelivery, WebhookSubscription
from kefu.settings import Settings
from kefu.tickets import service as tickets
from kefu.tickets.schemas import WorkOrderCreate


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    started = Receiver().start()
    yield started
    started.stop()


@pytest.fixture(autouse=True)
async def _quiet_subscriptions(app) -> AsyncIterator[None]:  # noqa: ANN001
    # A subscription left on would receive the next tests' events: each test starts and ends with none.
    yield
    async with app.state.session_factory() as db, db.begin():
        await db.execute(update(WebhookSubscription).values(active=False))


@pytest.fixture(scope="module")
async def admin(app) -> AsyncIterator[httpx.AsyncClient]:  # noqa: ANN001
    # One signed-in admin for the module: signing in costs an argon2 hash.
    transport = httpx.ASGITransport(app=app, client=("10.30.0.1", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        await login(client, await Factory(app).user("admin"))
        yield client


async def subscribe(admin: httpx.AsyncClient, url: str, *types: str) -> dict[str, Any]:
    response = await admin.post(
        "/api/v1/webhooks/subscriptions",
        json={"name": "CRM", "url": url, "secret": SECRET, "event_types": list(types)},
    )
    assert response.status_code == 201, response.text
    return response.json()


async def new_work_order(app, title: str = "外呼测试") -> int:  # noqa: ANN001
    async with app.state.session_factory() as db, db.begin():
        work_order = await tickets.create_work_order(
            db, CHANNEL_PRINCIPAL, WorkOrderCreate(type="inquiry", priority="normal", title=title)
        )
        return work_order.id


async def deliveries_of(app, subscription_id: int) -> list[WebhookDelivery]:  # noqa: ANN001
    async with app.state.session_factory() as db:
        stmt = select(WebhookDelivery).where(WebhookDelivery.subscription_id == subscription_id)
        return list((await db.scalars(stmt.order_by(WebhookDelivery.id))).all())


async def test_subscriptions_are_validated_and_secrets_never_returned(admin) -> None:  # noqa: ANN001
    base = {"name": "CRM", "secret": SECRET, "event_types": ["work_order.created"]}
    for url in ("ftp://crm.example.test/hook", "javascript:alert(1)", "http://user:pw@crm.example.test/", "/relative"):
        refused = await admin.post("/api/v1/webhooks/subscriptions", json={**base, "url": url})
        assert refused.status_code == 422, url
    bad_type = await admin.post(
        "/api/v1/webhooks/subscriptions", json={**base, "url": "https://crm.example.test/h", "event_types": ["nope"]}
    )
    assert bad_type.status_code == 422
    short = await admin.post(
        "/api/v1/webhooks/subscriptions", json={**base, "url": "https://crm.example.test/h", "secret": "short"}
    )
    assert short.status_code == 422
    made = await subscribe(admin, "https://crm.example.test/hook", "work_order.created", "interaction.created")
    assert made["has_secret"] and "secret" not in made
    changed = await admin.patch(
        f"/api/v1/webhooks/subscriptions/{made['id']}", json={"event_types": ["*"], "secret": "another-secret-0123456"}
    )
    assert changed.status_code == 200 and changed.json()["event_types"] == ["*"]
    listed = await admin.get("/api/v1/webhooks/subscriptions")
    assert SECRET not in listed.text and "another-secret" not in listed.text


async def test_events_are_signed_retried_and_delivered_exactly_once(app, admin, settings, receiver) -> None:  # noqa: ANN001
    receiver.fail_first = 2  # every delivery: 503, 503, then 200
    subscription = await subscribe(admin, receiver.url + "/crm", "work_order.created")
    ids = [await new_work_order(app, f"工单 {n}") for n in range(3)]
    # A change that rolls back sends nothing.
    with pytest.raises(RuntimeError):
        async with app.state.session_factory() as db, db.begin():
            await tickets.create_work_order(
                db, CHANNEL_PRINCIPAL, WorkOrderCreate(type="inquiry", priority="normal", title="rolled back")
            )
            raise RuntimeError("roll back")
    deliveries = await deliveries_of(app, subscription["id"])
    assert len(deliveries) == 3
    assert [d.payload["data"]["work_order_id"] for d in deliveries] == ids

    await run_jobs(app, settings)

    assert all(r.signature_ok for r in receiver.requests)
    for delivery in await deliveries_of(app, subscription["id"]):
        attempts = [r for r in receiver.requests if r.delivery_id == delivery.delivery_id]
        assert [r.answered for r in attempts] == [503, 503, 200]
        assert len(receiver.effective(delivery.delivery_id)) == 1
        assert attempts[0].event == "work_order.created" and attempts[0].body["type"] == "work_order.created"
        assert attempts[0].body["id"] == delivery.delivery_id
        assert (delivery.status, delivery.attempts, delivery.last_error) == ("delivered", 3, None)
    assert len(receiver.effective()) == 3
    # Nothing is left to send: running the jobs again sends nothing more.
    before = len(receiver.requests)
    await run_jobs(app, settings)
    assert len(receiver.requests) == before


async def test_retries_back_off(app, admin, settings, receiver) -> None:  # noqa: ANN001
    receiver.fail_first = 1
    subscription = await subscribe(admin, receiver.url + "/slow", "work_order.created")
    await new_work_order(app)
    started = datetime.now(UTC)
    await run_jobs(app, settings, webhooks_retry_base_seconds=60)  # the retry waits a minute: not due now
    (delivery,) = await deliveries_of(app, subscription["id"])
    assert (delivery.status, delivery.attempts) == ("pending", 1)
    assert delivery.last_error.startswith("HTTP 503")
    assert started + timedelta(seconds=55) < delivery.next_attempt_at < started + timedelta(seconds=70)


async def test_dead_deliveries_show_their_error_and_an_admin_retries_them(app, admin, settings, receiver) -> None:  # noqa: ANN001
    receiver.status = 503
    subscription = await subscribe(admin, receiver.url + "/down", "work_order.created")
    await new_work_order(app)
    await run_jobs(app, settings, webhooks_max_attempts=3)
    (delivery,) = await deliveries_of(app, subscription["id"])
    assert (delivery.status, delivery.attempts) == ("dead", 3)
    assert "HTTP 503" in delivery.last_error
    dead = await admin.get("/api/v1/webhooks/deliveries", params={"status": "dead"})
    assert delivery.delivery_id in {d["delivery_id"] for d in dead.json()}
    page = await admin.get("/webhooks", params={"status": "dead"})
    assert page.status_code == 200 and delivery.delivery_id[:12] in page.text and "HTTP 503" in page.text

    receiver.status = 200
    retried = await admin.post(f"/api/v1/webhooks/deliveries/{delivery.id}/retry")
    assert retried.status_code == 200 and retried.json()["status"] == "pending"
    again = await admin.post(f"/api/v1/webhooks/deliveries/{delivery.id}/retry")
    assert again.status_code == 409  # only dead ones
    await run_jobs(app, settings, webhooks_max_attempts=3)
    (delivery,) = await deliveries_of(app, subscription["id"])
    assert delivery.status == "delivered"
    assert len(receiver.effective(delivery.delivery_id)) == 1
    assert {r.delivery_id for r in receiver.requests} == {delivery.delivery_id}  # the same id every time


async def test_a_refusal_other_than_5xx_is_final(app, admin, settings, receiver) -> None:  # noqa: ANN001
    receiver.status = 400
    subscription = await subscribe(admin, receiver.url + "/strict", "work_order.created")
    await new_work_order(app)
    await run_jobs(app, settings)
    (delivery,) = await deliveries_of(app, subscription["id"])
    assert (delivery.status, delivery.attempts, delivery.last_status) == ("dead", 1, 400)


async def test_receivers_on_kefus_own_machine_are_refused_by_default(app, admin, settings, receiver) -> None:  # noqa: ANN001
    # The default refused networks (loopback, link-local): a forged subscription cannot make kefu post to
    # itself or to a metadata service. The test settings allow loopback; the defaults are restored here.
    defaults = Settings.model_fields["webhooks_refused_networks"].get_default(call_default_factory=True)
    guarded = settings.model_copy(update={"webhooks_refused_networks": defaults})
    subscription = await subscribe(admin, receiver.url + "/itself", "work_order.created")
    await new_work_order(app)
    await run_jobs(app, guarded)
    (delivery,) = await deliveries_of(app, subscription["id"])
    assert (delivery.status, delivery.attempts) == ("dead", 1)
    assert "127.0.0.1" in delivery.last_error and "refused network" in delivery.last_error
    assert receiver.requests == []
    assert await service.refused_target(guarded, "http://10.1.2.3/sms") is None  # the LAN stays allowed
    assert await service.refused_target(guarded, "http://169.254.169.254/latest") is not None


async def test_unreachable_receivers_are_retried(app, admin, settings, receiver) -> None:  # noqa: ANN001
    receiver.stop()  # nothing listens there any more: connection refused
    subscription = await subscribe(admin, receiver.url + "/gone", "work_order.created")
    await new_work_order(app)
    await run_jobs(app, settings, webhooks_max_attempts=2)
    (delivery,) = await deliveries_of(app, subscription["id"])
    assert (delivery.status, delivery.attempts) == ("dead", 2)
    assert "ConnectError" in delivery.last_error


async def test_keyed_events_are_queued_once(app, admin) -> None:  # noqa: ANN001
    subscription = await subscribe(admin, "https://crm.example.test/keyed", "interaction.created")
    for _ in range(3):
        async with app.state.session_factory() as db, db.begin():
            await service.enqueue_deliveries(db, "interaction.created", {"interaction_id": 1}, key="interaction:1")
    assert len(await deliveries_of(app, subscription["id"])) == 1


async def test_inbound_messages_and_new_interactions_are_events(app, admin, settings, receiver) -> None:  # noqa: ANN001
    subscription = await subscribe(admin, receiver.url + "/all", "social.message", "interaction.created")
    channel = await make_channel(app)
    sent = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    for _ in range(3):  # a gateway retrying: one message, one interaction, one event each
        await post_signed(admin, channel.code, [message("e-1", "zoe", sent), message("e-2", "zoe", sent)])
    await run_jobs(app, settings)
    kinds = sorted(r.event for r in receiver.effective())
    assert kinds == ["interaction.created", "social.message", "social.message"]
    assert len(await deliveries_of(app, subscription["id"])) == 3


async def test_agent_replies_are_posted_to_the_channels_outbound_url(app, admin, make, settings, receiver) -> None:  # noqa: ANN001
    receiver.fail_first = 1
    channel = await make_channel(app, kind="sms", identity_prefix=None, outbound_url=receiver.url + "/sms")
    sent = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    inbound = await post_signed(admin, channel.code, message("r-1", "13800138001", sent, conversation_id="th-1"))
    work_order_id = inbound.json()["results"][0]["work_order_id"]
    await run_jobs(app, settings)
    assert receiver.requests == []  # the customer's own message is not echoed back

    agent = principal_of(await make.user("agent"))
    async with app.state.session_factory() as db, db.begin():
        await tickets.add_comment(db, agent, work_order_id, "您好，已为您处理。", internal=False)
        await tickets.add_comment(db, agent, work_order_id, "内部备注：不要发给客户", internal=True)
    await run_jobs(app, settings)

    (reply,) = receiver.effective()
    assert reply.path == "/sms" and reply.event == "channel.reply" and reply.signature_ok
    data = reply.body["data"]
    assert (data["to"], data["from"], data["text"]) == ("13800138001", "10690000", "您好，已为您处理。")
    assert (data["conversation_id"], data["in_reply_to"]) == ("th-1", "r-1")
    assert len([r for r in receiver.requests if r.delivery_id == reply.delivery_id]) == 2  # 503, then 200
    async with app.state.session_factory() as db:
        shown = await service.list_messages(db, work_order_id=work_order_id)
    assert [(s.seq, s.message.direction) for s in shown] == [(1, "inbound"), (2, "outbound")]
    channel_page = await admin.get(f"/webhooks/channels/{channel.id}")
    assert channel_page.status_code == 200 and "您好，已为您处理。" in channel_page.text
    assert SECRET not in channel_page.text


async def test_channel_configuration_api(app, admin) -> None:  # noqa: ANN001
    spec = {"code": "sms-cfg", "kind": "sms", "name": "短信", "secret": SECRET}
    made = await admin.post("/api/v1/webhooks/channels", json=spec)
    if made.status_code == 409:  # a second run on the same database
        made = await admin.get("/api/v1/webhooks/channels")
        channel = next(c for c in made.json() if c["code"] == "sms-cfg")
    else:
        assert made.status_code == 201, made.text
        channel = made.json()
    assert channel["identity_kind"] == "phone" and channel["endpoint"] == "/api/v1/channels/sms-cfg/messages"
    assert "secret" not in channel
    assert (await admin.post("/api/v1/webhooks/channels", json=spec)).status_code == 409
    for change, field in (
        ({"outbound_url": "file:///etc/passwd"}, "outbound_url"),
        ({"queue": "no-such-queue"}, "queue"),
        ({"conversation_window_seconds": 5}, "conversation_window_seconds"),
        ({"identity_prefix": "wechat"}, "identity_prefix"),
    ):
        refused = await admin.patch(f"/api/v1/webhooks/channels/{channel['id']}", json=change)
        assert refused.status_code == 422, change
        details = refused.json()["error"]["details"]
        named = details["field"] if isinstance(details, dict) else details[0]["loc"][-1]
        assert named == field
    changed = await admin.patch(f"/api/v1/webhooks/channels/{channel['id']}", json={"active": False})
    assert changed.json()["active"] is False
    gone = await post_signed(admin, "sms-cfg", message("x-1", "13800138000", datetime.now(UTC).isoformat()))
    assert gone.status_code == 404  # a switched-off channel takes nothing
    await admin.patch(f"/api/v1/webhooks/channels/{channel['id']}", json={"active": True})
