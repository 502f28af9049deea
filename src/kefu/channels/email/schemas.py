"""API shapes of the email channel. The IMAP password is accepted, never returned."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, Field, StringConstraints

from kefu.core.schemas import DbId, Email, RequestModel, ResponseModel, multi_line, single_line

Code = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_.-]*$")]
Line = Annotated[str, StringConstraints(max_length=255), AfterValidator(single_line)]
DisplayName = Annotated[str, StringConstraints(max_length=128), AfterValidator(single_line)]
QueueCode = Annotated[str, StringConstraints(max_length=64), AfterValidator(single_line)]
Secret = Annotated[str, StringConstraints(max_length=255, strip_whitespace=False), AfterValidator(single_line)]
Note = Annotated[str, StringConstraints(max_length=2000), AfterValidator(multi_line)]


class MailboxCreate(RequestModel):
    code: Code
    address: Email
    display_name: DisplayName = ""
    queue: QueueCode | None = None
    active: bool = True
    imap_host: Line = ""
    imap_port: int = Field(default=993, ge=0, le=65535)
    imap_tls: bool = True
    imap_username: Line = ""
    imap_password: Secret = Field(default="", repr=False)
    imap_folder: Line = "INBOX"
    poll_seconds: int = Field(default=60, ge=5, le=86_400)


class MailboxUpdate(RequestModel):
    code: Code | None = None
    address: Email | None = None
    display_name: DisplayName | None = None
    queue: QueueCode | None = None
    active: bool | None = None
    imap_host: Line | None = None
    imap_port: int | None = Field(default=None, ge=0, le=65535)
    imap_tls: bool | None = None
    imap_username: Line | None = None
    # Absent or null: unchanged; "": cleared.
    imap_password: Secret | None = Field(default=None, repr=False)
    imap_folder: Line | None = None
    poll_seconds: int | None = Field(default=None, ge=5, le=86_400)


class MailboxOut(ResponseModel):
    id: int
    code: str
    address: str
    display_name: str
    queue: str | None
    active: bool
    imap_host: str
    imap_port: int
    imap_tls: bool
    imap_username: str
    imap_password_set: bool
    imap_folder: str
    poll_seconds: int
    imap_uidvalidity: int | None
    imap_last_uid: int
    created_at: datetime
    updated_at: datetime


class QuarantineOut(ResponseModel):
    id: int
    mailbox_id: int | None
    reason: str
    detail: str
    source: str
    message_id: str | None
    from_address: str
    subject: str
    raw_size: int
    received_at: datetime
    resolution: str | None
    resolved_at: datetime | None
    resolved_by_id: int | None
    resolution_note: str
    email_message_id: int | None


class QuarantineDetail(QuarantineOut):
    # The raw source as text (undecodable bytes replaced), at most RAW_TEXT_MAX characters;
    # the exact bytes: GET .../raw.
    raw_text: str
    raw_truncated: bool


class QuarantinePage(ResponseModel):
    items: list[QuarantineOut]
    next_before_id: int | None


class ReleaseIn(RequestModel):
    note: Note = ""


class DiscardIn(RequestModel):
    note: Annotated[Note, StringConstraints(min_length=1)]


class ReleaseOut(ResponseModel):
    quarantine: QuarantineOut
    outcome: str
    email_message_id: int | None
    work_order_id: int | None


class ReplyIn(RequestModel):
    """An agent's reply on a case, sent as mail (threaded to the customer's latest mail on the case)."""

    body: Annotated[str, StringConstraints(min_length=1, max_length=100_000)]
    to: list[Annotated[str, StringConstraints(max_length=254)]] | None = Field(default=None, max_length=20)
    cc: list[Annotated[str, StringConstraints(max_length=254)]] | None = Field(default=None, max_length=20)
    mailbox_id: DbId | None = None


class ReplyOut(ResponseModel):
    outbound_id: int
    message_id: str
    state: str
