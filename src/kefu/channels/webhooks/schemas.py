"""API shapes of the webhook channels. Secrets are accepted, never returned (``has_secret`` instead)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, AwareDatetime, ConfigDict, Field, StringConstraints, model_validator

from kefu.core.schemas import Email, Name, RequestModel, ResponseModel, multi_line, single_line

CODE_PATTERN = r"^[a-z0-9][a-z0-9_-]{1,63}$"
PREFIX_PATTERN = r"^[a-z][a-z0-9_.-]{0,31}$"
URL_MAX = 2000
SECRET_MIN = 16
TEXT_MAX = 10_000
MAX_ATTACHMENTS = 20
# What a subscription may ask for. "*" is every type.
EVENT_TYPES = (
    "work_order.created",
    "work_order.updated",
    "work_order.status",
    "work_order.assigned",
    "work_order.commented",
    "work_order.merged",
    "interaction.created",
    "sms.message",
    "social.message",
    "chat.message",
    "web_form.submitted",
)
CHANNEL_KINDS = ("sms", "social", "other")
IDENTITY_KINDS = ("phone", "sms", "social")


def http_url(value: str) -> str:
    """An absolute http(s) URL without credentials in it (they would end up in logs)."""
    single_line(value)
    if any(ch.isspace() for ch in value):
        raise ValueError("a URL must not contain spaces")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https"):
        raise ValueError("only http:// and https:// URLs are allowed")
    if not parts.hostname:
        raise ValueError("the URL has no host")
    if parts.username or parts.password:
        raise ValueError("put no user name or password into the URL; the request is signed instead")
    try:
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise ValueError("the URL has an invalid port") from None
    return value


def _event_types(values: list[str]) -> list[str]:
    unknown = [v for v in values if v != "*" and v not in EVENT_TYPES]
    if unknown:
        raise ValueError(f"unknown event types {unknown[:5]}; known: {', '.join(EVENT_TYPES)} or *")
    return sorted(set(values))


Code = Annotated[str, StringConstraints(min_length=2, max_length=64, pattern=CODE_PATTERN)]
Url = Annotated[str, StringConstraints(min_length=8, max_length=URL_MAX), AfterValidator(http_url)]
Secret = Annotated[str, StringConstraints(min_length=SECRET_MIN, max_length=256), AfterValidator(single_line)]
Prefix = Annotated[str, StringConstraints(min_length=1, max_length=32, pattern=PREFIX_PATTERN)]
QueueCode = Annotated[str, StringConstraints(min_length=1, max_length=64), AfterValidator(single_line)]
Window = Annotated[int, Field(ge=60, le=30 * 86400)]
EventTypes = Annotated[list[str], Field(min_length=1, max_length=len(EVENT_TYPES) + 1), AfterValidator(_event_types)]


# --- inbound channels ------------------------------------------------------------------------------
class ChannelCreate(RequestModel):
    code: Code
    kind: Literal["sms", "social", "other"]
    name: Name
    secret: Secret = Field(repr=False)
    queue: QueueCode | None = None
    # Default by kind: sms -> phone, social -> social, other -> sms (a gateway handle).
    identity_kind: Literal["phone", "sms", "social"] | None = None
    identity_prefix: Prefix | None = None
    outbound_url: Url | None = None
    conversation_window_seconds: Window = 86400
    active: bool = True


class ChannelUpdate(RequestModel):
    """The code is what the gateway posts to and cannot change; a blank secret keeps the current one."""

    name: Name | None = None
    secret: Secret | None = Field(default=None, repr=False)
    queue: QueueCode | None = None
    identity_kind: Literal["phone", "sms", "social"] | None = None
    identity_prefix: Prefix | None = None
    outbound_url: Url | None = None
    conversation_window_seconds: Window | None = None
    active: bool | None = None


class ChannelOut(ResponseModel):
    id: int
    code: str
    kind: str
    name: str
    queue: str | None
    identity_kind: str
    identity_prefix: str | None
    outbound_url: str | None
    conversation_window_seconds: int
    active: bool
    has_secret: bool = True
    endpoint: str = ""
    created_at: datetime
    updated_at: datetime


# --- inbound messages --------------------------------------------------------------------------------
class AttachmentIn(RequestModel):
    url: Url
    name: Annotated[str, StringConstraints(min_length=1, max_length=255), AfterValidator(single_line)]
    type: Annotated[str, StringConstraints(max_length=100, pattern=r"^[\w.+-]+/[\w.+-]+$")] | None = None


class InboundMessageIn(RequestModel):
    """One message a gateway posts. ``from`` is the customer, ``to`` the number/account they wrote to."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, populate_by_name=True)

    message_id: Annotated[str, StringConstraints(min_length=1, max_length=200), AfterValidator(single_line)]
    sender: Annotated[str, StringConstraints(min_length=1, max_length=254), AfterValidator(single_line)] = Field(
        alias="from"
    )
    to: Annotated[str, StringConstraints(min_length=1, max_length=254), AfterValidator(single_line)]
    text: Annotated[str, StringConstraints(max_length=TEXT_MAX), AfterValidator(multi_line)] = ""
    sent_at: AwareDatetime
    attachments: Annotated[list[AttachmentIn], Field(max_length=MAX_ATTACHMENTS)] = []
    conversation_id: (
        Annotated[str, StringConstraints(min_length=1, max_length=128), AfterValidator(single_line)] | None
    ) = None

    @model_validator(mode="after")
    def _something_said(self) -> InboundMessageIn:
        if not self.text and not self.attachments:
            raise ValueError("a message needs text or attachments")
        return self


class MessageResult(ResponseModel):
    message_id: str
    status: Literal["created", "duplicate"]
    conversation: str
    interaction_id: int | None
    work_order_id: int | None
    work_order_number: str | None


class InboundResponse(ResponseModel):
    results: list[MessageResult]


class MessageOut(ResponseModel):
    seq: int
    id: int
    channel_id: int
    message_id: str
    direction: str
    customer_address: str
    channel_address: str
    text: str
    attachments: list[dict[str, Any]]
    conversation_key: str
    sent_at: datetime
    interaction_id: int | None
    work_order_id: int | None
    delivery_id: str | None


# --- outbound subscriptions and deliveries --------------------------------------------------------------
class SubscriptionCreate(RequestModel):
    name: Name
    url: Url
    secret: Secret = Field(repr=False)
    event_types: EventTypes
    active: bool = True


class SubscriptionUpdate(RequestModel):
    name: Name | None = None
    url: Url | None = None
    secret: Secret | None = Field(default=None, repr=False)
    event_types: EventTypes | None = None
    active: bool | None = None


class SubscriptionOut(ResponseModel):
    id: int
    name: str
    url: str
    event_types: list[str]
    active: bool
    has_secret: bool = True
    created_at: datetime
    updated_at: datetime


class DeliveryOut(ResponseModel):
    id: int
    delivery_id: str
    subscription_id: int | None
    channel_id: int | None
    event_type: str
    payload: dict[str, Any]
    status: str
    attempts: int
    max_attempts: int
    next_attempt_at: datetime | None
    last_status: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None


# --- the help-centre web form ------------------------------------------------------------------------
SubmissionId = Annotated[str, StringConstraints(min_length=8, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


class WebFormAttachmentIn(RequestModel):
    name: Annotated[str, StringConstraints(min_length=1, max_length=255), AfterValidator(single_line)]
    content_base64: Annotated[str, StringConstraints(min_length=1, max_length=8 * 1024 * 1024)] = Field(repr=False)


class WebFormIn(RequestModel):
    name: Name
    email: Email
    phone: Annotated[str, StringConstraints(max_length=40), AfterValidator(single_line)] | None = None
    subject: Annotated[str, StringConstraints(min_length=1, max_length=200), AfterValidator(single_line)]
    message: Annotated[str, StringConstraints(min_length=1, max_length=TEXT_MAX), AfterValidator(multi_line)]
    # Resubmitting the same form (a double click, a retried request) answers with the same case.
    submission_id: SubmissionId | None = None
    # The honeypot: people never see it, so anything in it was written by a robot.
    website: Annotated[str, StringConstraints(max_length=500)] = ""
    attachment: WebFormAttachmentIn | None = None


class WebFormOut(ResponseModel):
    status: Literal["received"]
    case_number: str | None
    submission_id: str
