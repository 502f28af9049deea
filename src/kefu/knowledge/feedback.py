"""Feedback threads on articles: the only place that writes them.

Staff raise a question, an error report or a suggestion on any article they can see. It goes to the
article owner (when an active staff member other than the author) or else to the knowledge-manager pool,
and continues as a mail-like thread:

    open -> answered        the handling side replied
    answered -> open        the author replied again
    open | answered -> accepted | rejected (with a reason)   final: no more replies (409)

Accepting an error report or suggestion opens a draft revision of the article linked to the thread and
awards the author points once. Accepting a question means "answered satisfactorily" (no draft).

Who sees a thread: its author, its assignee, the article's owner, and knowledge managers/admins. Anyone
else gets 404, so an agent never learns about another agent's feedback.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, func, or_, select, true
from sqlalchemy.ext.asyncio import AsyncSession

from kefu.core import audit
from kefu.core.errors import ApiError, Conflict, Invalid, NotFound
from kefu.core.events import Event, publish_on_commit
from kefu.core.policy import Principal
from kefu.db.base import utcnow
from kefu.identity.models import STAFF_ROLES, User
from kefu.identity.service import actor_of
from kefu.knowledge import points, service
from kefu.knowledge.content import render_markdown
from kefu.knowledge.models import (
    Article,
    ArticleVersion,
    FeedbackKind,
    FeedbackMessage,
    FeedbackStatus,
    FeedbackThread,
)
from kefu.settings import Settings

MANAGER_ROLES = ("knowledge_manager", "admin")
RESOLVED = (FeedbackStatus.accepted, FeedbackStatus.rejected)
MAX_SUBJECT_CHARS = 300
MAX_MESSAGE_CHARS = 20_000
MAX_REASON_CHARS = 2000


def manages_feedback(principal: Principal) -> bool:
    """Knowledge managers and admins work the whole inbox."""
    return principal.has_role(*MANAGER_ROLES)


@dataclass
class ThreadView:
    thread: FeedbackThread
    article_title: str
    names: dict[int, str]  # display names of the users the thread mentions (author, assignee, resolver, writers)
    messages: list[FeedbackMessage] = field(default_factory=list)
    message_count: int = 0
    draft_version_number: int | None = None

    def name(self, user_id: int | None) -> str | None:
        return self.names.get(user_id) if user_id is not None else None


# --- reading -------------------------------------------------------------------------------------
def _participant_clause(principal: Principal) -> Any:
    if manages_feedback(principal):
        return true()
    me = principal.user_id
    owned = select(Article.id).where(Article.owner_id == me)
    return or_(FeedbackThread.author_id == me, FeedbackThread.assignee_id == me, FeedbackThread.article_id.in_(owned))


async def _load(db: AsyncSession, principal: Principal, thread_id: int, *, for_update: bool = False) -> FeedbackThread:
    if not service.is_staff(principal):
        raise NotFound("feedback thread")
    stmt = select(FeedbackThread).where(FeedbackThread.id == thread_id, _participant_clause(principal))
    if for_update:
        # Two resolvers (or a reply and a resolution) at once: the second waits and sees the first's result.
        stmt = stmt.with_for_update(of=FeedbackThread).execution_options(populate_existing=True)
    thread = await db.scalar(stmt)
    if thread is None:
        raise NotFound("feedback thread")
    return thread


async def _names(db: AsyncSession, user_ids: set[int | None]) -> dict[int, str]:
    ids = {i for i in user_ids if i is not None}
    if not ids:
        return {}
    rows = await db.execute(select(User.id, User.display_name).where(User.id.in_(ids)))
    return {int(uid): name for uid, name in rows.all()}


async def _titles(db: AsyncSession, threads: list[FeedbackThread]) -> dict[int, str]:
    """Thread id -> the title of the version the feedback was about (one query for a whole page)."""
    pairs = {(t.article_id, t.version_number) for t in threads if t.version_number is not None}
    if not pairs:
        return {}
    rows = await db.execute(
        select(ArticleVersion.article_id, ArticleVersion.number, ArticleVersion.title).where(
            or_(*(and_(ArticleVersion.article_id == a, ArticleVersion.number == n) for a, n in pairs))
        )
    )
    by_pair = {(a, n): title for a, n, title in rows.all()}
    return {t.id: by_pair.get((t.article_id, t.version_number), "") for t in threads}


async def _view(db: AsyncSession, thread: FeedbackThread) -> ThreadView:
    messages = list(
        (
            await db.scalars(
                select(FeedbackMessage).where(FeedbackMessage.thread_id == thread.id).order_by(FeedbackMessage.id)
            )
        ).all()
    )
    names = await _names(
        db, {thread.author_id, thread.assignee_id, thread.resolved_by_id, *(m.author_id for m in messages)}
    )
    draft_number = None
    if thread.draft_version_id is not None:
        draft_number = await db.scalar(
            select(ArticleVersion.number).where(ArticleVersion.id == thread.draft_version_id)
        )
    return ThreadView(
        thread=thread,
        article_title=(await _titles(db, [thread])).get(thread.id, ""),
        names=names,
        messages=messages,
        message_count=len(messages),
        draft_version_number=draft_number,
    )


async def get_thread(db: AsyncSession, principal: Principal, thread_id: int) -> ThreadView:
    return await _view(db, await _load(db, principal, thread_id))


async def list_threads(
    db: AsyncSession,
    principal: Principal,
    *,
    status: str | None = None,
    mine: bool = False,
    article_id: int | None = None,
    assignee_id: int | None = None,
    unassigned: bool = False,
    before_id: int | None = None,
    limit: int = 50,
) -> list[ThreadView]:
    """Newest first, keyset-paginated by id. Knowledge managers see every thread; everyone else only
    the threads they wrote, are assigned, or that concern articles they own. ``mine`` narrows to the
    threads the caller wrote or is assigned; ``unassigned`` to the knowledge-manager pool."""
    if not service.is_staff(principal):
        return []
    stmt = select(FeedbackThread).where(_participant_clause(principal))
    if status is not None:
        stmt = stmt.where(FeedbackThread.status == status)
    if mine:
        me = principal.user_id
        stmt = stmt.where(or_(FeedbackThread.author_id == me, FeedbackThread.assignee_id == me))
    if article_id is not None:
        stmt = stmt.where(FeedbackThread.article_id == article_id)
    if assignee_id is not None:
        stmt = stmt.where(FeedbackThread.assignee_id == assignee_id)
    if unassigned:
        stmt = stmt.where(FeedbackThread.assignee_id.is_(None))
    if before_id is not None:
        stmt = stmt.where(FeedbackThread.id < before_id)
    threads = list((await db.scalars(stmt.order_by(FeedbackThread.id.desc()).limit(limit))).all())
    if not threads:
        return []
    ids = [t.id for t in threads]
    counts = dict(
        (
            await db.execute(
                select(FeedbackMessage.thread_id, func.count())
                .where(FeedbackMessage.thread_id.in_(ids))
                .group_by(FeedbackMessage.thread_id)
            )
        ).all()
    )
    titles = await _titles(db, threads)
    names = await _names(db, {u for t in threads for u in (t.author_id, t.assignee_id, t.resolved_by_id)})
    return [
        ThreadView(thread=t, article_title=titles.get(t.id, ""), names=names, message_count=int(counts.get(t.id, 0)))
        for t in threads
    ]


# --- writing -------------------------------------------------------------------------------------
def _clean_subject(subject: str) -> str:
    subject = " ".join(subject.split())
    if not subject:
        raise Invalid("the subject must not be empty")
    if len(subject) > MAX_SUBJECT_CHARS:
        raise Invalid(f"the subject is longer than {MAX_SUBJECT_CHARS} characters")
    return subject


def _check_body(body: str) -> str:
    if not body.strip():
        raise Invalid("the message must not be empty")
    if len(body) > MAX_MESSAGE_CHARS:
        raise Invalid(f"the message is longer than {MAX_MESSAGE_CHARS} characters")
    return body


def _add_message(db: AsyncSession, thread: FeedbackThread, author_id: int | None, body: str) -> FeedbackMessage:
    # The source is kept as written; what is ever shown is the sanitized HTML (no script survives).
    message = FeedbackMessage(
        thread_id=thread.id, author_id=author_id, body_markdown=body, body_html=render_markdown(body)
    )
    db.add(message)
    return message


def _to_handlers(thread: FeedbackThread) -> dict[str, tuple]:
    """Event audience on the handling side: the assignee, or the knowledge-manager pool."""
    if thread.assignee_id is not None:
        return {"user_ids": (thread.assignee_id,)}
    return {"roles": ("knowledge_manager",)}


async def _default_assignee(db: AsyncSession, article: Article, author_id: int | None) -> int | None:
    if article.owner_id is None or article.owner_id == author_id:
        return None  # feedback on one's own article needs another pair of eyes: the pool
    owner = await db.get(User, article.owner_id)
    if owner is None or not owner.is_active or not owner.role_names.intersection(STAFF_ROLES):
        return None
    return owner.id


async def open_thread(
    db: AsyncSession,
    principal: Principal,
    settings: Settings,
    article_id: int,
    kind: str,
    subject: str,
    body: str,
) -> ThreadView:
    """A new thread on an article the principal can see, with its first message."""
    if not service.is_staff(principal):
        raise ApiError(403, "forbidden", "only staff give feedback on articles")
    if kind not in FeedbackKind.__members__:
        raise Invalid("kind must be question, error or suggestion")
    subject = _clean_subject(subject)
    _check_body(body)
    view = await service.get_article(db, principal, article_id)
    article = view.article
    if article.archived_at is not None:
        raise Conflict("the article is archived; feedback is closed")
    shown = view.live or view.working
    thread = FeedbackThread(
        article_id=article.id,
        version_number=shown.number if shown is not None else None,
        kind=kind,
        status=FeedbackStatus.open,
        subject=subject,
        author_id=principal.user_id,
        assignee_id=await _default_assignee(db, article, principal.user_id),
    )
    db.add(thread)
    await db.flush()
    _add_message(db, thread, principal.user_id, body)
    await db.flush()
    await audit.record(
        db,
        actor_of(principal),
        "feedback.open",
        object_type="feedback_thread",
        object_id=thread.id,
        details={"article_id": article.id, "kind": kind, "assignee_id": thread.assignee_id},
    )
    publish_on_commit(
        db,
        Event(
            "kb.feedback_opened",
            {
                "thread_id": thread.id,
                "article_id": article.id,
                "kind": kind,
                "message": f"新反馈 / new feedback: {subject}",
            },
            **_to_handlers(thread),
        ),
    )
    return await _view(db, thread)


async def reply(db: AsyncSession, principal: Principal, thread_id: int, body: str) -> ThreadView:
    """Add a message. The handling side answering moves open -> answered; the author writing again on
    an answered thread reopens it. Resolved threads are closed (409)."""
    _check_body(body)
    thread = await _load(db, principal, thread_id, for_update=True)
    if thread.status in RESOLVED:
        raise Conflict(f"the thread is {thread.status}; open a new one to continue")
    by_author = principal.user_id == thread.author_id
    _add_message(db, thread, principal.user_id, body)
    if by_author and thread.status == FeedbackStatus.answered:
        thread.status = FeedbackStatus.open
    elif not by_author and thread.status == FeedbackStatus.open:
        thread.status = FeedbackStatus.answered
    # The inbox sorts by activity: a reply is activity even when the status stays the same.
    thread.updated_at = utcnow()
    await db.flush()
    data = {
        "thread_id": thread.id,
        "article_id": thread.article_id,
        "status": thread.status,
        "message": f"反馈有新回复 / new reply: {thread.subject}",
    }
    if by_author:
        publish_on_commit(db, Event("kb.feedback_reply", data, **_to_handlers(thread)))
    elif thread.author_id is not None:
        publish_on_commit(db, Event("kb.feedback_reply", data, user_ids=(thread.author_id,)))
    return await _view(db, thread)


async def _resolvable(db: AsyncSession, principal: Principal, thread_id: int) -> FeedbackThread:
    thread = await _load(db, principal, thread_id, for_update=True)
    owner_id = await db.scalar(select(Article.owner_id).where(Article.id == thread.article_id))
    if not (manages_feedback(principal) or principal.user_id in (thread.assignee_id, owner_id)):
        raise ApiError(403, "forbidden", "only the article owner or a knowledge manager may resolve feedback")
    return thread


async def _open_revision(db: AsyncSession, principal: Principal, thread: FeedbackThread) -> ArticleVersion:
    """The draft the accepted change goes into: the article's working version if it has one (nothing is
    duplicated), else a new draft that starts as a copy of the live version."""
    working = await db.scalar(
        select(ArticleVersion).where(
            ArticleVersion.article_id == thread.article_id, ArticleVersion.status.in_(service.WORKING)
        )
    )
    if working is None:
        article = await db.get(Article, thread.article_id)
        live = (
            await db.get(ArticleVersion, article.published_version_id)
            if article is not None and article.published_version_id
            else None
        )
        if live is None:
            raise Conflict("the article has no version to revise")
        content = service.Content(
            title=live.title,
            body_markdown=live.body_markdown,
            similar_questions=list(live.similar_questions),
            tags=list(live.tags),
            case_fields=dict(live.case_fields),
            change_note=f"反馈 / feedback #{thread.id}: {thread.subject}"[:500],
        )
        working = (await service.save_draft(db, principal, thread.article_id, content)).working
        assert working is not None
    if working.feedback_thread_id is None:
        working.feedback_thread_id = thread.id
    thread.draft_version_id = working.id
    return working


async def award_accepted_feedback(db: AsyncSession, settings: Settings, thread: FeedbackThread) -> bool:
    """Points for the author of an accepted thread, once per thread however often this runs.

    Nobody earns points by accepting their own feedback."""
    if thread.status != FeedbackStatus.accepted or thread.author_id is None:
        return False
    if thread.author_id == thread.resolved_by_id:
        return False
    rule = "feedback_answered" if thread.kind == FeedbackKind.question else "feedback_accepted"
    return await points.award(
        db,
        settings.kb_points,
        user_id=thread.author_id,
        rule=rule,
        event_key=f"{rule}:{thread.id}",
        article_id=thread.article_id,
        note=thread.subject,
    )


def _resolve(thread: FeedbackThread, principal: Principal, status: str, reason: str) -> None:
    thread.status = status
    thread.resolution_reason = reason
    thread.resolved_by_id = principal.user_id
    thread.resolved_at = utcnow()
    thread.updated_at = thread.resolved_at


def _check_reason(reason: str, *, required: bool) -> str:
    reason = reason.strip()
    if required and not reason:
        raise Invalid("say why the feedback is rejected")
    if len(reason) > MAX_REASON_CHARS:
        raise Invalid(f"the reason is longer than {MAX_REASON_CHARS} characters")
    return reason


async def accept(
    db: AsyncSession, principal: Principal, settings: Settings, thread_id: int, reason: str = ""
) -> ThreadView:
    """Accept an error report or suggestion (opens the linked draft) or a question (answered well).

    Accepting an accepted thread again changes nothing and answers as before, so a retried request is
    harmless; accepting a rejected one is a conflict."""
    reason = _check_reason(reason, required=False)
    thread = await _resolvable(db, principal, thread_id)
    if thread.status == FeedbackStatus.accepted:
        return await _view(db, thread)
    if thread.status == FeedbackStatus.rejected:
        raise Conflict("the feedback was rejected; it cannot be accepted now")
    draft = None
    if thread.kind != FeedbackKind.question:
        draft = await _open_revision(db, principal, thread)
    _resolve(thread, principal, FeedbackStatus.accepted, reason)
    await award_accepted_feedback(db, settings, thread)
    await db.flush()
    await audit.record(
        db,
        actor_of(principal),
        "feedback.accepted",
        object_type="feedback_thread",
        object_id=thread.id,
        details={"article_id": thread.article_id, "draft_version": draft.number if draft else None},
    )
    if thread.author_id is not None:
        publish_on_commit(
            db,
            Event(
                "kb.feedback_resolved",
                {
                    "thread_id": thread.id,
                    "article_id": thread.article_id,
                    "status": thread.status,
                    "message": f"反馈已采纳 / feedback accepted: {thread.subject}",
                },
                user_ids=(thread.author_id,),
            ),
        )
    return await _view(db, thread)


async def reject(db: AsyncSession, principal: Principal, thread_id: int, reason: str) -> ThreadView:
    """Reject with a reason (required). Rejecting a rejected thread again changes nothing."""
    reason = _check_reason(reason, required=True)
    thread = await _resolvable(db, principal, thread_id)
    if thread.status == FeedbackStatus.rejected:
        return await _view(db, thread)
    if thread.status == FeedbackStatus.accepted:
        raise Conflict("the feedback was accepted; it cannot be rejected now")
    _resolve(thread, principal, FeedbackStatus.rejected, reason)
    await db.flush()
    await audit.record(
        db,
        actor_of(principal),
        "feedback.rejected",
        object_type="feedback_thread",
        object_id=thread.id,
        details={"article_id": thread.article_id},
    )
    if thread.author_id is not None:
        publish_on_commit(
            db,
            Event(
                "kb.feedback_resolved",
                {
                    "thread_id": thread.id,
                    "article_id": thread.article_id,
                    "status": thread.status,
                    "message": f"反馈未采纳 / feedback rejected: {thread.subject}",
                },
                user_ids=(thread.author_id,),
            ),
        )
    return await _view(db, thread)
