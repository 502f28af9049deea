"""REST routes of knowledge articles: CRUD, the review workflow, history and categories."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request, Response, UploadFile
from pydantic import AfterValidator, BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncSession

from kefu.core.errors import Invalid, NotFound
from kefu.core.policy import Principal, authorize
from kefu.core.schemas import MAX_ID, DbId, IdParam, IdQuery, RequestModel, query_text, single_line
from kefu.db.base import utcnow
from kefu.db.session import get_db
from kefu.identity.schemas import UserOut
from kefu.knowledge import attachments, service
from kefu.knowledge.index import KnowledgeIndex, log_search, search_gaps
from kefu.knowledge.models import SearchLog
from kefu.knowledge.schemas import (
    ArticleCreate,
    ArticleOut,
    ArticleSummary,
    CategoryIn,
    CategoryOut,
    DiffLine,
    DraftIn,
    FieldDiff,
    PlacementUpdate,
    PublishIn,
    ReviewIn,
    SubmitIn,
    VersionOut,
    VersionSummary,
)

router = APIRouter(prefix="/api/v1/kb", tags=["knowledge"])
Db = Annotated[AsyncSession, Depends(get_db)]
VersionNumber = Annotated[int, Query(ge=1, le=1_000_000)]


class ArticlePage(BaseModel):
    items: list[ArticleSummary]
    next_after_id: int | None


@router.get("/articles")
async def list_articles(
    db: Db,
    principal: Principal = authorize("article", "list"),
    status: Literal["published", "draft", "in_review", "approved", "archived"] | None = None,
    kind: Literal["faq", "case", "experience"] | None = None,
    audience: Literal["internal", "public"] | None = None,
    language: query_text(16) | None = None,  # type: ignore[valid-type]
    category_id: IdQuery | None = None,
    owner_id: IdQuery | None = None,
    title: query_text(100) = "",  # type: ignore[valid-type]
    after_id: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> ArticlePage:
    flt = service.ArticleFilter(
        status=status,
        kind=kind,
        audience=audience,
        language=language,
        category_id=category_id,
        owner_id=owner_id,
        title=title,
    )
    views = await service.list_articles(db, principal, flt, after_id=after_id, limit=limit)
    return ArticlePage(
        items=[ArticleSummary.of(v) for v in views], next_after_id=views[-1].article.id if len(views) == limit else None
    )


@router.post("/articles", status_code=201)
async def create_article(
    body: ArticleCreate, db: Db, principal: Principal = authorize("article", "create")
) -> ArticleOut:
    async with db.begin():
        view = await service.create_article(
            db, principal, body.content(), body.placement(), external_id=body.external_id
        )
    return ArticleOut.of(view)


@router.get("/articles/{article_id}")
async def get_article(
    article_id: IdParam, db: Db, principal: Principal = authorize("article", "read", by_id=True)
) -> ArticleOut:
    return ArticleOut.of(await service.get_article(db, principal, article_id))


@router.put("/articles/{article_id}/draft")
async def save_draft(
    article_id: IdParam, body: DraftIn, db: Db, principal: Principal = authorize("article", "update", by_id=True)
) -> ArticleOut:
    async with db.begin():
        view = await service.save_draft(
            db, principal, article_id, body.content(), expected_version=body.expected_version
        )
    return ArticleOut.of(view)


@router.patch("/articles/{article_id}")
async def update_placement(
    article_id: IdParam,
    body: PlacementUpdate,
    db: Db,
    principal: Principal = authorize("article", "publish", by_id=True),
) -> ArticleOut:
    changes = body.model_dump(exclude_unset=True)
    if not changes:
        raise Invalid("nothing to change")
    async with db.begin():
        view = await service.update_placement(db, principal, article_id, **changes)
    return ArticleOut.of(view)


@router.post("/articles/{article_id}/submit")
async def submit(
    article_id: IdParam, body: SubmitIn, db: Db, principal: Principal = authorize("article", "submit", by_id=True)
) -> ArticleOut:
    async with db.begin():
        view = await service.submit_for_review(db, principal, article_id, body.reviewer_id)
    return ArticleOut.of(view)


@router.post("/articles/{article_id}/withdraw")
async def withdraw(
    article_id: IdParam, db: Db, principal: Principal = authorize("article", "update", by_id=True)
) -> ArticleOut:
    async with db.begin():
        view = await service.withdraw(db, principal, article_id)
    return ArticleOut.of(view)


@router.post("/articles/{article_id}/review")
async def review(
    article_id: IdParam, body: ReviewIn, db: Db, principal: Principal = authorize("article", "review", by_id=True)
) -> ArticleOut:
    async with db.begin():
        view = await service.review(db, principal, article_id, approve=body.approve, comment=body.comment)
    return ArticleOut.of(view)


@router.post("/articles/{article_id}/publish")
async def publish(
    article_id: IdParam,
    body: PublishIn,
    request: Request,
    db: Db,
    principal: Principal = authorize("article", "publish", by_id=True),
) -> ArticleOut:
    async with db.begin():
        view = await service.publish(
            db,
            principal,
            request.app.state.settings,
            article_id,
            publish_at=body.publish_at,
            announce=body.announce,
            requires_ack=body.requires_ack,
        )
    return ArticleOut.of(view)


@router.post("/articles/{article_id}/archive")
async def archive(
    article_id: IdParam, db: Db, principal: Principal = authorize("article", "archive", by_id=True)
) -> ArticleOut:
    async with db.begin():
        view = await service.archive(db, principal, article_id)
    return ArticleOut.of(view)


@router.post("/articles/{article_id}/unarchive")
async def unarchive(
    article_id: IdParam, db: Db, principal: Principal = authorize("article", "archive", by_id=True)
) -> ArticleOut:
    async with db.begin():
        view = await service.unarchive(db, principal, article_id)
    return ArticleOut.of(view)


@router.post("/articles/{article_id}/verify")
async def verify(
    article_id: IdParam, db: Db, principal: Principal = authorize("article", "verify", by_id=True)
) -> ArticleOut:
    async with db.begin():
        view = await service.verify(db, principal, article_id)
    return ArticleOut.of(view)


@router.get("/articles/{article_id}/versions")
async def list_versions(
    article_id: IdParam, db: Db, principal: Principal = authorize("article", "history", by_id=True)
) -> list[VersionSummary]:
    return [VersionSummary.model_validate(v) for v in await service.versions(db, principal, article_id)]


@router.get("/articles/{article_id}/versions/{number}")
async def get_version(
    article_id: IdParam,
    number: Annotated[int, IdParam],
    db: Db,
    principal: Principal = authorize("article", "history", by_id=True),
) -> VersionOut:
    return VersionOut.model_validate(await service.get_version(db, principal, article_id, number))


@router.get("/articles/{article_id}/diff")
async def diff(
    article_id: IdParam,
    db: Db,
    from_version: Annotated[int, Query(alias="from", ge=1)],
    to_version: Annotated[int, Query(alias="to", ge=1)],
    principal: Principal = authorize("article", "history", by_id=True),
) -> list[FieldDiff]:
    old = await service.get_version(db, principal, article_id, from_version)
    new = await service.get_version(db, principal, article_id, to_version)
    return [
        FieldDiff(field=d["field"], lines=[DiffLine(op=op, text=text) for op, text in d["lines"]])
        for d in service.diff_versions(old, new)
    ]


@router.post("/articles/{article_id}/versions/{number}/restore")
async def restore(
    article_id: IdParam,
    number: Annotated[int, IdParam],
    db: Db,
    principal: Principal = authorize("article", "update", by_id=True),
) -> ArticleOut:
    async with db.begin():
        view = await service.restore_version(db, principal, article_id, number)
    return ArticleOut.of(view)


@router.get("/verification-due")
async def verification_due(
    db: Db, principal: Principal = authorize("article", "verify"), mine: bool = False
) -> list[ArticleSummary]:
    articles = await service.needing_verification(db, owner_id=principal.user_id if mine else None)
    return [ArticleSummary.of(await service.get_article(db, principal, a.id)) for a in articles[:200]]


@router.get("/reviewers")
async def list_reviewers(db: Db, principal: Principal = authorize("article", "submit")) -> list[UserOut]:
    return [UserOut.of(u) for u in await service.reviewers(db)]


@router.get("/categories")
async def list_categories(db: Db, principal: Principal = authorize("category", "list")) -> list[CategoryOut]:
    return [CategoryOut.model_validate(c) for c in await service.list_categories(db)]


@router.post("/categories", status_code=201)
async def create_category(
    body: CategoryIn, db: Db, principal: Principal = authorize("category", "manage")
) -> CategoryOut:
    async with db.begin():
        category = await service.create_category(
            db, principal, name=body.name, parent_id=body.parent_id, position=body.position
        )
    return CategoryOut.model_validate(category)


# --- search --------------------------------------------------------------------------------------
class SearchHitOut(BaseModel):
    article_id: int
    score: float
    title_html: str = Field(description="escaped title, query terms in <mark>")
    snippet_html: str = Field(description="escaped snippet, query terms in <mark>")


class SearchOut(BaseModel):
    search_id: int
    hits: list[SearchHitOut]


Query_ = Annotated[str, Query(min_length=1, max_length=200), AfterValidator(single_line)]


@router.get("/search")
async def search(
    request: Request,
    db: Db,
    q: Query_,
    principal: Principal = authorize("article", "search"),
    category_id: IdQuery | None = None,
    tag: Annotated[list[Annotated[str, AfterValidator(single_line)]], Query(max_length=10)] = [],  # noqa: B006 - FastAPI reads it, never mutated
    language: query_text(16) | None = None,  # type: ignore[valid-type]
    surface: Literal["agent", "help_centre", "api"] = "api",
    limit: Annotated[int, Query(ge=1, le=50)] = 10,
) -> SearchOut:
    index: KnowledgeIndex = request.app.state.kb_index
    hits = index.search(principal, q, category_id=category_id, tags=tuple(tag), language=language, limit=limit)
    async with db.begin():
        entry = await log_search(db, principal, q, hits, surface)
    return SearchOut(
        search_id=entry.id,
        hits=[
            SearchHitOut(article_id=int(h.id), score=round(h.score, 4), title_html=h.title, snippet_html=h.snippet)
            for h in hits
        ],
    )


class SearchOutcome(RequestModel):
    article_id: DbId
    solved: bool = False


@router.post("/search/{search_id}/outcome", status_code=204)
async def search_outcome(
    search_id: IdParam, body: SearchOutcome, db: Db, principal: Principal = authorize("article", "search", by_id=True)
) -> Response:
    """What the searcher did with the results: opened an article, and whether it solved the question."""
    async with db.begin():
        entry = await db.get(SearchLog, search_id, with_for_update=True)
        if entry is None or entry.user_id != principal.user_id:
            raise NotFound("search")
        entry.clicked_article_id = body.article_id
        entry.solved = entry.solved or body.solved
    return Response(status_code=204)


class SuggestionOut(BaseModel):
    text: str
    article_id: int


@router.get("/suggest")
async def suggest(
    request: Request,
    q: Query_,
    principal: Principal = authorize("article", "search"),
    limit: Annotated[int, Query(ge=1, le=20)] = 8,
) -> list[SuggestionOut]:
    index: KnowledgeIndex = request.app.state.kb_index
    return [SuggestionOut(text=s.text, article_id=int(s.id)) for s in index.suggest(principal, q, limit=limit)]


class GapOut(BaseModel):
    query: str
    searches: int
    no_result: int
    unresolved: int
    last_searched_at: datetime


@router.get("/search-gaps")
async def search_gap_report(
    db: Db,
    principal: Principal = authorize("search_report", "read"),
    days: Annotated[int, Query(ge=1, le=365)] = 30,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[GapOut]:
    rows = await search_gaps(db, since=utcnow() - timedelta(days=days), limit=limit)
    return [GapOut(**vars(r)) for r in rows]


# --- attachments ---------------------------------------------------------------------------------
class AttachmentOut(BaseModel):
    id: int
    filename: str
    content_type: str
    size: int
    sha256: str
    created_at: datetime

    model_config = {"from_attributes": True}


@router.get("/articles/{article_id}/attachments")
async def list_attachments(
    article_id: IdParam, db: Db, principal: Principal = authorize("article", "read", by_id=True)
) -> list[AttachmentOut]:
    return [AttachmentOut.model_validate(a) for a in await attachments.list_for(db, principal, article_id)]


@router.post("/articles/{article_id}/attachments", status_code=201)
async def add_attachment(
    article_id: IdParam,
    file: UploadFile,
    request: Request,
    db: Db,
    principal: Principal = authorize("article", "update", by_id=True),
) -> AttachmentOut:
    limit = request.app.state.settings.kb_attachment_max_bytes
    data = await file.read(limit + 1)  # one byte more tells "too large" without reading it all
    async with db.begin():
        attachment = await attachments.add(
            db, principal, article_id, filename=file.filename or "", data=data, max_bytes=limit
        )
    return AttachmentOut.model_validate(attachment)


@router.get("/articles/{article_id}/attachments/{attachment_id}")
async def download_attachment(
    article_id: IdParam, attachment_id: IdParam, db: Db, principal: Principal = authorize("article", "read", by_id=True)
) -> Response:
    attachment = await attachments.get(db, principal, article_id, attachment_id, with_content=True)
    return Response(
        attachment.content, media_type=attachment.content_type, headers=attachments.download_headers(attachment)
    )


@router.delete("/articles/{article_id}/attachments/{attachment_id}", status_code=204)
async def remove_attachment(
    article_id: IdParam,
    attachment_id: IdParam,
    db: Db,
    principal: Principal = authorize("article", "update", by_id=True),
) -> Response:
    async with db.begin():
        await attachments.remove(db, principal, article_id, attachment_id)
    return Response(status_code=204)
