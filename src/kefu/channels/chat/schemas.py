"""API shapes of the web chat: the pre-chat form, messages, transcript requests, conversations."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, StringConstraints

from kefu.core.schemas import Email, Name, RequestModel, multi_line, single_line

# Hard caps of the request models; the configured limits (settings) are checked by the service, which
# answers 422 with the field name.
MAX_TEXT = 20_000
WidgetKey = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
ClientMessageId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
Phone = Annotated[str, StringConstraints(max_length=32), AfterValidator(single_line)]
Text = Annotated[str, StringConstraints(max_length=MAX_TEXT), AfterValidator(multi_line)]


class ConversationCreate(RequestModel):
    """The pre-chat form. Which fields are required is configured (``chat_required_fields``)."""

    widget: WidgetKey = "default"
    name: Name | None = None
    email: Email | None = None
    phone: Phone | None = None
    question: Text | None = None
    locale: Literal["zh_CN", "en"] = "zh_CN"


class ConversationStarted(BaseModel):
    public_id: str
    token: str  # the visitor's secret: shown once, kept by the widget
    status: str
    last_seq: int
    socket_path: str


class MessageIn(RequestModel):
    text: Text
    client_msg_id: ClientMessageId | None = None


class TranscriptIn(RequestModel):
    email: Email | None = None  # defaults to the address given in the pre-chat form
    request_id: ClientMessageId  # the same id twice sends one mail


class AttachmentOut(BaseModel):
    id: int
    filename: str
    content_type: str
    size: int


class MessageOut(BaseModel):
    seq: int
    sender: str
    author: str | None
    text: str
    code: str | None
    client_msg_id: str | None
    attachment: AttachmentOut | None
    at: datetime


class ConversationOut(BaseModel):
    id: int
    public_id: str
    status: str
    closed_reason: str | None
    queue: str
    interaction_id: int
    agent_id: int | None
    visitor_name: str
    visitor_email: str | None
    visitor_phone: str | None
    last_seq: int
    created_at: datetime
    answered_at: datetime | None
    closed_at: datetime | None


class WidgetOut(BaseModel):
    key: str
    required: list[str]
    max_chars: int
    max_bytes: int
    labels: dict[str, str]


class Accepted(BaseModel):
    created: bool
    seq: int | None = None
