"""HTML pages of the webhook channels: the public help-centre contact form, and the admins' page of
inbound channels, outbound subscriptions and deliveries (with their last error and a retry).

Forms are validated by the API's request models, so both paths accept exactly the same input; a refusal
shows the form again with what was typed and nothing written.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.datastructures import UploadFile

from kefu.channels.webhooks import service
from kefu.channels.webhooks.schemas import (
    CHANNEL_KINDS,
    EVENT_TYPES,
    IDENTITY_KINDS,
    ChannelCreate,
    ChannelUpdate,
    SubscriptionCreate,
    SubscriptionUpdate,
    WebFormIn,
)
from kefu.core.errors import ApiError
from kefu.core.policy import Principal, allows, authorize
from kefu.core.schemas import IdParam
from kefu.db.session import get_db
from kefu.web.pages import form_data, render, see_other, validate

router = APIRouter(include_in_schema=False)
Db = Annotated[AsyncSession, Depends(get_db)]
FORM_FIELDS = ("name", "email", "phone", "subject", "message", "submission_id", "website")
DELIVERY_STATUSES = ("pending", "delivered", "dead")


def _(message: str) -> str:
    """Marks a msgid for the catalogue; the template translates it."""
    return message


# --- the help-centre contact form ------------------------------------------------------------------------
def _contact(request: Request, principal: Principal, status_code: int = 200, **context: Any) -> Response:
    context.setdefault("values", {"submission_id": uuid.uuid4().hex})
    context.setdefault("form_errors", [])
    context.setdefault("result", None)
    context.setdefault("limit_kib", request.app.state.settings.webhooks_form_attachment_max_bytes // 1024)
    return render(request, "help/contact.html", principal, status_code=status_code, **context)


@router.get("/help/contact")
async def contact_page(request: Request, principal: Principal = authorize("public", "read")) -> Response:
    return _contact(request, principal)


async def _upload(
    request: Request, limit: int
) -> tuple[service.FormAttachment | None, tuple[str, dict[str, Any]] | None]:
    form = await request.form()
    upload = form.get("attachment")
    if not isinstance(upload, UploadFile) or not upload.filename:
        return None, None
    data = await upload.read(limit + 1)
    if len(data) > limit:
        return None, (_("The attachment is larger than %(kib)s KiB."), {"kib": limit // 1024})
    if not data:
        return None, (_("The attachment is empty."), {})
    return service.FormAttachment(upload.filename, data), None


@router.post("/help/contact")
async def contact_submit(request: Request, db: Db, principal: Principal = authorize("web_form", "create")) -> Response:
    settings = request.app.state.settings
    data = await form_data(request)
    values = {name: str(data.get(name, ""))[:20_000] for name in FORM_FIELDS}
    if not values["submission_id"]:
        values["submission_id"] = uuid.uuid4().hex
    try:
        async with db.begin():
            await service.check_form_rate(db, settings, principal.ip)
    except ApiError as exc:
        wait = _("Too many messages were sent from your network. Wait a few minutes and try again.")
        return _contact(request, principal, exc.status, values=values, form_errors=[(wait, {})])
    limit = settings.webhooks_form_attachment_max_bytes
    attachment, upload_error = await _upload(request, limit)
    if upload_error:
        return _contact(request, principal, 413, values=values, form_errors=[upload_error])
    body, errors = validate(WebFormIn, {k: (v or None) if k == "phone" else v for k, v in values.items()})
    if body is None:
        return _contact(request, principal, 422, values=values, form_errors=[(e, {}) for e in errors])
    try:
        async with db.begin():
            result = await service.submit_web_form(db, settings, body, attachment)
    except ApiError as exc:
        if exc.status >= 500:
            raise
        return _contact(request, principal, exc.status, values=values, form_errors=[(exc.message, {})])
    return _contact(request, principal, values=values, result=result)


# --- admin: channels, subscriptions, deliveries ------------------------------------------------------------
def _flag(value: Any) -> bool:
    # Checkboxes follow a hidden "0" of the same name: the last value sent wins (see form_data).
    return value == "1"


def _channel_values(data: dict[str, Any], *, creating: bool) -> dict[str, Any]:
    values: dict[str, Any] = {}
    names = ("code", "kind") if creating else ()
    for name in (*names, "name", "queue", "identity_kind", "identity_prefix", "outbound_url"):
        if name in data:
            text = str(data[name]).strip()
            values[name] = text or None
    if str(data.get("secret", "")).strip():
        values["secret"] = str(data["secret"]).strip()
    window = str(data.get("conversation_window_seconds", "")).strip()
    if window:
        values["conversation_window_seconds"] = window
    if "active" in data:
        values["active"] = _flag(data["active"])
    if creating:
        values = {k: v for k, v in values.items() if v is not None}
    return values


def _subscription_values(data: dict[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in ("name", "url"):
        if name in data:
            values[name] = str(data[name]).strip()
    if str(data.get("secret", "")).strip():
        values["secret"] = str(data["secret"]).strip()
    values["event_types"] = [str(v) for v in data.get("event_types", [])]
    if "active" in data:
        values["active"] = _flag(data["active"])
    return values


async def _index(
    request: Request, db: AsyncSession, principal: Principal, status_code: int = 200, **context: Any
) -> Response:
    status = request.query_params.get("status")
    status = status if status in DELIVERY_STATUSES else None
    return render(
        request,
        "webhooks/index.html",
        principal,
        status_code=status_code,
        channels=await service.list_channels(db),
        subscriptions=await service.list_subscriptions(db),
        deliveries=await service.list_deliveries(db, status=status, limit=100),
        status=status,
        statuses=DELIVERY_STATUSES,
        kinds=CHANNEL_KINDS,
        identity_kinds=IDENTITY_KINDS,
        event_types=EVENT_TYPES,
        can_create=allows(principal, "webhook_endpoint", "create"),
        can_update=allows(principal, "webhook_endpoint", "update"),
        endpoint=service.endpoint_path,
        channel_form=context.pop("channel_form", {}),
        subscription_form=context.pop("subscription_form", {}),
        **context,
    )


@router.get("/webhooks")
async def webhooks_page(
    request: Request,
    db: Db,
    principal: Principal = authorize("webhook_endpoint", "list"),
) -> Response:
    return await _index(request, db, principal)


@router.post("/webhooks/channels")
async def channel_create(
    request: Request, db: Db, principal: Principal = authorize("webhook_endpoint", "create")
) -> Response:
    data = await form_data(request)
    typed = {k: v for k, v in data.items() if k != "secret"}
    body, errors = validate(ChannelCreate, _channel_values(data, creating=True))
    if body is not None:
        try:
            async with db.begin():
                channel = await service.create_channel(db, principal, body)
        except ApiError as exc:
            if exc.status == 404:
                raise
            errors = [exc.message]
        else:
            return see_other(f"/webhooks/channels/{channel.id}?saved=1")
    return await _index(request, db, principal, 422, errors=errors, channel_form=typed)


async def _channel_page(
    request: Request, db: AsyncSession, principal: Principal, channel_id: int, status_code: int = 200, **context: Any
) -> Response:
    channel = await service.get_channel(db, channel_id)
    return render(
        request,
        "webhooks/channel.html",
        principal,
        status_code=status_code,
        channel=channel,
        endpoint=service.endpoint_path(channel),
        messages=await service.list_messages(db, channel_id=channel_id, limit=200),
        deliveries=await service.list_deliveries(db, channel_id=channel_id, limit=50),
        identity_kinds=IDENTITY_KINDS,
        can_update=allows(principal, "webhook_endpoint", "update"),
        form=context.pop("form", {}),
        **context,
    )


@router.get("/webhooks/channels/{channel_id}")
async def channel_page(
    channel_id: IdParam,
    request: Request,
    db: Db,
    principal: Principal = authorize("webhook_endpoint", "read", by_id=True),
) -> Response:
    return await _channel_page(request, db, principal, channel_id)


@router.post("/webhooks/channels/{channel_id}")
async def channel_update(
    channel_id: IdParam, request: Request, db: Db, principal: Principal = authorize("webhook_endpoint", "update")
) -> Response:
    data = await form_data(request)
    body, errors = validate(ChannelUpdate, _channel_values(data, creating=False))
    if body is not None:
        try:
            async with db.begin():
                await service.update_channel(db, principal, channel_id, body.model_dump(exclude_unset=True))
        except ApiError as exc:
            if exc.status == 404:
                raise
            errors = [exc.message]
        else:
            return see_other(f"/webhooks/channels/{channel_id}?saved=1")
    typed = {k: v for k, v in data.items() if k != "secret"}
    return await _channel_page(request, db, principal, channel_id, 422, errors=errors, form=typed)


@router.post("/webhooks/subscriptions")
async def subscription_create(
    request: Request, db: Db, principal: Principal = authorize("webhook_endpoint", "create")
) -> Response:
    data = await form_data(request)
    typed = {k: v for k, v in data.items() if k != "secret"}
    body, errors = validate(SubscriptionCreate, _subscription_values(data))
    if body is not None:
        async with db.begin():
            subscription = await service.create_subscription(db, principal, body)
        return see_other(f"/webhooks/subscriptions/{subscription.id}?saved=1")
    return await _index(request, db, principal, 422, errors=errors, subscription_form=typed)


async def _subscription_page(
    request: Request,
    db: AsyncSession,
    principal: Principal,
    subscription_id: int,
    status_code: int = 200,
    **context: Any,
) -> Response:
    subscription = await service.get_subscription(db, subscription_id)
    return render(
        request,
        "webhooks/subscription.html",
        principal,
        status_code=status_code,
        subscription=subscription,
        deliveries=await service.list_deliveries(db, subscription_id=subscription_id, limit=100),
        event_types=EVENT_TYPES,
        can_update=allows(principal, "webhook_endpoint", "update"),
        form=context.pop("form", {}),
        **context,
    )


@router.get("/webhooks/subscriptions/{subscription_id}")
async def subscription_page(
    subscription_id: IdParam,
    request: Request,
    db: Db,
    principal: Principal = authorize("webhook_endpoint", "read", by_id=True),
) -> Response:
    return await _subscription_page(request, db, principal, subscription_id)


@router.post("/webhooks/subscriptions/{subscription_id}")
async def subscription_update(
    subscription_id: IdParam, request: Request, db: Db, principal: Principal = authorize("webhook_endpoint", "update")
) -> Response:
    data = await form_data(request)
    body, errors = validate(SubscriptionUpdate, _subscription_values(data))
    if body is not None:
        async with db.begin():
            await service.update_subscription(db, principal, subscription_id, body.model_dump(exclude_unset=True))
        return see_other(f"/webhooks/subscriptions/{subscription_id}?saved=1")
    typed = {k: v for k, v in data.items() if k != "secret"}
    return await _subscription_page(request, db, principal, subscription_id, 422, errors=errors, form=typed)


@router.post("/webhooks/deliveries/{delivery_id}/retry")
async def delivery_retry(
    delivery_id: IdParam,
    request: Request,
    db: Db,
    principal: Principal = authorize("webhook_endpoint", "update"),
    back: Annotated[str, Query(max_length=200)] = "/webhooks",
) -> Response:
    try:
        async with db.begin():
            await service.retry_delivery(db, principal, delivery_id)
    except ApiError as exc:
        if exc.status == 404:
            raise
        return await _index(request, db, principal, exc.status, errors=[exc.message])
    target = back if back.startswith("/webhooks") and "//" not in back else "/webhooks"
    return see_other(target + ("&" if "?" in target else "?") + "saved=1")
