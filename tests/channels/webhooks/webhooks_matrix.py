"""Access-matrix examples for the webhook channel routes (see tests/core/test_access_matrix.py).

The inbound endpoint is open to every role (its credential is the signature, checked after the matrix):
the example sends no signature, which every role gets a 422 for. The web forms are open to everyone too.
The admin routes (``webhook_endpoint``) are the admins' alone."""

from __future__ import annotations

import uuid
from typing import Any

from kefu.channels.intake import CHANNEL_PRINCIPAL
from kefu.channels.webhooks import service
from kefu.channels.webhooks.models import WebhookDelivery
from kefu.channels.webhooks.schemas import ChannelCreate, SubscriptionCreate

SECRET = "matrix-secret-0123456789"
A = "/api/v1/webhooks"


def _code() -> str:
    return f"mx{uuid.uuid4().hex[:10]}"


def _form() -> dict[str, str]:
    return {
        "name": "矩阵访客",
        "email": f"mx.{uuid.uuid4().hex[:8]}@example.cn",
        "subject": "矩阵表单",
        "message": "你好",
    }


async def prepare(app: Any, world: dict[str, Any]) -> dict[str, Any]:
    async with app.state.session_factory() as db, db.begin():
        channel = await service.create_channel(
            db, CHANNEL_PRINCIPAL, ChannelCreate(code=_code(), kind="sms", name="矩阵短信", secret=SECRET)
        )
        subscription = await service.create_subscription(
            db,
            CHANNEL_PRINCIPAL,
            SubscriptionCreate(
                name="矩阵订阅",
                url="https://crm.example.test/matrix",
                secret=SECRET,
                event_types=["work_order.created"],
                active=False,
            ),
        )
        delivery = WebhookDelivery(
            delivery_id=uuid.uuid4().hex,
            subscription_id=subscription.id,
            event_type="work_order.created",
            payload={},
            status="dead",
            attempts=8,
            last_error="HTTP 503",
        )
        db.add(delivery)
        await db.flush()
    return {
        "webhook_channel_id": channel.id,
        "webhook_channel_code": channel.code,
        "webhook_subscription_id": subscription.id,
        "webhook_delivery_id": delivery.id,
    }


def _channel(c: Any) -> dict[str, Any]:
    return {"channel_id": c.ids["webhook_channel_id"]}


EXAMPLES = {
    ("POST", "/api/v1/channels/{code}/messages"): lambda c: {
        "path": {"code": c.ids["webhook_channel_code"]},
        "json": {
            "message_id": "m1",
            "from": "13800138000",
            "to": "1069",
            "text": "hi",
            "sent_at": "2026-01-01T00:00:00Z",
        },
    },
    ("POST", "/api/v1/web-forms"): lambda c: {"json": _form()},
    ("GET", A + "/channels"): lambda c: {},
    ("POST", A + "/channels"): lambda c: {
        "json": {"code": _code(), "kind": "social", "name": "矩阵社交", "secret": SECRET, "identity_prefix": "wechat"}
    },
    ("GET", A + "/channels/{channel_id}"): lambda c: {"path": _channel(c)},
    ("PATCH", A + "/channels/{channel_id}"): lambda c: {"path": _channel(c), "json": {"name": "矩阵短信改"}},
    ("GET", A + "/channels/{channel_id}/messages"): lambda c: {"path": _channel(c)},
    ("GET", A + "/subscriptions"): lambda c: {},
    ("POST", A + "/subscriptions"): lambda c: {
        "json": {
            "name": "矩阵订阅二",
            "url": "https://crm.example.test/m2",
            "secret": SECRET,
            "event_types": ["work_order.created"],
            "active": False,
        }
    },
    ("GET", A + "/subscriptions/{subscription_id}"): lambda c: {
        "path": {"subscription_id": c.ids["webhook_subscription_id"]}
    },
    ("PATCH", A + "/subscriptions/{subscription_id}"): lambda c: {
        "path": {"subscription_id": c.ids["webhook_subscription_id"]},
        "json": {"name": "矩阵订阅改"},
    },
    ("GET", A + "/deliveries"): lambda c: {"params": {"status": "dead"}},
    ("GET", A + "/deliveries/{delivery_id}"): lambda c: {"path": {"delivery_id": c.ids["webhook_delivery_id"]}},
    # A dead delivery for the first allowed caller; 409 (not dead any more) for the rest.
    ("POST", A + "/deliveries/{delivery_id}/retry"): lambda c: {"path": {"delivery_id": c.ids["webhook_delivery_id"]}},
    ("GET", "/help/contact"): lambda c: {},
    ("POST", "/help/contact"): lambda c: {"data": _form()},
    ("GET", "/webhooks"): lambda c: {},
    ("POST", "/webhooks/channels"): lambda c: {
        "data": {"code": _code(), "kind": "sms", "name": "矩阵页面渠道", "secret": SECRET}
    },
    ("GET", "/webhooks/channels/{channel_id}"): lambda c: {"path": _channel(c)},
    ("POST", "/webhooks/channels/{channel_id}"): lambda c: {"path": _channel(c), "data": {"name": "矩阵页面改"}},
    ("POST", "/webhooks/subscriptions"): lambda c: {
        "data": {
            "name": "矩阵页面订阅",
            "url": "https://crm.example.test/m3",
            "secret": SECRET,
            "event_types[]": "work_order.created",
            "active": "0",
        }
    },
    ("GET", "/webhooks/subscriptions/{subscription_id}"): lambda c: {
        "path": {"subscription_id": c.ids["webhook_subscription_id"]}
    },
    ("POST", "/webhooks/subscriptions/{subscription_id}"): lambda c: {
        "path": {"subscription_id": c.ids["webhook_subscription_id"]},
        "data": {"name": "矩阵订阅页", "url": "https://crm.example.test/m", "event_types[]": "*", "active": "0"},
    },
    ("POST", "/webhooks/deliveries/{delivery_id}/retry"): lambda c: {
        "path": {"delivery_id": c.ids["webhook_delivery_id"]}
    },
}
