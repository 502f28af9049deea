"""API shapes of customers, organisations, identities, notes and merges."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field, StrictBool, StrictInt, StringConstraints

from kefu.core.schemas import DbId, LanguageTag, Name, RequestModel, ResponseModel, multi_line, single_line
from kefu.customers.models import Customer, CustomerIdentity, CustomerMerge, CustomerNote, Organisation

MAX_ATTRIBUTES = 50
MAX_ATTRIBUTE_KEY_CHARS = 64
MAX_ATTRIBUTE_TEXT_CHARS = 1000
MAX_NOTE_CHARS = 10_000
MAX_IDENTITIES_PER_REQUEST = 20

IdentityKindName = Literal["phone", "email", "chat", "sms", "social", "crm"]
ChannelName = Literal["phone", "email", "chat", "sms", "social", "web_form", "walk_in"]
ExternalId = Annotated[str, StringConstraints(min_length=1, max_length=200), AfterValidator(single_line)]
DisplayName = Annotated[str, StringConstraints(min_length=1, max_length=200), AfterValidator(single_line)]
# The raw identity as typed (any phone format...); the service normalizes and validates it.
RawIdentity = Annotated[str, StringConstraints(min_length=1, max_length=254), AfterValidator(single_line)]
Label = Annotated[str, StringConstraints(min_length=1, max_length=64), AfterValidator(single_line)]
NoteBody = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NOTE_CHARS), AfterValidator(multi_line)]
AttributeText = Annotated[str, StringConstraints(max_length=MAX_ATTRIBUTE_TEXT_CHARS), AfterValidator(single_line)]


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("numbers must be finite")
    return value


AttributeValue = StrictBool | StrictInt | Annotated[float, AfterValidator(_finite)] | AttributeText


def check_attributes(value: dict[str, Any]) -> dict[str, Any]:
    """A small flat dict: at most 50 keys of 1-64 printable characters."""
    if len(value) > MAX_ATTRIBUTES:
        raise ValueError(f"at most {MAX_ATTRIBUTES} attributes")
    for key in value:
        if not key.strip() or key != key.strip() or len(key) > MAX_ATTRIBUTE_KEY_CHARS or not key.isprintable():
            raise ValueError(
                f"attribute names are 1-{MAX_ATTRIBUTE_KEY_CHARS} printable characters, without edge spaces"
            )
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("attribute names must be valid Unicode") from None
    return value


Attributes = Annotated[dict[str, AttributeValue], AfterValidator(check_attributes)]


# --- requests ------------------------------------------------------------------------------------
class IdentityIn(RequestModel):
    kind: IdentityKindName
    value: RawIdentity
    label: Label | None = None
    verified: bool = False


class CustomerCreate(RequestModel):
    display_name: DisplayName
    external_id: ExternalId | None = None
    organisation_id: DbId | None = None
    language: LanguageTag | None = None
    preferred_channel: ChannelName | None = None
    attributes: Attributes = {}
    identities: Annotated[list[IdentityIn], Field(max_length=MAX_IDENTITIES_PER_REQUEST)] = []


class CustomerUpdate(RequestModel):
    """Fields left out keep their value; ``null`` clears an optional one."""

    display_name: DisplayName | None = None
    external_id: ExternalId | None = None
    organisation_id: DbId | None = None
    language: LanguageTag | None = None
    preferred_channel: ChannelName | None = None
    # Replaces the whole dict (send the current one with your change).
    attributes: Attributes | None = None


class NoteIn(RequestModel):
    body: NoteBody


class MergeIn(RequestModel):
    survivor_id: DbId
    merged_id: DbId


class OrganisationCreate(RequestModel):
    name: Name
    external_id: ExternalId | None = None
    attributes: Attributes = {}


class OrganisationUpdate(RequestModel):
    name: Name | None = None
    external_id: ExternalId | None = None
    attributes: Attributes | None = None


# --- answers -------------------------------------------------------------------------------------
class IdentityOut(ResponseModel):
    id: int
    kind: str
    value: str
    label: str | None
    verified: bool
    created_at: datetime

    @classmethod
    def of(cls, identity: CustomerIdentity) -> IdentityOut:
        return cls.model_validate(identity)


class CustomerOut(ResponseModel):
    id: int
    display_name: str
    external_id: str | None
    organisation_id: int | None
    language: str | None
    preferred_channel: str | None
    attributes: dict[str, Any]
    # Set on a customer merged into another: the client follows it to the survivor.
    merged_into_id: int | None
    identities: list[IdentityOut]
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, customer: Customer) -> CustomerOut:
        return cls.model_validate(customer)


class CustomerPage(BaseModel):
    items: list[CustomerOut]
    # Oldest first: pass this as after_id for the next page; None on the last page.
    next_after_id: int | None


class NoteOut(ResponseModel):
    id: int
    customer_id: int
    author_id: int | None
    author_name: str | None = None
    body: str
    created_at: datetime

    @classmethod
    def of(cls, note: CustomerNote, names: dict[int, str]) -> NoteOut:
        out = cls.model_validate(note)
        out.author_name = names.get(note.author_id) if note.author_id is not None else None
        return out


class NotePage(BaseModel):
    items: list[NoteOut]
    # Newest first: pass this as before_id for the next (older) page; None on the last page.
    next_before_id: int | None


class MergeOut(ResponseModel):
    id: int
    survivor_id: int
    merged_id: int
    moved: dict[str, list[int]]
    merged_by_id: int | None
    merged_at: datetime
    unmerged_by_id: int | None
    unmerged_at: datetime | None

    @classmethod
    def of(cls, merge: CustomerMerge) -> MergeOut:
        return cls.model_validate(merge)


class OrganisationOut(ResponseModel):
    id: int
    name: str
    external_id: str | None
    attributes: dict[str, Any]
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, organisation: Organisation) -> OrganisationOut:
        return cls.model_validate(organisation)


class OrganisationPage(BaseModel):
    items: list[OrganisationOut]
    next_after_id: int | None


class ImportErrorOut(BaseModel):
    line: int
    message: str


class ImportReportOut(BaseModel):
    created: int
    updated: int
    unchanged: int
    errors: list[ImportErrorOut]
