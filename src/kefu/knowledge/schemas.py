"""API shapes of the knowledge base (articles, versions, categories)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, StringConstraints

from kefu.core.schemas import DbId, LanguageTag, RequestModel, ResponseModel, multi_line, single_line
from kefu.knowledge.content import MAX_BODY_CHARS
from kefu.knowledge.models import ArticleVersion
from kefu.knowledge.service import ArticleView, Content, Placement

Title = Annotated[str, StringConstraints(min_length=1, max_length=300), AfterValidator(single_line)]
Body = Annotated[str, StringConstraints(max_length=MAX_BODY_CHARS), AfterValidator(multi_line)]
Phrase = Annotated[str, StringConstraints(min_length=1, max_length=300), AfterValidator(single_line)]
Tag = Annotated[str, StringConstraints(min_length=1, max_length=64), AfterValidator(single_line)]
Note = Annotated[str, StringConstraints(max_length=500), AfterValidator(multi_line)]
Comment = Annotated[str, StringConstraints(max_length=2000), AfterValidator(multi_line)]
CaseText = Annotated[str, StringConstraints(max_length=50_000), AfterValidator(multi_line)]
ExternalId = Annotated[str, StringConstraints(min_length=1, max_length=200), AfterValidator(single_line)]
Kind = Literal["faq", "case", "experience"]
AudienceName = Literal["internal", "public"]


class CaseFields(RequestModel):
    problem: CaseText = ""
    analysis: CaseText = ""
    resolution: CaseText = ""
    lessons: CaseText = ""


class ContentIn(RequestModel):
    title: Title
    body_markdown: Body = ""
    similar_questions: list[Phrase] = Field(default_factory=list, max_length=200)
    tags: list[Tag] = Field(default_factory=list, max_length=50)
    case_fields: CaseFields | None = None
    change_note: Note = ""

    def content(self) -> Content:
        return Content(
            title=self.title,
            body_markdown=self.body_markdown,
            similar_questions=list(self.similar_questions),
            tags=list(self.tags),
            case_fields={k: v for k, v in (self.case_fields.model_dump() if self.case_fields else {}).items() if v},
            change_note=self.change_note,
        )


class ArticleCreate(ContentIn):
    kind: Kind = "faq"
    audience: AudienceName = "internal"
    language: LanguageTag = "zh-CN"
    category_id: DbId | None = None
    owner_id: DbId | None = None
    translation_of: DbId | None = None
    verify_interval_days: int | None = Field(default=None, ge=1, le=3650)
    effective_from: datetime | None = None
    expires_at: datetime | None = None
    external_id: ExternalId | None = None

    def placement(self) -> Placement:
        return Placement(
            kind=self.kind,
            audience=self.audience,
            language=self.language,
            category_id=self.category_id,
            owner_id=self.owner_id,
            translation_of=self.translation_of,
            verify_interval_days=self.verify_interval_days,
            effective_from=self.effective_from,
            expires_at=self.expires_at,
        )


class DraftIn(ContentIn):
    expected_version: int | None = Field(default=None, ge=1, description="the version the editor started from")


class PlacementUpdate(RequestModel):
    audience: AudienceName | None = None
    language: LanguageTag | None = None
    category_id: DbId | None = None
    owner_id: DbId | None = None
    verify_interval_days: int | None = Field(default=None, ge=1, le=3650)
    effective_from: datetime | None = None
    expires_at: datetime | None = None


class SubmitIn(RequestModel):
    reviewer_id: DbId


class ReviewIn(RequestModel):
    approve: bool
    comment: Comment = ""


class PublishIn(RequestModel):
    publish_at: datetime | None = None
    announce: bool = False
    requires_ack: bool = False


class CategoryIn(RequestModel):
    name: Phrase
    parent_id: DbId | None = None
    position: int = Field(default=0, ge=0, le=100_000)


class CategoryOut(ResponseModel):
    id: int
    name: str
    parent_id: int | None
    position: int


class VersionOut(ResponseModel):
    number: int
    status: str
    title: str
    body_markdown: str
    body_html: str
    similar_questions: list[str]
    tags: list[str]
    case_fields: dict[str, str]
    change_note: str
    author_id: int | None
    reviewer_id: int | None
    review_comment: str
    based_on_version: int | None
    feedback_thread_id: int | None
    created_at: datetime
    submitted_at: datetime | None
    reviewed_at: datetime | None
    publish_at: datetime | None
    published_at: datetime | None
    published_by_id: int | None


class VersionSummary(ResponseModel):
    number: int
    status: str
    title: str
    author_id: int | None
    reviewer_id: int | None
    change_note: str
    created_at: datetime
    published_at: datetime | None


class ArticleOut(ResponseModel):
    id: int
    external_id: str | None
    kind: str
    audience: str
    language: str
    translation_group_id: int | None
    category_id: int | None
    owner_id: int | None
    status: str
    archived_at: datetime | None
    effective_from: datetime | None
    expires_at: datetime | None
    verify_interval_days: int | None
    last_verified_at: datetime | None
    live: VersionOut | None
    working: VersionOut | None

    @classmethod
    def of(cls, view: ArticleView) -> ArticleOut:
        a = view.article
        return cls(
            id=a.id,
            external_id=a.external_id,
            kind=a.kind,
            audience=a.audience,
            language=a.language,
            translation_group_id=a.translation_group_id,
            category_id=a.category_id,
            owner_id=a.owner_id,
            status=view.status,
            archived_at=a.archived_at,
            effective_from=a.effective_from,
            expires_at=a.expires_at,
            verify_interval_days=a.verify_interval_days,
            last_verified_at=a.last_verified_at,
            live=_version(view.live),
            working=_version(view.working),
        )


class ArticleSummary(ResponseModel):
    id: int
    kind: str
    audience: str
    language: str
    category_id: int | None
    owner_id: int | None
    status: str
    title: str
    version: int
    updated_at: datetime

    @classmethod
    def of(cls, view: ArticleView) -> ArticleSummary:
        current = view.current
        return cls(
            id=view.article.id,
            kind=view.article.kind,
            audience=view.article.audience,
            language=view.article.language,
            category_id=view.article.category_id,
            owner_id=view.article.owner_id,
            status=view.status,
            title=current.title,
            version=current.number,
            updated_at=view.article.updated_at,
        )


def _version(version: ArticleVersion | None) -> VersionOut | None:
    return VersionOut.model_validate(version) if version is not None else None


class DiffLine(ResponseModel):
    op: Literal["same", "removed", "added"]
    text: str


class FieldDiff(ResponseModel):
    field: str
    lines: list[DiffLine]
