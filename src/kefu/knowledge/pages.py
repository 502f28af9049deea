"""Knowledge base pages for staff: search with suggestions, reading, writing and contributing, the
review workflow, history and diff, and the review queue.

Pages use the same services and the same access-matrix rows as the REST routes in
``kefu.knowledge.api``, and validate forms with the API's request models, so a page accepts exactly
what the API accepts. Customers may read public articles by the matrix, but these are staff pages:
customers are sent home (their way into the knowledge base is the help centre).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import Response
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from kefu.core.errors import ApiError, NotFound
from kefu.core.i18n import Translator
from kefu.core.policy import Principal, allows, authorize
from kefu.core.schemas import IdParam, query_text, single_line
from kefu.db.base import utcnow
from kefu.db.session import get_db
from kefu.identity import service as identity
from kefu.knowledge import attachments, board_pages, service
from kefu.knowledge.index import KnowledgeIndex, log_search
from kefu.knowledge.models import Article, ArticleVersion, VersionStatus
from kefu.knowledge.schemas import ArticleCreate, DraftIn, PublishIn, ReviewIn, SubmitIn
from kefu.web.pages import form_data, render, run_form_action, see_other, user_zone, validate

router = APIRouter(include_in_schema=False)
Db = Annotated[AsyncSession, Depends(get_db)]
# The search form sends every filter, chosen or not: "all categories" arrives as an empty value.
CategoryChoice = Annotated[str, Query(max_length=18, pattern=r"^([1-9][0-9]*)?$")]

KINDS = ("faq", "case", "experience")
AUDIENCES = ("internal", "public")
# Language tags offered by the forms and the search filter, with their own names (not translated).
LANGUAGES = (("zh-CN", "简体中文"), ("zh-TW", "繁體中文"), ("en", "English"))
# Outcomes the pages announce after a redirect (?done=...); anything else is ignored.
DONE = frozenset(
    {
        "created",
        "submitted",
        "saved",
        "withdrawn",
        "approved",
        "changes_requested",
        "published",
        "scheduled",
        "archived",
        "unarchived",
        "restored",
        "verified",
        "attached",
        "detached",
    }
)
SEARCH_LIMIT = 20
LIST_LIMIT = 50
BROWSE_PAGES = 10  # of 200 articles: browsing by tag looks at 2,000 articles at most


# --- helpers -------------------------------------------------------------------------------------
def _away(principal: Principal) -> Response | None:
    """Customers (and any other non-staff holder of a read right) are sent to their home page."""
    return None if service.is_staff(principal) else see_other("/")


def _page(request: Request, name: str, principal: Principal, status_code: int = 200, **context: Any) -> Response:
    done = request.query_params.get("done")
    return render(
        request,
        name,
        principal,
        status_code=status_code,
        done=done if done in DONE else None,
        languages=LANGUAGES,
        **context,
    )


async def _names(db: AsyncSession, ids: Iterable[int | None]) -> dict[int, str]:
    names: dict[int, str] = {}
    for user_id in {i for i in ids if i}:
        try:
            names[user_id] = (await identity.get_user(db, user_id)).display_name
        except NotFound:
            continue
    return names


def _may_edit(principal: Principal, view: service.ArticleView) -> bool:
    # The service's own rule, so a button is shown exactly when the service will accept the action.
    return service.may_edit(principal, view.article, view.working)


def _may_review(principal: Principal, version: ArticleVersion | None) -> bool:
    return (
        version is not None
        and version.status == VersionStatus.in_review
        and allows(principal, "article", "review")
        and (version.reviewer_id == principal.user_id or principal.has_role("admin"))
    )


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _tags(text: str) -> list[str]:
    return [tag.strip() for tag in re.split(r"[,，、;；]", text) if tag.strip()]


def _text(data: dict[str, Any], key: str) -> str:
    value = data.get(key, "")
    return value.replace("\r\n", "\n") if isinstance(value, str) else ""


def _optional_id(value: Any) -> int | str | None:
    # Blank means "none"; anything else goes to the request model, which refuses what is not an id.
    return None if value in (None, "") else value


def _content_fields(data: dict[str, Any], *, case: bool) -> dict[str, Any]:
    """The versioned content of an article form, shaped as the API's ``ContentIn``."""
    fields: dict[str, Any] = {
        "title": _text(data, "title"),
        "body_markdown": _text(data, "body_markdown"),
        "similar_questions": _lines(_text(data, "similar_questions")),
        "tags": _tags(_text(data, "tags")),
        "change_note": _text(data, "change_note"),
    }
    if case:
        fields["case_fields"] = {name: _text(data, f"case_{name}") for name in service.CASE_FIELDS}
    return fields


def _back(data: dict[str, Any], article_id: int) -> str:
    """Where a workflow form returns to: the review queue when sent from there, else the article."""
    return "/kb/review" if data.get("next") == "/kb/review" else f"/kb/articles/{article_id}"


def _local_datetime(value: str, principal: Principal) -> datetime | None:
    """A ``datetime-local`` value, entered in the user's zone, as an aware UTC time (None if not one)."""
    try:
        naive = datetime.fromisoformat(value.strip()[:32])
        if naive.tzinfo is not None:
            return None
        return naive.replace(tzinfo=user_zone(principal)).astimezone(UTC)
    except (ValueError, OverflowError):  # not a date, or out of range once moved to UTC (year 1 or 9999)
        return None


async def _latest(db: AsyncSession, principal: Principal, view: service.ArticleView) -> ArticleVersion:
    """The version pages show for an article: the live one, else the working one, else (an article whose
    only draft was withdrawn, e.g. archived before it was ever published) the newest one the viewer sees."""
    if view.current is not None:
        return view.current
    versions = await service.versions(db, principal, view.article.id)
    if not versions:
        raise NotFound("article")
    return versions[-1]


async def _my_work(db: AsyncSession, principal: Principal) -> list[tuple[ArticleVersion, Article]]:
    stmt = (
        select(ArticleVersion, Article)
        .join(Article, Article.id == ArticleVersion.article_id)
        .where(
            ArticleVersion.author_id == principal.user_id,
            ArticleVersion.status.in_(service.WORKING),
            Article.archived_at.is_(None),
        )
        .order_by(ArticleVersion.created_at.desc(), ArticleVersion.id.desc())
        .limit(LIST_LIMIT)
    )
    return [(v, a) for v, a in (await db.execute(stmt)).all()]


async def _working_in(
    db: AsyncSession, status: str, *, reviewer_id: int | None = None, scheduled: bool | None = None
) -> list[tuple[ArticleVersion, Article]]:
    stmt = (
        select(ArticleVersion, Article)
        .join(Article, Article.id == ArticleVersion.article_id)
        .where(ArticleVersion.status == status, Article.archived_at.is_(None))
    )
    if reviewer_id is not None:
        stmt = stmt.where(ArticleVersion.reviewer_id == reviewer_id)
    if scheduled is True:
        stmt = stmt.where(ArticleVersion.publish_at.is_not(None)).order_by(ArticleVersion.publish_at)
    elif scheduled is False:
        stmt = stmt.where(ArticleVersion.publish_at.is_(None)).order_by(ArticleVersion.reviewed_at)
    else:
        stmt = stmt.order_by(ArticleVersion.submitted_at)
    stmt = stmt.order_by(ArticleVersion.id).limit(200)
    return [(v, a) for v, a in (await db.execute(stmt)).all()]


async def _browse(
    db: AsyncSession, principal: Principal, *, category_id: int | None, tag: str, language: str | None
) -> list[service.ArticleView]:
    """Published articles by filter alone (no query). Tags live in the versions, so they are matched
    here, over a bounded number of articles."""
    flt = service.ArticleFilter(status="published", category_id=category_id, language=language)
    found: list[service.ArticleView] = []
    after_id = 0
    for _ in range(BROWSE_PAGES):
        views = await service.list_articles(db, principal, flt, after_id=after_id, limit=200)
        found += [v for v in views if not tag or tag in v.current.tags]
        if len(found) >= LIST_LIMIT or len(views) < 200:
            break
        after_id = views[-1].article.id
    return found[:LIST_LIMIT]


# --- home: search, suggestions, my work ----------------------------------------------------------
@router.get("/kb")
async def kb_home(
    request: Request,
    db: Db,
    principal: Principal = authorize("article", "search"),
    q: query_text(200) = "",  # type: ignore[valid-type]
    category: CategoryChoice = "",
    tag: query_text(64) = "",  # type: ignore[valid-type]
    language: query_text(16) = "",  # type: ignore[valid-type]
) -> Response:
    if (away := _away(principal)) is not None:
        return away
    q, tag, language = q.strip(), tag.strip(), language.strip()
    category_id = int(category) if category else None
    hits: list[dict[str, Any]] = []
    browse: list[service.ArticleView] = []
    searched = bool(q)
    if searched:
        index: KnowledgeIndex = request.app.state.kb_index
        found = index.search(
            principal,
            q,
            category_id=category_id,
            tags=(tag,) if tag else (),
            language=language or None,
            limit=SEARCH_LIMIT,
        )
        async with db.begin():
            await log_search(db, principal, q, found, "agent")
        # Only these two fields are HTML: the index escapes the text and adds <mark> itself.
        hits = [{"id": int(h.id), "title_html": h.title, "snippet_html": h.snippet} for h in found]
    elif category_id or tag or language:
        browse = await _browse(db, principal, category_id=category_id, tag=tag, language=language or None)
    mine = await _my_work(db, principal)
    to_review = (
        await _working_in(db, VersionStatus.in_review, reviewer_id=principal.user_id)
        if allows(principal, "article", "review")
        else []
    )
    return _page(
        request,
        "kb/home.html",
        principal,
        q=q,
        tag=tag,
        language=language,
        category_id=category_id,
        categories=await service.list_categories(db),
        searched=searched,
        hits=hits,
        browse=browse,
        mine=mine,
        to_review=to_review,
        can_create=allows(principal, "article", "create"),
        can_review=allows(principal, "article", "review"),
    )


@router.get("/kb/suggest")
async def kb_suggest(request: Request, q: str = "", principal: Principal = authorize("article", "search")) -> Response:
    """Titles and similar questions completing what was typed: ``<li>`` items for the search box.

    Always answers 200: it runs on every key stroke, and an over-long or odd query simply suggests
    nothing (the search itself validates strictly).
    """
    suggestions: list[Any] = []
    typed = q.strip()
    if typed and len(typed) <= 200 and service.is_staff(principal):
        try:
            single_line(typed)
        except ValueError:
            typed = ""
        if typed:
            index: KnowledgeIndex = request.app.state.kb_index
            suggestions = index.suggest(principal, typed, limit=8)
    return _page(request, "kb/_suggestions.html", principal, suggestions=suggestions)


# --- the review queue ----------------------------------------------------------------------------
@router.get("/kb/review")
async def review_queue(request: Request, db: Db, principal: Principal = authorize("article", "review")) -> Response:
    everyone = principal.has_role("admin")
    in_review = await _working_in(db, VersionStatus.in_review, reviewer_id=None if everyone else principal.user_id)
    approved = await _working_in(db, VersionStatus.approved, scheduled=False)
    scheduled = await _working_in(db, VersionStatus.approved, scheduled=True)
    due = await service.needing_verification(db) if allows(principal, "article", "verify") else []
    titles = {}
    for article in due[:200]:
        view = await service.get_article(db, principal, article.id)
        titles[article.id] = view.current.title
    names = await _names(
        db,
        [v.author_id for v, _ in in_review + approved + scheduled]
        + [v.reviewer_id for v, _ in in_review]
        + [a.owner_id for a in due],
    )
    return _page(
        request,
        "kb/review.html",
        principal,
        in_review=in_review,
        approved=approved,
        scheduled=scheduled,
        due=due[:200],
        titles=titles,
        names=names,
        everyone=everyone,
        can_publish=allows(principal, "article", "publish"),
        can_verify=allows(principal, "article", "verify"),
    )


# --- writing -------------------------------------------------------------------------------------
async def _form_page(
    request: Request,
    db: AsyncSession,
    principal: Principal,
    *,
    view: service.ArticleView | None,
    form: dict[str, Any],
    status_code: int = 200,
    errors: list[str] | None = None,
    conflict: int | None = None,
    blocked: ArticleVersion | None = None,
) -> Response:
    return _page(
        request,
        "kb/article_form.html",
        principal,
        status_code=status_code,
        view=view,
        title=(await _latest(db, principal, view)).title if view is not None else "",
        f=form,
        errors=errors or [],
        conflict=conflict,
        blocked=blocked,
        kinds=KINDS,
        audiences=AUDIENCES,
        categories=await service.list_categories(db),
        reviewers=await service.reviewers(db),
        case_fields=service.CASE_FIELDS,
        can_publish=allows(principal, "article", "publish"),
    )


def _form_of(version: ArticleVersion) -> dict[str, Any]:
    return {
        "title": version.title,
        "body_markdown": version.body_markdown,
        "similar_questions": "\n".join(version.similar_questions),
        "tags": ", ".join(version.tags),
        "change_note": "",
        "expected_version": version.number,
        **{f"case_{name}": str(version.case_fields.get(name, "")) for name in service.CASE_FIELDS},
    }


@router.get("/kb/articles/new")
async def new_article_page(request: Request, db: Db, principal: Principal = authorize("article", "create")) -> Response:
    form = {"kind": "faq", "audience": "internal", "language": "zh-CN"}
    return await _form_page(request, db, principal, view=None, form=form)


@router.post("/kb/articles")
async def create_article_submit(
    request: Request, db: Db, principal: Principal = authorize("article", "create")
) -> Response:
    data = await form_data(request)
    kind = data.get("kind") or "faq"
    fields = {
        **_content_fields(data, case=kind == "case"),
        "kind": kind,
        "audience": data.get("audience") or "internal",
        "language": data.get("language") or "zh-CN",
        "category_id": _optional_id(data.get("category_id")),
    }
    body, errors = validate(ArticleCreate, fields)
    reviewer = _optional_id(data.get("reviewer_id"))
    submit = None
    if reviewer is not None:
        submit, submit_errors = validate(SubmitIn, {"reviewer_id": reviewer})
        errors += submit_errors
    status = 422
    if body is not None and not errors:
        try:
            async with db.begin():
                view = await service.create_article(db, principal, body.content(), body.placement())
                if submit is not None:
                    # A contribution goes to its reviewer at once; the two happen together or not at all.
                    await service.submit_for_review(db, principal, view.article.id, submit.reviewer_id)
            done = "submitted" if submit is not None else "created"
            return see_other(f"/kb/articles/{view.article.id}?done={done}")
        except ApiError as exc:
            errors, status = [exc.message], exc.status
    return await _form_page(request, db, principal, view=None, form=data, status_code=status, errors=errors)


@router.get("/kb/articles/{article_id}/edit")
async def edit_article_page(
    request: Request, article_id: IdParam, db: Db, principal: Principal = authorize("article", "update", by_id=True)
) -> Response:
    view = await service.get_article(db, principal, article_id)
    if not _may_edit(principal, view):
        raise ApiError(403, "forbidden", "only the author, the owner or a knowledge manager may edit this article")
    if view.article.archived_at is not None:
        raise ApiError(409, "conflict", "the article is archived; restore it first")
    working = view.working
    if working is not None and working.status != VersionStatus.draft:
        # In review or approved: frozen until withdrawn. Say so instead of a form that cannot be saved.
        return await _form_page(
            request, db, principal, view=view, form=_form_of(working), status_code=409, blocked=working
        )
    return await _form_page(
        request, db, principal, view=view, form=_form_of(working or await _latest(db, principal, view))
    )


@router.post("/kb/articles/{article_id}/edit")
async def edit_article_submit(
    request: Request, article_id: IdParam, db: Db, principal: Principal = authorize("article", "update", by_id=True)
) -> Response:
    data = await form_data(request)
    fields = {
        **_content_fields(data, case=any(key.startswith("case_") for key in data)),
        "expected_version": _optional_id(data.get("expected_version")),
    }
    body, errors = validate(DraftIn, fields)
    status, conflict = 422, None
    if body is not None:
        try:
            async with db.begin():
                await service.save_draft(
                    db, principal, article_id, body.content(), expected_version=body.expected_version
                )
            return see_other(f"/kb/articles/{article_id}?done=saved")
        except ApiError as exc:
            if exc.status == 404:
                raise
            errors, status = [exc.message], exc.status
            if isinstance(exc.details, dict) and "current_version" in exc.details:
                conflict = int(exc.details["current_version"])
    view = await service.get_article(db, principal, article_id)
    # The author's text is kept as typed: a refused save must never lose it.
    return await _form_page(
        request, db, principal, view=view, form=data, status_code=status, errors=errors, conflict=conflict
    )


# --- reading -------------------------------------------------------------------------------------
async def _article_page(
    request: Request,
    db: AsyncSession,
    principal: Principal,
    article_id: int,
    *,
    show: str = "",
    status_code: int = 200,
    errors: list[str] | None = None,
    problem: str | None = None,
) -> Response:
    view = await service.get_article(db, principal, article_id)
    working = view.working
    showing_working = working is not None and (show == "working" or view.live is None)
    shown = working if showing_working and working is not None else await _latest(db, principal, view)
    may_edit = _may_edit(principal, view)
    archived = view.article.archived_at is not None
    can_publish = allows(principal, "article", "publish")
    category = None
    if view.article.category_id is not None:
        category = next((c for c in await service.list_categories(db) if c.id == view.article.category_id), None)
    draft = working is not None and working.status == VersionStatus.draft
    names = await _names(
        db,
        [
            view.article.owner_id,
            shown.author_id,
            shown.published_by_id,
            working.author_id if working else None,
            working.reviewer_id if working else None,
        ],
    )
    return _page(
        request,
        "kb/article.html",
        principal,
        status_code=status_code,
        errors=errors or [],
        problem=problem,
        view=view,
        article=view.article,
        shown=shown,
        working=working,
        showing_working=showing_working,
        category=category,
        names=names,
        archived=archived,
        reviewers=await service.reviewers(db) if draft and not archived and may_edit else [],
        can_edit=may_edit and not archived,
        can_submit=draft and may_edit and not archived and allows(principal, "article", "submit"),
        can_withdraw=(working is not None and working.status != VersionStatus.draft and may_edit and not archived),
        can_review=_may_review(principal, working) and not archived,
        can_publish=(
            can_publish
            and not archived
            and working is not None
            and working.status in (VersionStatus.draft, VersionStatus.approved)
        ),
        can_archive=allows(principal, "article", "archive"),
        can_verify=allows(principal, "article", "verify") and not archived and view.live is not None,
        can_history=allows(principal, "article", "history"),
        case_fields=service.CASE_FIELDS,
        attachments=await attachments.list_for(db, principal, article_id),
        **await board_pages.article_feedback_context(db, principal, article_id),
    )


@router.get("/kb/articles/{article_id}")
async def article_page(
    request: Request,
    article_id: IdParam,
    db: Db,
    principal: Principal = authorize("article", "read", by_id=True),
    show: Annotated[str, Query(max_length=16)] = "",
) -> Response:
    if (away := _away(principal)) is not None:
        return away
    return await _article_page(request, db, principal, article_id, show=show)


# --- the workflow --------------------------------------------------------------------------------
async def _act(
    request: Request,
    db: AsyncSession,
    principal: Principal,
    article_id: int,
    action: Callable[[], Awaitable[object]],
    *,
    done: str,
    back: str,
) -> Response:
    """Run one workflow step; a refusal shows the article again with the reason."""
    return await run_form_action(
        db,
        action,
        success_url=f"{back}?done={done}",
        refused=lambda exc: _article_page(
            request, db, principal, article_id, status_code=exc.status, errors=[exc.message]
        ),
    )


async def _refused(
    request: Request,
    db: AsyncSession,
    principal: Principal,
    article_id: int,
    errors: list[str] | None = None,
    *,
    problem: str | None = None,
) -> Response:
    """The article page again with why a form was refused: validation errors, or a known ``problem``
    that the page words in the reader's language."""
    return await _article_page(request, db, principal, article_id, status_code=422, errors=errors, problem=problem)


@router.post("/kb/articles/{article_id}/submit")
async def submit_submit(
    request: Request, article_id: IdParam, db: Db, principal: Principal = authorize("article", "submit", by_id=True)
) -> Response:
    data = await form_data(request)
    body, errors = validate(SubmitIn, {"reviewer_id": _optional_id(data.get("reviewer_id"))})
    if body is None:
        return await _refused(request, db, principal, article_id, errors)
    return await _act(
        request,
        db,
        principal,
        article_id,
        lambda: service.submit_for_review(db, principal, article_id, body.reviewer_id),
        done="submitted",
        back=_back(data, article_id),
    )


@router.post("/kb/articles/{article_id}/withdraw")
async def withdraw_submit(
    request: Request, article_id: IdParam, db: Db, principal: Principal = authorize("article", "update", by_id=True)
) -> Response:
    data = await form_data(request)
    return await _act(
        request,
        db,
        principal,
        article_id,
        lambda: service.withdraw(db, principal, article_id),
        done="withdrawn",
        back=_back(data, article_id),
    )


@router.post("/kb/articles/{article_id}/review")
async def review_submit(
    request: Request, article_id: IdParam, db: Db, principal: Principal = authorize("article", "review", by_id=True)
) -> Response:
    data = await form_data(request)
    decision = data.get("decision")
    if decision not in ("approve", "changes"):
        return await _refused(request, db, principal, article_id, problem="decision")
    body, errors = validate(ReviewIn, {"approve": decision == "approve", "comment": _text(data, "comment")})
    if body is None:
        return await _refused(request, db, principal, article_id, errors)
    return await _act(
        request,
        db,
        principal,
        article_id,
        lambda: service.review(db, principal, article_id, approve=body.approve, comment=body.comment),
        done="approved" if body.approve else "changes_requested",
        back=_back(data, article_id),
    )


@router.post("/kb/articles/{article_id}/publish")
async def publish_submit(
    request: Request, article_id: IdParam, db: Db, principal: Principal = authorize("article", "publish", by_id=True)
) -> Response:
    data = await form_data(request)
    publish_at = None
    if data.get("when") == "schedule":
        publish_at = _local_datetime(str(data.get("publish_at", "")), principal)
        if publish_at is None or publish_at <= utcnow():
            return await _refused(request, db, principal, article_id, problem="schedule_time")
    body, errors = validate(
        PublishIn,
        {
            "publish_at": publish_at,
            "announce": data.get("announce") == "1",
            "requires_ack": data.get("requires_ack") == "1",
        },
    )
    if body is None:
        return await _refused(request, db, principal, article_id, errors)
    return await _act(
        request,
        db,
        principal,
        article_id,
        lambda: service.publish(
            db,
            principal,
            request.app.state.settings,
            article_id,
            publish_at=body.publish_at,
            announce=body.announce,
            requires_ack=body.requires_ack,
        ),
        done="scheduled" if body.publish_at else "published",
        back=_back(data, article_id),
    )


@router.post("/kb/articles/{article_id}/archive")
async def archive_submit(
    request: Request, article_id: IdParam, db: Db, principal: Principal = authorize("article", "archive", by_id=True)
) -> Response:
    data = await form_data(request)
    return await _act(
        request,
        db,
        principal,
        article_id,
        lambda: service.archive(db, principal, article_id),
        done="archived",
        back=_back(data, article_id),
    )


@router.post("/kb/articles/{article_id}/unarchive")
async def unarchive_submit(
    request: Request, article_id: IdParam, db: Db, principal: Principal = authorize("article", "archive", by_id=True)
) -> Response:
    data = await form_data(request)
    return await _act(
        request,
        db,
        principal,
        article_id,
        lambda: service.unarchive(db, principal, article_id),
        done="unarchived",
        back=_back(data, article_id),
    )


@router.post("/kb/articles/{article_id}/attachments")
async def attachment_upload(
    request: Request, article_id: IdParam, db: Db, principal: Principal = authorize("article", "update", by_id=True)
) -> Response:
    form = await request.form()
    upload = form.get("file")
    if upload is None or isinstance(upload, str) or not upload.filename:
        return await _article_page(
            request,
            db,
            principal,
            article_id,
            status_code=422,
            errors=[Translator(principal.locale).gettext("Choose a file to attach.")],
        )
    limit = request.app.state.settings.kb_attachment_max_bytes
    data = await upload.read(limit + 1)
    return await _act(
        request,
        db,
        principal,
        article_id,
        lambda: attachments.add(db, principal, article_id, filename=upload.filename or "", data=data, max_bytes=limit),
        done="attached",
        back=f"/kb/articles/{article_id}",
    )


@router.post("/kb/articles/{article_id}/attachments/{attachment_id}/remove")
async def attachment_remove(
    request: Request,
    article_id: IdParam,
    attachment_id: IdParam,
    db: Db,
    principal: Principal = authorize("article", "update", by_id=True),
) -> Response:
    return await _act(
        request,
        db,
        principal,
        article_id,
        lambda: attachments.remove(db, principal, article_id, attachment_id),
        done="detached",
        back=f"/kb/articles/{article_id}",
    )


@router.post("/kb/articles/{article_id}/verify")
async def verify_submit(
    request: Request, article_id: IdParam, db: Db, principal: Principal = authorize("article", "verify", by_id=True)
) -> Response:
    data = await form_data(request)
    return await _act(
        request,
        db,
        principal,
        article_id,
        lambda: service.verify(db, principal, article_id),
        done="verified",
        back=_back(data, article_id),
    )


# --- history -------------------------------------------------------------------------------------
@router.get("/kb/articles/{article_id}/history")
async def history_page(
    request: Request, article_id: IdParam, db: Db, principal: Principal = authorize("article", "history", by_id=True)
) -> Response:
    view = await service.get_article(db, principal, article_id)
    versions = await service.versions(db, principal, article_id)
    names = await _names(db, [v.author_id for v in versions] + [v.reviewer_id for v in versions])
    archived = view.article.archived_at is not None
    return _page(
        request,
        "kb/history.html",
        principal,
        view=view,
        title=versions[-1].title if versions else "",
        versions=versions,
        names=names,
        can_restore=_may_edit(principal, view) and view.working is None and not archived,
    )


@router.get("/kb/articles/{article_id}/diff")
async def diff_page(
    request: Request,
    article_id: IdParam,
    db: Db,
    from_version: Annotated[int, Query(alias="from", ge=1, le=1_000_000)],
    to_version: Annotated[int, Query(alias="to", ge=1, le=1_000_000)],
    principal: Principal = authorize("article", "history", by_id=True),
) -> Response:
    view = await service.get_article(db, principal, article_id)
    old = await service.get_version(db, principal, article_id, from_version)
    new = await service.get_version(db, principal, article_id, to_version)
    return _page(
        request,
        "kb/diff.html",
        principal,
        view=view,
        title=new.title,
        old=old,
        new=new,
        changes=service.diff_versions(old, new),
    )


@router.post("/kb/articles/{article_id}/versions/{number}/restore")
async def restore_submit(
    request: Request,
    article_id: IdParam,
    number: Annotated[int, Path(ge=1, le=1_000_000)],
    db: Db,
    principal: Principal = authorize("article", "update", by_id=True),
) -> Response:
    return await _act(
        request,
        db,
        principal,
        article_id,
        lambda: service.restore_version(db, principal, article_id, number),
        done="restored",
        back=f"/kb/articles/{article_id}",
    )
