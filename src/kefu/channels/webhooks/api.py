"""REST routes of the webhook channels: the signed inbound endpoint, the web form's JSON twin, and the
admins' configuration of channels, subscriptions and deliveries."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession

from kefu.channels.webhooks import service
from kefu.channels.webhooks.models import WebhookChannel
from kefu.channels.webhooks.schemas import (
    ChannelCreate,
    ChannelOut,
    ChannelUpdate,
    DeliveryOut,
    InboundResponse,
    MessageOut,
    MessageResult,
    SubscriptionCreate,
    SubscriptionOut,
    SubscriptionUpdate,
    WebFormIn,
    WebFormOut,
)
from kefu.core import signing
from kefu.core.errors import ApiError, Invalid
from kefu.core.policy import Principal, authorize
from kefu.core.schemas import IdParam, IdQuery
from kefu.db.session import get_db

router = APIRouter(prefix="/api/v1", tags=["webhooks"])
Db = Annotated[AsyncSession, Depends(get_db)]
ChannelCode = Annotated[str, Path(min_length=1, max_length=64)]
W = "/webhooks"


def channel_out(channel: WebhookChannel) -> ChannelOut:
    out = ChannelOut.model_validate(channel)
    out.endpoint = service.endpoint_path(channel)
    return out


# --- inbound ---------------------------------------------------------------------------------------------
@router.post("/channels/{code}/messages", response_model=InboundResponse)
async def receive_messages(
    code: ChannelCode, request: Request, db: Db, principal: Principal = authorize("channel_inbound", "create")
) -> InboundResponse:
    """One message or a list, signed with the channel's secret (see docs/integrations/webhooks.md).
    Repeats of a message id answer ``duplicate`` and change nothing."""
    settings = request.app.state.settings
    body = await request.body()
    async with db.begin():
        channel = await service.channel_by_code(db, code)
    try:
        signing.verify(
            channel.secret,
            request.headers.get(signing.TIMESTAMP_HEADER),
            request.headers.get(signing.SIGNATURE_HEADER),
            body,
            tolerance_seconds=settings.webhooks_signature_tolerance_seconds,
        )
    except signing.SignatureProblem as problem:
        if problem.code in ("missing", "malformed"):
            raise Invalid(problem.message, {"field": problem.header}) from None
        raise ApiError(401, f"signature_{problem.code}", problem.message) from None
    batch = service.prepare_batch(channel, body, settings)
    async with db.begin():
        results = await service.receive_batch(db, settings, channel, batch)
    return InboundResponse(
        results=[
            MessageResult(
                message_id=r.message_id,
                status=r.status,  # type: ignore[arg-type]
                conversation=r.conversation,
                interaction_id=r.interaction_id,
                work_order_id=r.work_order_id,
                work_order_number=r.work_order_number,
            )
            for r in results
        ]
    )


@router.post("/web-forms", response_model=WebFormOut, status_code=201)
async def submit_web_form(
    body: WebFormIn, request: Request, db: Db, principal: Principal = authorize("web_form", "create")
) -> JSONResponse:
    """The help centre's contact form for embedding: 201 with the case number; the same
    ``submission_id`` again answers 200 with the same case."""
    settings = request.app.state.settings
    async with db.begin():
        await service.check_form_rate(db, settings, principal.ip)
    attachment = None
    if body.attachment is not None:
        attachment = service.decode_attachment(body.attachment.name, body.attachment.content_base64)
    async with db.begin():
        result = await service.submit_web_form(db, settings, body, attachment)
    out = WebFormOut(status="received", case_number=result.case_number, submission_id=result.submission_id)
    return JSONResponse(out.model_dump(), status_code=201 if result.created else 200)


# --- inbound channels (admin) -------------------------------------------------------------------------------
@router.get(W + "/channels", response_model=list[ChannelOut])
async def list_channels(db: Db, principal: Principal = authorize("webhook_endpoint", "list")) -> list[ChannelOut]:
    return [channel_out(c) for c in await service.list_channels(db)]


@router.post(W + "/channels", response_model=ChannelOut, status_code=201)
async def create_channel(
    body: ChannelCreate, db: Db, principal: Principal = authorize("webhook_endpoint", "create")
) -> ChannelOut:
    async with db.begin():
        channel = await service.create_channel(db, principal, body)
    return channel_out(channel)


@router.get(W + "/channels/{channel_id}", response_model=ChannelOut)
async def read_channel(
    channel_id: IdParam, db: Db, principal: Principal = authorize("webhook_endpoint", "read", by_id=True)
) -> ChannelOut:
    return channel_out(await service.get_channel(db, channel_id))


@router.patch(W + "/channels/{channel_id}", response_model=ChannelOut)
async def update_channel(
    channel_id: IdParam, body: ChannelUpdate, db: Db, principal: Principal = authorize("webhook_endpoint", "update")
) -> ChannelOut:
    async with db.begin():
        channel = await service.update_channel(db, principal, channel_id, body.model_dump(exclude_unset=True))
    return channel_out(channel)


@router.get(W + "/channels/{channel_id}/messages", response_model=list[MessageOut])
async def list_channel_messages(
    channel_id: IdParam,
    db: Db,
    principal: Principal = authorize("webhook_endpoint", "read", by_id=True),
    conversation: Annotated[str | None, Query(max_length=255)] = None,
    work_order_id: IdQuery | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 500,
) -> list[MessageOut]:
    """The channel's messages in conversation order; ``seq`` numbers them by (sent_at, message_id)."""
    await service.get_channel(db, channel_id)
    shown = await service.list_messages(
        db, channel_id=channel_id, conversation=conversation, work_order_id=work_order_id, limit=limit
    )
    return [MessageOut.model_validate({**_columns(s.message), "seq": s.seq}) for s in shown]


def _columns(row: object) -> dict[str, object]:
    return {column: getattr(row, column) for column in MessageOut.model_fields if column != "seq"}


# --- outbound subscriptions and deliveries (admin) ----------------------------------------------------------------
@router.get(W + "/subscriptions", response_model=list[SubscriptionOut])
async def list_subscriptions(
    db: Db, principal: Principal = authorize("webhook_endpoint", "list")
) -> list[SubscriptionOut]:
    return [SubscriptionOut.model_validate(s) for s in await service.list_subscriptions(db)]


@router.post(W + "/subscriptions", response_model=SubscriptionOut, status_code=201)
async def create_subscription(
    body: SubscriptionCreate, db: Db, principal: Principal = authorize("webhook_endpoint", "create")
) -> SubscriptionOut:
    async with db.begin():
        subscription = await service.create_subscription(db, principal, body)
    return SubscriptionOut.model_validate(subscription)


@router.get(W + "/subscriptions/{subscription_id}", response_model=SubscriptionOut)
async def read_subscription(
    subscription_id: IdParam, db: Db, principal: Principal = authorize("webhook_endpoint", "read", by_id=True)
) -> SubscriptionOut:
    return SubscriptionOut.model_validate(await service.get_subscription(db, subscription_id))


@router.patch(W + "/subscriptions/{subscription_id}", response_model=SubscriptionOut)
async def update_subscription(
    subscription_id: IdParam,
    body: SubscriptionUpdate,
    db: Db,
    principal: Principal = authorize("webhook_endpoint", "update"),
) -> SubscriptionOut:
    async with db.begin():
        subscription = await service.update_subscription(
            db, principal, subscription_id, body.model_dump(exclude_unset=True)
        )
    return SubscriptionOut.model_validate(subscription)


@router.get(W + "/deliveries", response_model=list[DeliveryOut])
async def list_deliveries(
    db: Db,
    principal: Principal = authorize("webhook_endpoint", "list"),
    status: Literal["pending", "delivered", "dead"] | None = None,
    subscription_id: IdQuery | None = None,
    channel_id: IdQuery | None = None,
    before_id: IdQuery | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[DeliveryOut]:
    """Newest first; page with ``before_id`` (the last id of the previous page)."""
    rows = await service.list_deliveries(
        db, status=status, subscription_id=subscription_id, channel_id=channel_id, before_id=before_id, limit=limit
    )
    return [DeliveryOut.model_validate(d) for d in rows]


@router.get(W + "/deliveries/{delivery_id}", response_model=DeliveryOut)
async def read_delivery(
    delivery_id: IdParam, db: Db, principal: Principal = authorize("webhook_endpoint", "read", by_id=True)
) -> DeliveryOut:
    return DeliveryOut.model_validate(await service.get_delivery(db, delivery_id))


@router.post(W + "/deliveries/{delivery_id}/retry", response_model=DeliveryOut)
async def retry_delivery(
    delivery_id: IdParam, db: Db, principal: Principal = authorize("webhook_endpoint", "update")
) -> DeliveryOut:
    async with db.begin():
        delivery = await service.retry_delivery(db, principal, delivery_id)
    return DeliveryOut.model_validate(delivery)
