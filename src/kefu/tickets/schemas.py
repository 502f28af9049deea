"""API shapes of work orders, comments, fields, macros, saved views and suggestion forwards."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field, Strict, StringConstraints

from kefu.core.schemas import DbId, Name, RequestModel, ResponseModel, multi_line, single_line

MAX_TITLE_CHARS = 300
MAX_DESCRIPTION_CHARS = 20_000
MAX_COMMENT_CHARS = 20_000
MAX_FIELD_TEXT_CHARS = 1000
MAX_CUSTOM_FIELDS = 50

TypeName = Literal["inquiry", "complaint", "suggestion", "fault", "request"]
StatusName = Literal["new", "open", "pending", "escalated", "resolved", "closed", "reopened"]
PriorityName = Literal["low", "normal", "high", "urgent"]
ViewName = Literal["mine", "team", "overdue", "escalated", "all-visible"]
FieldKind = Literal["text", "number", "date", "choice"]
MacroScope = Literal["personal", "team", "shared"]

Title = Annotated[str, StringConstraints(min_length=1, max_length=MAX_TITLE_CHARS), AfterValidator(single_line)]
Description = Annotated[str, StringConstraints(max_length=MAX_DESCRIPTION_CHARS), AfterValidator(multi_line)]
CommentBody = Annotated[str, StringConstraints(min_length=1, max_length=MAX_COMMENT_CHARS), AfterValidator(multi_line)]
Reason = Annotated[str, StringConstraints(max_length=1000), AfterValidator(multi_line)]
Tag = Annotated[str, StringConstraints(min_length=1, max_length=64), AfterValidator(single_line)]
FieldKey = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_]{0,63}$")]
FieldText = Annotated[str, StringConstraints(max_length=MAX_FIELD_TEXT_CHARS), AfterValidator(multi_line)]
Choice = Annotated[str, StringConstraints(min_length=1, max_length=200), AfterValidator(single_line)]
# Strict numbers: a JSON true must not become 1.
FieldValue = FieldText | Annotated[int, Strict()] | Annotated[float, Strict(), Field(allow_inf_nan=False)] | None
CustomFields = Annotated[dict[FieldKey, FieldValue], Field(max_length=MAX_CUSTOM_FIELDS)]
SearchText = Annotated[str, StringConstraints(max_length=200), AfterValidator(single_line)]
MacroBody = Annotated[str, StringConstraints(min_length=1, max_length=MAX_COMMENT_CHARS), AfterValidator(multi_line)]


# --- work orders -------------------------------------------------------------------------------------
class WorkOrderCreate(RequestModel):
    type: TypeName = "inquiry"
    priority: PriorityName = "normal"
    title: Title
    description: Description = ""
    customer_id: DbId | None = None
    team_id: DbId | None = None
    assignee_id: DbId | None = None
    restricted: bool = False
    tags: list[Tag] = Field(default_factory=list, max_length=50)
    custom_fields: CustomFields = Field(default_factory=dict)


class WorkOrderUpdate(RequestModel):
    """Only the fields sent change; ``null`` clears customer, team or assignee."""

    type: TypeName | None = None
    priority: PriorityName | None = None
    title: Title | None = None
    description: Description | None = None
    customer_id: DbId | None = None
    team_id: DbId | None = None
    assignee_id: DbId | None = None
    restricted: bool | None = None
    # Keys sent are set; a ``null`` value removes the field.
    custom_fields: CustomFields | None = None


class StatusIn(RequestModel):
    status: StatusName
    reason: Reason = ""


class AssignIn(RequestModel):
    assignee_id: DbId | None
    team_id: DbId | None = None


class CommentIn(RequestModel):
    body: CommentBody
    internal: bool = True


class TagsIn(RequestModel):
    tags: list[Tag] = Field(min_length=1, max_length=50)


class LinkIn(RequestModel):
    other_id: DbId


class MergeIn(RequestModel):
    into_id: DbId


class ForwardIn(RequestModel):
    to_user_id: DbId
    question: Description = ""


class AnswerIn(RequestModel):
    answer: CommentBody


class WorkOrderOut(ResponseModel):
    id: int
    number: str
    type: str
    status: str
    priority: str
    title: str
    description: str
    customer_id: int | None
    customer_name: str | None = None
    team_id: int | None
    team_name: str | None = None
    assignee_id: int | None
    assignee_name: str | None = None
    restricted: bool
    tags: list[str] = []
    custom_fields: dict[str, Any]
    created_by_id: int | None
    merged_into_id: int | None
    first_response_due_at: datetime | None
    resolution_due_at: datetime | None
    first_responded_at: datetime | None
    resolved_at: datetime | None
    closed_at: datetime | None
    created_at: datetime
    updated_at: datetime


class WorkOrderItem(ResponseModel):
    """One row of a list: what the list pages and the export show."""

    id: int
    number: str
    type: str
    status: str
    priority: str
    title: str
    customer_id: int | None
    customer_name: str | None
    team_id: int | None
    team_name: str | None
    assignee_id: int | None
    assignee_name: str | None
    restricted: bool
    tags: list[str]
    resolution_due_at: datetime | None
    created_at: datetime
    updated_at: datetime


class WorkOrderPage(BaseModel):
    items: list[WorkOrderItem]
    next_cursor: str | None


class CommentOut(ResponseModel):
    id: int
    work_order_id: int
    author_id: int | None
    author_name: str | None = None
    internal: bool
    body: str
    created_at: datetime


class EventOut(ResponseModel):
    id: int
    actor_id: int | None
    kind: str
    data: dict[str, Any]
    created_at: datetime


class LinkOut(BaseModel):
    other_id: int
    kind: str


class AttachmentOut(ResponseModel):
    id: int
    work_order_id: int
    filename: str
    content_type: str
    size: int
    sha256: str
    uploaded_by_id: int | None
    created_at: datetime


# --- custom fields -----------------------------------------------------------------------------------
class FieldCreate(RequestModel):
    key: FieldKey
    label: Name
    kind: FieldKind = "text"
    choices: list[Choice] = Field(default_factory=list, max_length=200)
    required: bool = False


class FieldUpdate(RequestModel):
    label: Name | None = None
    choices: list[Choice] | None = Field(default=None, max_length=200)
    required: bool | None = None
    active: bool | None = None


class FieldOut(ResponseModel):
    id: int
    key: str
    label: str
    kind: str
    choices: list[str]
    required: bool
    active: bool


# --- list filters and saved views --------------------------------------------------------------------
class FilterIn(RequestModel):
    view: ViewName = "all-visible"
    status: list[StatusName] = Field(default_factory=list, max_length=7)
    type: TypeName | None = None
    priority: PriorityName | None = None
    team_id: DbId | None = None
    assignee_id: DbId | None = None
    customer_id: DbId | None = None
    tag: Tag | None = None
    q: SearchText = ""
    created_from: date | None = None
    created_to: date | None = None


class SavedViewIn(RequestModel):
    name: Name
    filters: FilterIn = Field(default_factory=FilterIn)


class SavedViewOut(ResponseModel):
    id: int
    name: str
    filters: dict[str, Any]
    created_at: datetime


# --- macros ------------------------------------------------------------------------------------------
class MacroActions(RequestModel):
    status: StatusName | None = None
    priority: PriorityName | None = None
    add_tags: list[Tag] = Field(default_factory=list, max_length=20)
    remove_tags: list[Tag] = Field(default_factory=list, max_length=20)


class MacroCreate(RequestModel):
    name: Name
    body: MacroBody
    scope: MacroScope = "personal"
    team_id: DbId | None = None
    actions: MacroActions = Field(default_factory=MacroActions)


class MacroUpdate(RequestModel):
    name: Name | None = None
    body: MacroBody | None = None
    actions: MacroActions | None = None
    active: bool | None = None


class MacroOut(ResponseModel):
    id: int
    name: str
    body: str
    scope: str
    owner_id: int | None
    team_id: int | None
    actions: dict[str, Any]
    active: bool


class RenderIn(RequestModel):
    work_order_id: DbId


class ApplyMacroIn(RequestModel):
    macro_id: DbId


class RenderOut(BaseModel):
    text: str
    unknown_variables: list[str]


class ApplyMacroOut(BaseModel):
    work_order: WorkOrderOut
    comment: CommentOut | None
    unknown_variables: list[str]


# --- suggestions -------------------------------------------------------------------------------------
class ForwardOut(ResponseModel):
    id: int
    work_order_id: int
    work_order_number: str | None = None
    work_order_title: str | None = None
    work_order_description: str | None = None
    to_user_id: int
    question: str
    forwarded_by_id: int | None
    forwarded_at: datetime
    answer: str | None
    answered_at: datetime | None
