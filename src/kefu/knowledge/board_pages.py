"""Knowledge pages around the articles: feedback threads (the inbox, the mail-like thread, raising
feedback from an article), the board of recent changes and announcements with acknowledgements and
the unread report, the points leaderboard, the training collections (case library) and the search-gap
report.

Pages use the same services and the same access-matrix rows as the REST routes in
``kefu.knowledge.feedback_api``, ``kefu.knowledge.board_api`` and ``kefu.knowledge.api``, and validate
forms with the API's request models, so a page accepts exactly what the API accepts. A refused form
shows the page again with the reason; an object the principal may not see is a 404 page.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from kefu.core.errors import ApiError
from kefu.core.policy import Principal, allows, authorize
from kefu.core.schemas import IdParam, IdQuery
from kefu.db.base import utcnow
from kefu.db.session import get_db
from kefu.knowledge import board, feedback, service
from kefu.knowledge.board_api import AnnouncementCreate, CollectionCreate, CollectionItems, CollectionUpdate
from kefu.knowledge.feedback_api import AcceptIn, FeedbackCreate, RejectIn, ReplyCreate
from kefu.knowledge.index import search_gaps
from kefu.knowledge.models import Article, ArticleVersion
from kefu.web.pages import form_data, render, run_form_action, see_other, time_formatter, validate

router = APIRouter(include_in_schema=False)
Db = Annotated[AsyncSession, Depends(get_db)]

KINDS = ("question", "error", "suggestion")
STATUSES = ("open", "answered", "accepted", "rejected")
PERIODS = ("week", "month", "all")
AUDIENCE_ROLES = ("agent", "knowledge_manager", "supervisor", "admin")
GAP_DAYS = (7, 30, 90, 365)
INBOX_LIMIT = 50
ARTICLE_THREADS_LIMIT = 50
LEADERBOARD_LIMIT = 50
GAP_LIMIT = 200
SUMMARY_CHARS = 240
# Outcomes the pages announce after a redirect (?done=...); anything else is ignored.
DONE = frozenset({"opened", "replied", "accepted", "rejected", "acked", "announced", "created", "saved", "items_saved"})
# The section's own links: (key, object, action); the template words each one.
SECTION = (
    ("board", "announcement", "list"),
    ("feedback", "feedback", "list"),
    ("training", "training", "list"),
    ("points", "points", "read"),
    ("gaps", "search_report", "read"),
)


# --- helpers -------------------------------------------------------------------------------------
def _page(request: Request, name: str, principal: Principal, status_code: int = 200, **context: Any) -> Response:
    done = request.query_params.get("done")
    return render(
        request,
        name,
        principal,
        status_code=status_code,
        done=done if done in DONE else None,
        kb_links={key for key, obj, action in SECTION if allows(principal, obj, action)},
        **context,
    )


def _message(exc: ApiError) -> str:
    """A service refusal as one line; ids the service names (say, articles it refused) are shown too."""
    details = exc.details
    if isinstance(details, dict):
        ids = details.get("article_ids")
        if isinstance(ids, list) and ids:
            return f"{exc.message}: {', '.join(str(i) for i in ids)}"
    return exc.message


def _text(data: dict[str, Any], key: str) -> str:
    value = data.get(key, "")
    return value.replace("\r\n", "\n") if isinstance(value, str) else ""


def _id_tokens(text: str) -> list[str]:
    """Article ids as typed: separated by commas (also Chinese ones), spaces or lines; '#12' is 12."""
    return [token.lstrip("#") for token in re.split(r"[\s,，、;；]+", text) if token.strip("#")]


def _clip(text: str, limit: int = SUMMARY_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


# --- feedback: inbox, thread, raising feedback ---------------------------------------------------
def _thread_row(view: feedback.ThreadView, when: Callable[[datetime | None], str]) -> dict[str, Any]:
    t = view.thread
    return {
        "id": t.id,
        "article_id": t.article_id,
        "article_title": view.article_title,
        "subject": t.subject,
        "kind": t.kind,
        "status": t.status,
        "author": view.name(t.author_id) or "—",
        "assignee_id": t.assignee_id,
        "assignee": view.name(t.assignee_id),
        "messages": view.message_count,
        "updated": when(t.updated_at),
    }


async def article_feedback_context(db: AsyncSession, principal: Principal, article_id: int) -> dict[str, Any]:
    """What the article page needs to include ``kb/_article_threads.html`` and ``kb/_feedback_form.html``:
    the viewer's visible threads on the article (newest first; knowledge managers see all of them) and
    whether the viewer may raise feedback at all."""
    if not allows(principal, "feedback", "list"):
        return {"feedback_threads": [], "feedback_can_open": False}
    views = await feedback.list_threads(db, principal, article_id=article_id, limit=ARTICLE_THREADS_LIMIT)
    archived = await db.scalar(select(Article.archived_at).where(Article.id == article_id))
    when = time_formatter(principal)
    return {
        "feedback_threads": [_thread_row(v, when) for v in views],
        # An archived article takes no new feedback (the service would refuse it).
        "feedback_can_open": allows(principal, "feedback", "create")
        and service.is_staff(principal)
        and archived is None,
    }


@router.get("/kb/feedback")
async def feedback_inbox(
    request: Request,
    db: Db,
    principal: Principal = authorize("feedback", "list"),
    status: Annotated[str, Query(max_length=16)] = "",
    assignee: Annotated[str, Query(max_length=24)] = "",
    before_id: IdQuery | None = None,
) -> Response:
    """Knowledge managers work the whole inbox (filters by status and assignee); everyone else sees
    the threads they take part in: written, assigned, or about an article they own."""
    status = status if status in STATUSES else ""
    manager = feedback.manages_feedback(principal)
    filters: dict[str, Any] = {}
    if assignee == "me":
        filters["assignee_id"] = principal.user_id
    elif assignee == "pool":
        filters["unassigned"] = True
    elif re.fullmatch(r"[0-9]{1,18}", assignee):
        filters["assignee_id"] = int(assignee)
    else:
        assignee = ""
    views = await feedback.list_threads(
        db, principal, status=status or None, before_id=before_id, limit=INBOX_LIMIT, **filters
    )
    when = time_formatter(principal)
    rows = [_thread_row(v, when) for v in views]
    return _page(
        request,
        "kb/board/feedback_inbox.html",
        principal,
        threads=rows,
        manager=manager,
        status=status,
        assignee=assignee,
        statuses=STATUSES,
        next_before=views[-1].thread.id if len(views) == INBOX_LIMIT else None,
    )


async def _thread_page(
    request: Request,
    db: AsyncSession,
    principal: Principal,
    thread_id: int,
    *,
    status_code: int = 200,
    errors: list[str] | None = None,
    form: dict[str, str] | None = None,
) -> Response:
    view = await feedback.get_thread(db, principal, thread_id)  # 404 unless a participant
    t = view.thread
    article = await db.get(Article, t.article_id)
    owner_id = article.owner_id if article is not None else None
    resolved = t.status in feedback.RESOLVED
    # The service's own rule, so a form is shown exactly when the service will accept it.
    may_resolve = allows(principal, "feedback", "resolve") and (
        feedback.manages_feedback(principal) or principal.user_id in (t.assignee_id, owner_id)
    )
    can_edit_draft = False
    if t.draft_version_id is not None and article is not None:
        draft = await db.get(ArticleVersion, t.draft_version_id)
        can_edit_draft = (
            draft is not None
            and draft.status in service.WORKING
            and article.archived_at is None
            and allows(principal, "article", "update")
            and service.may_edit(principal, article, draft)
        )
    when = time_formatter(principal)
    messages = [
        {"id": m.id, "author": view.name(m.author_id) or "—", "at": when(m.created_at), "body_html": m.body_html}
        for m in view.messages
    ]
    return _page(
        request,
        "kb/board/feedback_thread.html",
        principal,
        status_code=status_code,
        errors=errors or [],
        form=form or {},
        view=view,
        thread=t,
        messages=messages,
        author=view.name(t.author_id) or "—",
        assignee=view.name(t.assignee_id),
        resolved_by=view.name(t.resolved_by_id),
        can_reply=allows(principal, "feedback", "reply") and not resolved,
        can_resolve=may_resolve and not resolved,
        can_edit_draft=can_edit_draft,
    )


@router.get("/kb/feedback/{thread_id}")
async def feedback_thread_page(
    request: Request,
    thread_id: IdParam,
    db: Db,
    principal: Principal = authorize("feedback", "read", by_id=True),
) -> Response:
    return await _thread_page(request, db, principal, thread_id)


async def _thread_action(
    request: Request,
    db: AsyncSession,
    principal: Principal,
    thread_id: int,
    action: Callable[[], Any],
    *,
    done: str,
    form: dict[str, str],
) -> Response:
    """Run one thread action; a refusal shows the thread again with the reason."""
    return await run_form_action(
        db,
        action,
        success_url=f"/kb/feedback/{thread_id}?done={done}",
        refused=lambda exc: _thread_page(
            request, db, principal, thread_id, status_code=exc.status, errors=[_message(exc)], form=form
        ),
    )


@router.post("/kb/feedback/{thread_id}/reply")
async def feedback_reply_submit(
    request: Request,
    thread_id: IdParam,
    db: Db,
    principal: Principal = authorize("feedback", "reply", by_id=True),
) -> Response:
    form = {"body": _text(await form_data(request), "body")}
    body, errors = validate(ReplyCreate, form)
    if body is None:
        return await _thread_page(request, db, principal, thread_id, status_code=422, errors=errors, form=form)
    return await _thread_action(
        request,
        db,
        principal,
        thread_id,
        lambda: feedback.reply(db, principal, thread_id, body.body),
        done="replied",
        form=form,
    )


@router.post("/kb/feedback/{thread_id}/accept")
async def feedback_accept_submit(
    request: Request,
    thread_id: IdParam,
    db: Db,
    principal: Principal = authorize("feedback", "resolve", by_id=True),
) -> Response:
    form = {"accept_reason": _text(await form_data(request), "reason")}
    body, errors = validate(AcceptIn, {"reason": form["accept_reason"]})
    if body is None:
        return await _thread_page(request, db, principal, thread_id, status_code=422, errors=errors, form=form)
    settings = request.app.state.settings
    return await _thread_action(
        request,
        db,
        principal,
        thread_id,
        lambda: feedback.accept(db, principal, settings, thread_id, body.reason),
        done="accepted",
        form=form,
    )


@router.post("/kb/feedback/{thread_id}/reject")
async def feedback_reject_submit(
    request: Request,
    thread_id: IdParam,
    db: Db,
    principal: Principal = authorize("feedback", "resolve", by_id=True),
) -> Response:
    form = {"reject_reason": _text(await form_data(request), "reason")}
    body, errors = validate(RejectIn, {"reason": form["reject_reason"]})
    if body is None:
        return await _thread_page(request, db, principal, thread_id, status_code=422, errors=errors, form=form)
    return await _thread_action(
        request,
        db,
        principal,
        thread_id,
        lambda: feedback.reject(db, principal, thread_id, body.reason),
        done="rejected",
        form=form,
    )


@router.post("/kb/articles/{article_id}/feedback")
async def feedback_open_submit(
    request: Request,
    article_id: IdParam,
    db: Db,
    principal: Principal = authorize("feedback", "create"),
) -> Response:
    """Raise feedback from an article; on success, go to the new thread."""
    data = await form_data(request)
    form = {"kind": _text(data, "kind"), "subject": _text(data, "subject"), "body": _text(data, "body")}
    body, errors = validate(FeedbackCreate, form)
    status = 422
    if body is not None:
        try:
            async with db.begin():
                view = await feedback.open_thread(
                    db, principal, request.app.state.settings, article_id, body.kind, body.subject, body.body
                )
            return see_other(f"/kb/feedback/{view.thread.id}?done=opened")
        except ApiError as exc:
            if exc.status == 404:
                raise
            errors, status = [_message(exc)], exc.status
    article = await service.get_article(db, principal, article_id)  # 404 for an article the caller cannot see
    return _page(
        request,
        "kb/board/feedback_new.html",
        principal,
        status_code=status,
        errors=errors,
        article=article.article,
        article_title=article.current.title,
        article_id=article_id,
        feedback_form=form,
        feedback_can_open=True,
    )


# --- the board and announcements -----------------------------------------------------------------
@router.get("/kb/board")
async def board_page(
    request: Request,
    db: Db,
    principal: Principal = authorize("announcement", "list"),
    since_days: Annotated[int, Query(ge=1, le=366)] = 30,
) -> Response:
    entries = await board.board(db, principal, since_days)
    # Important announcements not yet acknowledged go first, however old; the rest in time order.
    pending = [e for e in entries if e.kind == "announcement" and e.requires_ack and not e.acked]
    rest = [e for e in entries if not (e.kind == "announcement" and e.requires_ack and not e.acked)]
    return _page(
        request,
        "kb/board/board.html",
        principal,
        pending=pending,
        entries=rest,
        since_days=since_days,
        day_choices=(7, 30, 90, 366),
        can_announce=allows(principal, "announcement", "create"),
        can_report=allows(principal, "announcement", "report"),
        can_ack=allows(principal, "announcement", "ack"),
    )


@router.post("/kb/announcements/{announcement_id}/ack")
async def announcement_ack_submit(
    announcement_id: IdParam,
    db: Db,
    principal: Principal = authorize("announcement", "ack", by_id=True),
) -> Response:
    async with db.begin():
        await board.acknowledge(db, principal, announcement_id)  # 404 unless addressed to the caller
    return see_other(f"/kb/board?done=acked#announcement-{announcement_id}")


def _announcement_form(
    request: Request, principal: Principal, *, form: dict[str, Any], errors: list[str], status_code: int = 200
) -> Response:
    return _page(
        request,
        "kb/board/announcement_form.html",
        principal,
        status_code=status_code,
        errors=errors,
        form=form,
        roles=AUDIENCE_ROLES,
    )


@router.get("/kb/announcements/new")
async def announcement_new_page(
    request: Request,
    article_id: IdQuery | None = None,
    principal: Principal = authorize("announcement", "create"),
) -> Response:
    form = {"audience_roles": list(AUDIENCE_ROLES), "article_id": str(article_id or "")}
    return _announcement_form(request, principal, form=form, errors=[])


@router.post("/kb/announcements")
async def announcement_create_submit(
    request: Request, db: Db, principal: Principal = authorize("announcement", "create")
) -> Response:
    data = await form_data(request)
    roles = data.get("audience_roles", [])
    form = {
        "title": _text(data, "title"),
        "body_markdown": _text(data, "body_markdown"),
        "requires_ack": data.get("requires_ack") == "1",
        "audience_roles": roles if isinstance(roles, list) else [],
        "article_id": _text(data, "article_id").strip(),
    }
    body, errors = validate(AnnouncementCreate, {**form, "article_id": form["article_id"] or None})
    status = 422
    if body is not None:
        try:
            async with db.begin():
                announcement = await board.create_announcement(db, principal, **body.model_dump())
            return see_other(f"/kb/board?done=announced#announcement-{announcement.id}")
        except ApiError as exc:
            errors, status = [_message(exc)], exc.status
    return _announcement_form(request, principal, form=form, errors=errors, status_code=status)


@router.get("/kb/announcements/{announcement_id}/unread")
async def announcement_unread_page(
    request: Request,
    announcement_id: IdParam,
    db: Db,
    principal: Principal = authorize("announcement", "report", by_id=True),
) -> Response:
    report = await board.unread_report(db, announcement_id)
    return _page(request, "kb/board/unread.html", principal, report=report, announcement=report.announcement)


# --- points --------------------------------------------------------------------------------------
@router.get("/kb/points")
async def points_page(
    request: Request,
    db: Db,
    principal: Principal = authorize("points", "read"),
    period: Annotated[str, Query(max_length=8)] = "month",
) -> Response:
    chosen = period if period in PERIODS else "month"
    time_zone = request.app.state.settings.time_zone
    result = await board.leaderboard(db, chosen, time_zone=time_zone, limit=LEADERBOARD_LIMIT)  # type: ignore[arg-type]
    mine = await board.my_points(db, principal, time_zone=time_zone)
    business_zone = ZoneInfo(time_zone)

    def day(value: datetime | None) -> str:
        return value.astimezone(business_zone).strftime("%Y-%m-%d") if value is not None else ""

    return _page(
        request,
        "kb/board/points.html",
        principal,
        period=chosen,
        periods=PERIODS,
        board=result,
        since=day(result.since),
        # The period ends at midnight starting the next one: show its last day.
        until=day(result.until - timedelta(seconds=1)) if result.until is not None else "",
        mine=mine,
        my_rank=next((i for i, r in enumerate(result.rows, start=1) if r.user_id == principal.user_id), None),
    )


# --- training collections (the case library) -----------------------------------------------------
async def _summaries(db: AsyncSession, items: list[board.TrainingItemView]) -> dict[int, dict[str, Any]]:
    """Article id -> what a trainee reads first: the case fields (problem, analysis, resolution,
    lessons) of the live version, else of the latest one (unpublished items reach curators only), or
    the opening of the text for an experience note."""
    ids = [i.article_id for i in items]
    if not ids:
        return {}
    articles = {a.id: a for a in (await db.scalars(select(Article).where(Article.id.in_(ids)))).all()}
    versions: dict[int, ArticleVersion] = {}
    live_ids = [a.published_version_id for a in articles.values() if a.published_version_id]
    if live_ids:
        for v in (await db.scalars(select(ArticleVersion).where(ArticleVersion.id.in_(live_ids)))).all():
            versions[v.article_id] = v
    rest = [i for i in ids if i not in versions]
    if rest:
        stmt = select(ArticleVersion).where(ArticleVersion.article_id.in_(rest)).order_by(ArticleVersion.number)
        for v in (await db.scalars(stmt)).all():
            versions[v.article_id] = v  # ascending: the latest version wins
    out: dict[int, dict[str, Any]] = {}
    for article_id, v in versions.items():
        fields = {name: _clip(str(v.case_fields.get(name) or "")) for name in service.CASE_FIELDS}
        out[article_id] = {
            "fields": [(name, text) for name, text in fields.items() if text],
            "opening": "" if any(fields.values()) else _clip(v.body_markdown),
        }
    return out


def _training_list(
    request: Request,
    principal: Principal,
    collections: list[board.CollectionView],
    *,
    status_code: int = 200,
    errors: list[str] | None = None,
    form: dict[str, str] | None = None,
) -> Response:
    return _page(
        request,
        "kb/board/training_list.html",
        principal,
        status_code=status_code,
        errors=errors or [],
        form=form or {},
        collections=collections,
        can_manage=allows(principal, "training", "manage") and board.curates(principal),
    )


@router.get("/kb/training")
async def training_list_page(
    request: Request, db: Db, principal: Principal = authorize("training", "list")
) -> Response:
    return _training_list(request, principal, await board.list_collections(db, principal))


@router.post("/kb/training")
async def training_create_submit(
    request: Request, db: Db, principal: Principal = authorize("training", "manage")
) -> Response:
    data = await form_data(request)
    form = {
        "name": _text(data, "name"),
        "description": _text(data, "description"),
        "article_ids": _text(data, "article_ids"),
    }
    body, errors = validate(
        CollectionCreate,
        {"name": form["name"], "description": form["description"], "article_ids": _id_tokens(form["article_ids"])},
    )
    status = 422
    if body is not None:
        try:
            async with db.begin():
                view = await board.create_collection(db, principal, **body.model_dump())
            return see_other(f"/kb/training/{view.collection.id}?done=created")
        except ApiError as exc:
            errors, status = [_message(exc)], exc.status
    collections = await board.list_collections(db, principal)
    return _training_list(request, principal, collections, status_code=status, errors=errors, form=form)


async def _collection_page(
    request: Request,
    db: AsyncSession,
    principal: Principal,
    collection_id: int,
    *,
    status_code: int = 200,
    errors: list[str] | None = None,
    form: dict[str, str] | None = None,
) -> Response:
    view = await board.get_collection(db, principal, collection_id)  # 404 when there is none
    return _page(
        request,
        "kb/board/training_detail.html",
        principal,
        status_code=status_code,
        errors=errors or [],
        form=form or {},
        view=view,
        collection=view.collection,
        summaries=await _summaries(db, view.items),
        can_manage=allows(principal, "training", "manage") and board.curates(principal),
    )


@router.get("/kb/training/{collection_id}")
async def training_detail_page(
    request: Request,
    collection_id: IdParam,
    db: Db,
    principal: Principal = authorize("training", "read", by_id=True),
) -> Response:
    return await _collection_page(request, db, principal, collection_id)


async def _collection_action(
    request: Request,
    db: AsyncSession,
    principal: Principal,
    collection_id: int,
    action: Callable[[], Any],
    *,
    done: str,
    form: dict[str, str],
) -> Response:
    return await run_form_action(
        db,
        action,
        success_url=f"/kb/training/{collection_id}?done={done}",
        refused=lambda exc: _collection_page(
            request, db, principal, collection_id, status_code=exc.status, errors=[_message(exc)], form=form
        ),
    )


@router.post("/kb/training/{collection_id}")
async def training_update_submit(
    request: Request,
    collection_id: IdParam,
    db: Db,
    principal: Principal = authorize("training", "manage", by_id=True),
) -> Response:
    data = await form_data(request)
    form = {"name": _text(data, "name"), "description": _text(data, "description")}
    body, errors = validate(CollectionUpdate, form)
    if body is None:
        return await _collection_page(request, db, principal, collection_id, status_code=422, errors=errors, form=form)
    return await _collection_action(
        request,
        db,
        principal,
        collection_id,
        lambda: board.update_collection(db, principal, collection_id, **body.model_dump(exclude_unset=True)),
        done="saved",
        form=form,
    )


@router.post("/kb/training/{collection_id}/items")
async def training_items_submit(
    request: Request,
    collection_id: IdParam,
    db: Db,
    principal: Principal = authorize("training", "manage", by_id=True),
) -> Response:
    form = {"article_ids": _text(await form_data(request), "article_ids")}
    body, errors = validate(CollectionItems, {"article_ids": _id_tokens(form["article_ids"])})
    if body is None:
        return await _collection_page(request, db, principal, collection_id, status_code=422, errors=errors, form=form)
    return await _collection_action(
        request,
        db,
        principal,
        collection_id,
        lambda: board.set_items(db, principal, collection_id, body.article_ids),
        done="items_saved",
        form=form,
    )


# --- the search-gap report -----------------------------------------------------------------------
@router.get("/kb/gaps")
async def gaps_page(
    request: Request,
    db: Db,
    principal: Principal = authorize("search_report", "read"),
    days: Annotated[int, Query(ge=1, le=365)] = 30,
) -> Response:
    rows = await search_gaps(db, since=utcnow() - timedelta(days=days), limit=GAP_LIMIT)
    return _page(
        request,
        "kb/board/gaps.html",
        principal,
        rows=rows,
        days=days,
        day_choices=GAP_DAYS,
        can_write=allows(principal, "article", "create"),
    )
