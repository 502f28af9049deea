"""API shapes of IVR flows."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field, StringConstraints

from kefu.core.schemas import Name, RequestModel, multi_line, single_line

from .models import IvrFlowVersion
from .service import FlowView, Simulation

FlowCode = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
# The size limit that counts is the service's (KEFU_IVR_FLOW_MAX_BYTES, with a message naming it); this
# one only keeps absurd bodies out.
Source = Annotated[str, StringConstraints(max_length=1_048_576, strip_whitespace=False), AfterValidator(multi_line)]
Format = Literal["auto", "yaml", "json"]
Number = Annotated[str, StringConstraints(min_length=1, max_length=40), AfterValidator(single_line)]
Note = Annotated[str, StringConstraints(max_length=500), AfterValidator(single_line)]
Digits = Annotated[str, StringConstraints(max_length=64, pattern=r"^[0-9*#]*$")]


class FlowCreate(RequestModel):
    code: FlowCode
    name: Name
    source: Source
    format: Format = "auto"
    numbers: list[Number] = Field(default_factory=list, max_length=50, description="called numbers (DNIS)")
    is_default: bool = False
    active: bool = True
    publish: bool = Field(False, description="publish the first version at once")
    note: Note = ""


class FlowUpdate(RequestModel):
    """Only the fields sent change. ``source`` becomes the draft (replacing an existing draft)."""

    name: Name | None = None
    numbers: list[Number] | None = Field(None, max_length=50)
    is_default: bool | None = None
    active: bool | None = None
    source: Source | None = None
    format: Format = "auto"
    note: Note = ""
    if_version: int | None = Field(None, ge=1, description="the version number the editor opened (stale: 409)")


class PublishIn(RequestModel):
    if_version: int | None = Field(None, ge=1)


class ValidateIn(RequestModel):
    source: Source
    format: Format = "auto"


class SimulateIn(RequestModel):
    caller: Number | None = None
    called: Number | None = None
    inputs: list[Digits | None] = Field(
        default_factory=list, max_length=50, description="what the caller types at each prompt; null = timeout"
    )
    version: Literal["draft", "live"] | Annotated[int, Field(ge=1)] = "draft"
    at: datetime | None = Field(None, description="the moment of the call (opening hours); default now")


class ProblemOut(BaseModel):
    path: str
    message: str
    line: int | None = None


class ValidationOut(BaseModel):
    ok: bool
    errors: list[ProblemOut]
    warnings: list[ProblemOut]


class VersionOut(BaseModel):
    number: int
    status: str
    source_format: str
    note: str
    warnings: list[ProblemOut]
    created_at: datetime
    updated_at: datetime
    published_at: datetime | None
    source: str | None = None
    definition: dict[str, Any] | None = None

    @classmethod
    def of(cls, version: IvrFlowVersion, *, full: bool = True) -> VersionOut:
        return cls(
            number=version.number,
            status=version.status,
            source_format=version.source_format,
            note=version.note,
            warnings=[ProblemOut(**w) for w in version.warnings or []],
            created_at=version.created_at,
            updated_at=version.updated_at,
            published_at=version.published_at,
            source=version.source if full else None,
            definition=version.definition if full else None,
        )


class FlowOut(BaseModel):
    id: int
    code: str
    name: str
    is_default: bool
    active: bool
    numbers: list[str]
    live_version: int | None
    draft_version: int | None
    created_at: datetime
    updated_at: datetime
    live: VersionOut | None = None
    draft: VersionOut | None = None

    @classmethod
    def of(cls, view: FlowView, *, full: bool = False) -> FlowOut:
        flow = view.flow
        return cls(
            id=flow.id,
            code=flow.code,
            name=flow.name,
            is_default=flow.is_default,
            active=flow.active,
            numbers=view.numbers,
            live_version=view.live.number if view.live else None,
            draft_version=view.draft.number if view.draft else None,
            created_at=flow.created_at,
            updated_at=flow.updated_at,
            live=VersionOut.of(view.live) if full and view.live else None,
            draft=VersionOut.of(view.draft) if full and view.draft else None,
        )


class SimulationStepOut(BaseModel):
    kind: Literal["start", "auto", "input"]
    input: str | None
    node: str | None
    instruction: dict[str, Any]
    done: bool
    queue: str | None
    callback: bool
    variables: dict[str, Any]


class SimulationOut(BaseModel):
    version: int
    version_status: str
    steps: list[SimulationStepOut]
    waiting_for_input: bool
    unused_inputs: int

    @classmethod
    def of(cls, result: Simulation) -> SimulationOut:
        return cls(
            version=result.version,
            version_status=result.version_status,
            steps=[SimulationStepOut(**s) for s in result.steps],
            waiting_for_input=result.waiting_for_input,
            unused_inputs=result.unused_inputs,
        )
