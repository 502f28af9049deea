"""Demo data of the webhook channels: an SMS channel and a WeChat channel a gateway simulator can post to.

The secrets are demo values (shown in docs/integrations/webhooks.md); change them before real use.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from kefu.channels.intake import CHANNEL_PRINCIPAL
from kefu.channels.webhooks import service
from kefu.channels.webhooks.models import WebhookChannel
from kefu.channels.webhooks.schemas import ChannelCreate

DEMO_CHANNELS = (
    {"code": "sms", "kind": "sms", "name": "短信 SMS", "secret": "kefu-demo-sms-secret-2026"},
    {
        "code": "wechat",
        "kind": "social",
        "name": "微信 WeChat",
        "secret": "kefu-demo-wechat-secret-2026",
        "identity_prefix": "wechat",
    },
)


async def load_webhooks_demo(db: AsyncSession) -> list[str]:
    """Idempotent: channels that exist are left alone. Returns the codes created."""
    created = []
    for spec in DEMO_CHANNELS:
        if await db.scalar(select(WebhookChannel.id).where(WebhookChannel.code == spec["code"])) is not None:
            continue
        await service.create_channel(db, CHANNEL_PRINCIPAL, ChannelCreate.model_validate(spec))
        created.append(spec["code"])
    return created
