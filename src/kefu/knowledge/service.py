"""Knowledge articles: the only place that writes articles and versions.

Workflow of a version: draft -> in_review (a named reviewer) -> approved -> published; a published
version is immutable and is superseded when the next one is published. Editing a published article
creates the next version as a draft while the published one stays live. At most one working version
(draft, in review or approved) exists per article. Who may publish directly is decided by the access
matrix (``article``/``publish``); everyone else goes through review.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, and_, func, or_, select, true
from sqlalchemy.ext.asyncio import AsyncSession

from kefu.core import audit
from kefu.core.errors import ApiError, Conflict, Invalid, NotFound
from kefu.core.events import Event, publish_on_commit
from kefu.core.jobs import Job, enqueue, job_handler
from kefu.core.policy import Principal, allows
from kefu.db.base import utcnow
from kefu.identity.models import STAFF_ROLES, User, UserRole
from kefu.identity.service import actor_of
from kefu.knowledge import points
from kefu.knowledge.content import render_markdown
from kefu.knowledge.models import (
    Announcement,
    Article,
    ArticleVersion,
    Audience,
    Category,
    IndexChange,
    VersionStatus,
)
from kefu.settings import Settings

WORKING = (VersionStatus.draft, VersionStatus.in_review, VersionStatus.approved)
STAFF = tuple(sorted(STAFF_ROLES))
CASE_FIELDS = ("problem", "analysis", "resolution", "lessons")


@dataclass
class Content:
    """What an author writes: everything versioned."""

    title: str
    body_markdown: str = ""
    similar_questions: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    case_fields: dict[str, str] = field(default_factory=dict)
    change_note: str = ""


@dataclass
class Placement:
    """Where an article lives and who sees it: not versioned, changed by publishers."""

    kind: str = "faq"
    audience: str = Audience.internal
    language: str = "zh-CN"
    category_id: int | None = None
    owner_id: int | None = None
    translation_of: int | None = None
    verify_interval_days: int | None = None
    effective_from: datetime | None = None
    expires_at: datetime | None = None


@dataclass
class ArticleView:
    article: Article
    live: ArticleVersion | None  # the published version, if any
    working: ArticleVersion | None  # the draft / in review / approved version, if any

    @property
    def status(self) -> str:
        if self.article.archived_at is not None:
            return "archived"
        if self.working is not None:
            return self.working.status
        return VersionStatus.published if self.live is not None else VersionStatus.draft

    @property
    def current(self) -> ArticleVersion:
        return self.live or self.working  # type: ignore[return-value]


INDEX_EVENT = "kb.index_changed"


def index_changed(db: AsyncSession, article_id: int) -> None:
    """Record that an article's searchable content changed, in the caller's transaction.

    The feed row is what every process's index follows (nothing is lost if a message is); the event,
    sent on commit to no user, only wakes the indexes so they need not wait for their next poll.
    """
    db.add(IndexChange(article_id=article_id))
    publish_on_commit(db, Event(INDEX_EVENT, {"article_id": article_id}))


# --- visibility ----------------------------------------------------------------------------------
def is_staff(principal: Principal) -> bool:
    return bool(principal.roles.intersection(STAFF))


def sees_all_drafts(principal: Principal) -> bool:
    return allows(principal, "article", "review") or principal.has_role("supervisor")


def live_now_clause(now: datetime) -> Any:
    return and_(
        Article.archived_at.is_(None),
        Article.published_version_id.is_not(None),
        or_(Article.effective_from.is_(None), Article.effective_from <= now),
        or_(Article.expires_at.is_(None), Article.expires_at > now),
    )


def visibility_clause(principal: Principal, now: datetime | None = None) -> Any:
    """Which articles ``principal`` may see at all: used by every list, search and export."""
    now = now or utcnow()
    if not is_staff(principal):
        # Customers: public, published, in force. Never a draft, never an internal article.
        return and_(Article.audience == Audience.public, live_now_clause(now))
    if sees_all_drafts(principal):
        return true()
    # Agents: every published article, and the unpublished ones they are writing themselves.
    own_work = select(ArticleVersion.article_id).where(
        ArticleVersion.author_id == principal.user_id, ArticleVersion.status.in_(WORKING)
    )
    return or_(Article.published_version_id.is_not(None), Article.id.in_(own_work))


def may_see_working(principal: Principal, version: ArticleVersion) -> bool:
    return is_staff(principal) and (sees_all_drafts(principal) or version.author_id == principal.user_id)


async def _working(db: AsyncSession, article_id: int) -> ArticleVersion | None:
    return await db.scalar(
        select(ArticleVersion).where(ArticleVersion.article_id == article_id, ArticleVersion.status.in_(WORKING))
    )


async def _view(db: AsyncSession, principal: Principal, article: Article) -> ArticleView:
    live = await db.get(ArticleVersion, article.published_version_id) if article.published_version_id else None
    working = await _working(db, article.id)
    if working is not None and not may_see_working(principal, working):
        working = None
    return ArticleView(article, live, working)


async def get_article(db: AsyncSession, principal: Principal, article_id: int) -> ArticleView:
    article = await db.scalar(select(Article).where(Article.id == article_id, visibility_clause(principal)))
    if article is None:
        raise NotFound("article")
    return await _view(db, principal, article)


@dataclass(frozen=True)
class ArticleFilter:
    status: str | None = None  # published, draft, in_review, approved, archived
    kind: str | None = None
    audience: str | None = None
    language: str | None = None
    category_id: int | None = None
    owner_id: int | None = None
    title: str = ""


def _filtered(principal: Principal, flt: ArticleFilter) -> Select[tuple[Article]]:
    stmt = select(Article).where(visibility_clause(principal))
    if flt.status == "archived":
        stmt = stmt.where(Article.archived_at.is_not(None))
    elif flt.status == "published":
        stmt = stmt.where(Article.archived_at.is_(None), Article.published_version_id.is_not(None))
    elif flt.status in WORKING:
        stmt = stmt.where(
            Article.archived_at.is_(None),
            Article.id.in_(select(ArticleVersion.article_id).where(ArticleVersion.status == flt.status)),
        )
    elif flt.status is None:
        stmt = stmt.where(Article.archived_at.is_(None))
    for column, value in (
        (Article.kind, flt.kind),
        (Article.audience, flt.audience),
        (Article.language, flt.language),
        (Article.category_id, flt.category_id),
        (Article.owner_id, flt.owner_id),
    ):
        if value is not None:
            stmt = stmt.where(column == value)
    if flt.title:
        titled = select(ArticleVersion.article_id).where(ArticleVersion.title.ilike(f"%{flt.title}%"))
        stmt = stmt.where(Article.id.in_(titled))
    return stmt


async def list_articles(
    db: AsyncSession, principal: Principal, flt: ArticleFilter, *, after_id: int = 0, limit: int = 50
) -> list[ArticleView]:
    stmt = _filtered(principal, flt).where(Article.id > after_id).order_by(Article.id).limit(limit)
    articles = list((await db.scalars(stmt)).all())
    if not articles:
        return []
    ids = [a.id for a in articles]
    # Two queries for the whole page, whatever its length (no per-row lookups).
    live_ids = [a.published_version_id for a in articles if a.published_version_id]
    lives = {v.id: v for v in (await db.scalars(select(ArticleVersion).where(ArticleVersion.id.in_(live_ids)))).all()}
    workings = {
        v.article_id: v
        for v in (
            await db.scalars(
                select(ArticleVersion).where(ArticleVersion.article_id.in_(ids), ArticleVersion.status.in_(WORKING))
            )
        ).all()
        if may_see_working(principal, v)
    }
    return [ArticleView(a, lives.get(a.published_version_id or 0), workings.get(a.id)) for a in articles]


# --- writing -------------------------------------------------------------------------------------
def _validate_content(kind: str, content: Content) -> None:
    if not content.title.strip():
        raise Invalid("the title (standard question) must not be empty")
    if kind == "case":
        unknown = set(content.case_fields) - set(CASE_FIELDS)
        if unknown:
            raise Invalid("unknown case fields", {"fields": sorted(unknown)})
    elif content.case_fields:
        raise Invalid("case fields belong to articles of kind 'case'")


def _normalized_list(values: list[str], limit: int) -> list[str]:
    seen: dict[str, None] = {}
    for value in values:
        value = " ".join(value.split())
        if value and value.lower() not in {k.lower() for k in seen}:
            seen[value] = None
    return list(seen)[:limit]


def _fill(version: ArticleVersion, content: Content) -> None:
    version.title = " ".join(content.title.split())
    version.body_markdown = content.body_markdown
    version.body_html = render_markdown(content.body_markdown)
    version.similar_questions = _normalized_list(content.similar_questions, 200)
    version.tags = _normalized_list(content.tags, 50)
    version.case_fields = {k: v for k, v in content.case_fields.items() if v}
    version.change_note = content.change_note


async def _check_placement(db: AsyncSession, placement: Placement) -> None:
    if placement.category_id is not None and await db.get(Category, placement.category_id) is None:
        raise Invalid(f"category {placement.category_id} does not exist")
    if placement.owner_id is not None:
        owner = await db.get(User, placement.owner_id)
        if owner is None or not owner.is_active or not owner.role_names.intersection(STAFF):
            raise Invalid("the owner must be an active staff member")
    if placement.effective_from and placement.expires_at and placement.expires_at <= placement.effective_from:
        raise Invalid("expires_at must be after effective_from")


async def create_article(
    db: AsyncSession, principal: Principal, content: Content, placement: Placement, *, external_id: str | None = None
) -> ArticleView:
    """A new article with version 1 as a draft by ``principal`` (a contribution, if they cannot publish)."""
    _validate_content(placement.kind, content)
    await _check_placement(db, placement)
    group_id = None
    if placement.translation_of is not None:
        original = await db.get(Article, placement.translation_of)
        if original is None:
            raise Invalid("translation_of names no article")
        group_id = original.translation_group_id or original.id
        original.translation_group_id = group_id
    if external_id is not None and await db.scalar(select(Article.id).where(Article.external_id == external_id)):
        raise Conflict("an article with this external id exists")
    article = Article(
        external_id=external_id,
        kind=placement.kind,
        audience=placement.audience,
        language=placement.language,
        category_id=placement.category_id,
        owner_id=placement.owner_id or principal.user_id,
        translation_group_id=group_id,
        verify_interval_days=placement.verify_interval_days,
        effective_from=placement.effective_from,
        expires_at=placement.expires_at,
        last_verified_at=utcnow(),
    )
    db.add(article)
    await db.flush()
    version = ArticleVersion(article_id=article.id, number=1, status=VersionStatus.draft, author_id=principal.user_id)
    _fill(version, content)
    db.add(version)
    await db.flush()
    await audit.record(
        db,
        actor_of(principal),
        "article.create",
        object_type="article",
        object_id=article.id,
        details={"title": version.title, "kind": article.kind},
    )
    return ArticleView(article, None, version)


async def _article_for_write(db: AsyncSession, principal: Principal, article_id: int) -> Article:
    article = await db.scalar(
        select(Article).where(Article.id == article_id, visibility_clause(principal)).with_for_update()
    )
    if article is None:
        raise NotFound("article")
    if article.archived_at is not None:
        raise Conflict("the article is archived; restore it first")
    return article


def may_edit(principal: Principal, article: Article, version: ArticleVersion | None) -> bool:
    if allows(principal, "article", "publish"):
        return True
    if version is not None and version.author_id == principal.user_id:
        return True
    return article.owner_id == principal.user_id


async def save_draft(
    db: AsyncSession, principal: Principal, article_id: int, content: Content, *, expected_version: int | None = None
) -> ArticleView:
    """Save the working draft; on a published article with none, start the next version from it.

    ``expected_version`` (the version number the editor started from) refuses a save that would
    silently overwrite someone else's newer draft.
    """
    article = await _article_for_write(db, principal, article_id)
    _validate_content(article.kind, content)
    working = await _working(db, article.id)
    if working is not None and working.status != VersionStatus.draft:
        raise Conflict(f"version {working.number} is {working.status}; withdraw it to draft before editing")
    if not may_edit(principal, article, working):
        raise ApiError(403, "forbidden", "only the author, the owner or a knowledge manager may edit this article")
    if working is None:
        latest = await db.scalar(select(func.max(ArticleVersion.number)).where(ArticleVersion.article_id == article.id))
        live = await db.get(ArticleVersion, article.published_version_id) if article.published_version_id else None
        working = ArticleVersion(
            article_id=article.id,
            number=(latest or 0) + 1,
            status=VersionStatus.draft,
            author_id=principal.user_id,
            based_on_version=live.number if live else None,
        )
        db.add(working)
    elif expected_version is not None and expected_version != working.number:
        raise Conflict("the draft changed since you opened it; reload", {"current_version": working.number})
    _fill(working, content)
    await db.flush()
    await audit.record(
        db,
        actor_of(principal),
        "article.draft_saved",
        object_type="article",
        object_id=article.id,
        details={"version": working.number},
    )
    return await _view(db, principal, article)


async def _version_in(db: AsyncSession, article: Article, number: int) -> ArticleVersion:
    version = await db.scalar(
        select(ArticleVersion).where(ArticleVersion.article_id == article.id, ArticleVersion.number == number)
    )
    if version is None:
        raise NotFound("version")
    return version


async def _working_required(db: AsyncSession, article: Article, *expected: str) -> ArticleVersion:
    working = await _working(db, article.id)
    if working is None or working.status not in expected:
        state = working.status if working else "no working version"
        raise Conflict(f"not possible now: the article has {state}", {"expected": list(expected)})
    return working


async def submit_for_review(db: AsyncSession, principal: Principal, article_id: int, reviewer_id: int) -> ArticleView:
    article = await _article_for_write(db, principal, article_id)
    working = await _working_required(db, article, VersionStatus.draft)
    if not may_edit(principal, article, working):
        raise ApiError(403, "forbidden", "only the author or the owner may submit this draft")
    reviewer = await db.get(User, reviewer_id)
    reviewer_principal = Principal(user_id=reviewer.id, roles=reviewer.role_names, via="session") if reviewer else None
    if reviewer is None or not reviewer.is_active or not allows(reviewer_principal, "article", "review"):  # type: ignore[arg-type]
        raise Invalid("the reviewer must be an active knowledge manager or administrator")
    working.status = VersionStatus.in_review
    working.reviewer_id = reviewer_id
    working.submitted_at = utcnow()
    working.review_comment = ""
    await audit.record(
        db,
        actor_of(principal),
        "article.submitted",
        object_type="article",
        object_id=article.id,
        details={"version": working.number, "reviewer_id": reviewer_id},
    )
    publish_on_commit(
        db,
        Event(
            "kb.review_requested",
            {
                "article_id": article.id,
                "version": working.number,
                "title": working.title,
                "message": f"待审核 / review requested: {working.title}",
            },
            user_ids=(reviewer_id,),
        ),
    )
    await db.flush()
    return await _view(db, principal, article)


async def withdraw(db: AsyncSession, principal: Principal, article_id: int) -> ArticleView:
    """Take an in-review or approved version back to draft (to edit it again)."""
    article = await _article_for_write(db, principal, article_id)
    working = await _working_required(db, article, VersionStatus.in_review, VersionStatus.approved)
    if not may_edit(principal, article, working):
        raise ApiError(403, "forbidden", "only the author, the owner or a knowledge manager may withdraw it")
    working.status = VersionStatus.draft
    working.publish_at = None
    await audit.record(
        db,
        actor_of(principal),
        "article.withdrawn",
        object_type="article",
        object_id=article.id,
        details={"version": working.number},
    )
    await db.flush()
    return await _view(db, principal, article)


async def review(
    db: AsyncSession, principal: Principal, article_id: int, *, approve: bool, comment: str = ""
) -> ArticleView:
    article = await _article_for_write(db, principal, article_id)
    working = await _working_required(db, article, VersionStatus.in_review)
    if working.reviewer_id != principal.user_id and not principal.has_role("admin"):
        raise ApiError(403, "forbidden", "only the named reviewer (or an administrator) may review this version")
    if not approve and not comment.strip():
        raise Invalid("say what must change when sending a version back")
    working.status = VersionStatus.approved if approve else VersionStatus.draft
    working.reviewed_at = utcnow()
    working.review_comment = comment
    await audit.record(
        db,
        actor_of(principal),
        "article.approved" if approve else "article.changes_requested",
        object_type="article",
        object_id=article.id,
        details={"version": working.number},
    )
    if working.author_id:
        verdict = "已通过 / approved" if approve else "需修改 / changes requested"
        publish_on_commit(
            db,
            Event(
                "kb.reviewed",
                {
                    "article_id": article.id,
                    "version": working.number,
                    "approved": approve,
                    "message": f"{verdict}: {working.title}",
                },
                user_ids=(working.author_id,),
            ),
        )
    await db.flush()
    return await _view(db, principal, article)


async def publish(
    db: AsyncSession,
    principal: Principal,
    settings: Settings,
    article_id: int,
    *,
    publish_at: datetime | None = None,
    announce: bool = False,
    requires_ack: bool = False,
) -> ArticleView:
    """Publish the working version now, or schedule it. Publishers may skip review (the matrix says who)."""
    article = await _article_for_write(db, principal, article_id)
    working = await _working_required(db, article, VersionStatus.draft, VersionStatus.approved)
    now = utcnow()
    if publish_at is not None and publish_at > now + timedelta(seconds=1):
        working.status = VersionStatus.approved
        working.publish_at = publish_at
        working.published_by_id = principal.user_id
        working.reviewed_at = working.reviewed_at or now
        # The job carries the time it was scheduled for: a later re-schedule makes a new job and the
        # old one finds the time changed and does nothing.
        await enqueue(
            db,
            "kb.publish_scheduled",
            {
                "version_id": working.id,
                "publish_at": publish_at.isoformat(),
                "announce": announce,
                "requires_ack": requires_ack,
            },
            idempotency_key=f"kb.publish:{working.id}:{publish_at.isoformat()}",
            run_at=publish_at,
        )
        await audit.record(
            db,
            actor_of(principal),
            "article.publish_scheduled",
            object_type="article",
            object_id=article.id,
            details={"version": working.number, "at": publish_at.isoformat()},
        )
        await db.flush()
        return await _view(db, principal, article)
    await _make_live(
        db, settings, article, working, publisher_id=principal.user_id, announce=announce, requires_ack=requires_ack
    )
    await audit.record(
        db,
        actor_of(principal),
        "article.published",
        object_type="article",
        object_id=article.id,
        details={"version": working.number},
    )
    await db.flush()
    return await _view(db, principal, article)


async def _make_live(
    db: AsyncSession,
    settings: Settings,
    article: Article,
    version: ArticleVersion,
    *,
    publisher_id: int | None,
    announce: bool,
    requires_ack: bool,
) -> None:
    now = utcnow()
    if article.published_version_id:
        previous = await db.get(ArticleVersion, article.published_version_id)
        if previous is not None:
            previous.status = VersionStatus.superseded
    version.status = VersionStatus.published
    version.published_at = now
    version.publish_at = None
    version.published_by_id = publisher_id
    article.published_version_id = version.id
    article.last_verified_at = now
    article.updated_at = now
    index_changed(db, article.id)
    if announce or requires_ack:
        db.add(
            Announcement(
                title=version.title,
                body_markdown=version.change_note,
                body_html=render_markdown(version.change_note),
                article_id=article.id,
                version_number=version.number,
                requires_ack=requires_ack,
                audience_roles=list(STAFF),
                created_by_id=publisher_id,
            )
        )
    # A member's contribution published by someone else earns them points, once per article.
    first_author = await db.scalar(
        select(ArticleVersion.author_id).where(ArticleVersion.article_id == article.id, ArticleVersion.number == 1)
    )
    if first_author and first_author != publisher_id and version.number == 1:
        await points.award(
            db,
            settings.kb_points,
            user_id=first_author,
            rule="contribution_published",
            event_key=f"contribution_published:{article.id}",
            article_id=article.id,
            note=version.title,
        )
    publish_on_commit(
        db,
        Event(
            "kb.article_published",
            {"article_id": article.id, "version": version.number, "title": version.title},
            roles=STAFF,
        ),
    )


@job_handler("kb.publish_scheduled")
async def _publish_scheduled(db: AsyncSession, job: Job, settings: Settings) -> None:
    version = await db.get(ArticleVersion, job.payload["version_id"])
    if (
        version is None
        or version.status != VersionStatus.approved
        or version.publish_at is None
        or version.publish_at.isoformat() != job.payload["publish_at"]
    ):
        return  # withdrawn, re-scheduled or already published: nothing to do
    article = await db.get(Article, version.article_id, with_for_update=True)
    if article is None or article.archived_at is not None:
        return
    await _make_live(
        db,
        settings,
        article,
        version,
        publisher_id=version.published_by_id,
        announce=job.payload.get("announce", False),
        requires_ack=job.payload.get("requires_ack", False),
    )
    await audit.record(
        db,
        audit.Actor.system("scheduler"),
        "article.published",
        object_type="article",
        object_id=article.id,
        details={"version": version.number, "scheduled": True},
    )


async def archive(db: AsyncSession, principal: Principal, article_id: int) -> ArticleView:
    article = await _article_for_write(db, principal, article_id)
    article.archived_at = utcnow()
    working = await _working(db, article.id)
    if working is not None:
        working.status = VersionStatus.withdrawn
    index_changed(db, article.id)
    await audit.record(db, actor_of(principal), "article.archived", object_type="article", object_id=article.id)
    publish_on_commit(db, Event("kb.article_archived", {"article_id": article.id}, roles=STAFF))
    await db.flush()
    return await _view(db, principal, article)


async def unarchive(db: AsyncSession, principal: Principal, article_id: int) -> ArticleView:
    article = await db.scalar(select(Article).where(Article.id == article_id, visibility_clause(principal)))
    if article is None:
        raise NotFound("article")
    if article.archived_at is None:
        return await _view(db, principal, article)
    article.archived_at = None
    index_changed(db, article.id)
    await audit.record(db, actor_of(principal), "article.unarchived", object_type="article", object_id=article.id)
    await db.flush()
    return await _view(db, principal, article)


async def restore_version(db: AsyncSession, principal: Principal, article_id: int, number: int) -> ArticleView:
    """Start a new draft from any earlier version. Nothing is lost: the history stays as it was."""
    article = await _article_for_write(db, principal, article_id)
    if await _working(db, article.id) is not None:
        raise Conflict("the article already has a working version; publish or withdraw it first")
    old = await _version_in(db, article, number)
    content = Content(
        title=old.title,
        body_markdown=old.body_markdown,
        similar_questions=list(old.similar_questions),
        tags=list(old.tags),
        case_fields=dict(old.case_fields),
        change_note=f"restored from v{number}",
    )
    view = await save_draft(db, principal, article.id, content)
    assert view.working is not None
    view.working.based_on_version = number
    await audit.record(
        db,
        actor_of(principal),
        "article.version_restored",
        object_type="article",
        object_id=article.id,
        details={"from_version": number, "draft": view.working.number},
    )
    return view


async def verify(db: AsyncSession, principal: Principal, article_id: int) -> ArticleView:
    article = await _article_for_write(db, principal, article_id)
    article.last_verified_at = utcnow()
    await audit.record(db, actor_of(principal), "article.verified", object_type="article", object_id=article.id)
    await db.flush()
    return await _view(db, principal, article)


async def update_placement(db: AsyncSession, principal: Principal, article_id: int, **changes: Any) -> ArticleView:
    """Audience, category, owner, language, validity, verification interval: publisher decisions."""
    article = await _article_for_write(db, principal, article_id)
    merged = Placement(
        **{
            f: changes.get(f, getattr(article, f, None))
            for f in (
                "kind",
                "audience",
                "language",
                "category_id",
                "owner_id",
                "verify_interval_days",
                "effective_from",
                "expires_at",
            )
        }
    )
    await _check_placement(db, merged)
    for key, value in changes.items():
        setattr(article, key, value)
    index_changed(db, article.id)
    await audit.record(
        db,
        actor_of(principal),
        "article.settings_changed",
        object_type="article",
        object_id=article.id,
        details={k: str(v) for k, v in changes.items()},
    )
    await db.flush()
    return await _view(db, principal, article)


async def needing_verification(
    db: AsyncSession, *, owner_id: int | None = None, now: datetime | None = None
) -> list[Article]:
    """Published articles whose verification interval has run out, oldest first."""
    now = now or utcnow()
    stmt = select(Article).where(
        Article.archived_at.is_(None),
        Article.published_version_id.is_not(None),
        Article.verify_interval_days.is_not(None),
    )
    if owner_id is not None:
        stmt = stmt.where(Article.owner_id == owner_id)
    articles = (await db.scalars(stmt)).all()
    due = [
        a for a in articles if (a.last_verified_at or a.created_at) + timedelta(days=a.verify_interval_days or 0) <= now
    ]
    return sorted(due, key=lambda a: a.last_verified_at or a.created_at)


# --- history -------------------------------------------------------------------------------------
async def versions(db: AsyncSession, principal: Principal, article_id: int) -> list[ArticleVersion]:
    view = await get_article(db, principal, article_id)
    stmt = select(ArticleVersion).where(ArticleVersion.article_id == view.article.id).order_by(ArticleVersion.number)
    return [
        v
        for v in (await db.scalars(stmt)).all()
        if v.status in (VersionStatus.published, VersionStatus.superseded) or may_see_working(principal, v)
    ]


async def get_version(db: AsyncSession, principal: Principal, article_id: int, number: int) -> ArticleVersion:
    for version in await versions(db, principal, article_id):
        if version.number == number:
            return version
    raise NotFound("version")


def _lines(version: ArticleVersion) -> dict[str, list[str]]:
    lines = {
        "title": [version.title],
        "body": version.body_markdown.splitlines(),
        "similar_questions": list(version.similar_questions),
        "tags": list(version.tags),
    }
    for name in CASE_FIELDS:
        if version.case_fields.get(name):
            lines[name] = str(version.case_fields[name]).splitlines()
    return lines


def diff_versions(old: ArticleVersion, new: ArticleVersion) -> list[dict[str, Any]]:
    """Per field, the lines as ("same" | "removed" | "added", text), for the diff view."""
    before, after = _lines(old), _lines(new)
    result = []
    for name in dict.fromkeys([*before, *after]):
        a, b = before.get(name, []), after.get(name, [])
        if a == b:
            continue
        ops = []
        for line in difflib.ndiff(a, b):
            tag, text = line[:2], line[2:]
            if tag == "  ":
                ops.append(("same", text))
            elif tag == "- ":
                ops.append(("removed", text))
            elif tag == "+ ":
                ops.append(("added", text))
        result.append({"field": name, "lines": ops})
    return result


# --- categories ----------------------------------------------------------------------------------
async def list_categories(db: AsyncSession) -> list[Category]:
    return list(
        (await db.scalars(select(Category).order_by(Category.parent_id, Category.position, Category.name))).all()
    )


async def create_category(
    db: AsyncSession, principal: Principal, *, name: str, parent_id: int | None = None, position: int = 0
) -> Category:
    if parent_id is not None and await db.get(Category, parent_id) is None:
        raise Invalid("the parent category does not exist")
    clash = await db.scalar(
        select(Category.id).where(
            Category.name == name,
            Category.parent_id.is_(parent_id) if parent_id is None else Category.parent_id == parent_id,
        )
    )
    if clash is not None:
        raise Conflict("a category with this name exists here")
    category = Category(name=name, parent_id=parent_id, position=position)
    db.add(category)
    await db.flush()
    await audit.record(
        db,
        actor_of(principal),
        "category.create",
        object_type="category",
        object_id=category.id,
        details={"name": name},
    )
    return category


async def reviewers(db: AsyncSession) -> list[User]:
    """Active users who may be named as reviewers."""
    roles = [role for role in ("knowledge_manager", "admin")]
    stmt = (
        select(User)
        .where(User.is_active.is_(True), User.id.in_(select(UserRole.user_id).where(UserRole.role.in_(roles))))
        .order_by(User.display_name)
    )
    return list((await db.scalars(stmt)).all())
