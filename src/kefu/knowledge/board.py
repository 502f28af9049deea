"""The "recently updated" board, announcements with acknowledgements, training collections (the case
library for new agents) and the points views: the only place that writes announcements, acks and
collections.

The board merges two streams, newest first: published article versions the principal may see, and
announcements addressed to one of the principal's roles. An announcement that requires acknowledgement
stays on the board until the principal acknowledges it, however old it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

from sqlalchemy import and_, func, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from kefu.core import audit
from kefu.core.errors import ApiError, Conflict, Invalid, NotFound
from kefu.core.events import Event, publish_on_commit
from kefu.core.policy import Principal
from kefu.db.base import utcnow
from kefu.identity.models import Team, User, UserRole
from kefu.identity.service import actor_of
from kefu.knowledge import points, service
from kefu.knowledge.content import MAX_BODY_CHARS, render_markdown
from kefu.knowledge.models import (
    Announcement,
    AnnouncementAck,
    Article,
    ArticleKind,
    ArticleVersion,
    PointsEntry,
    TrainingCollection,
    TrainingItem,
    VersionStatus,
)

ANNOUNCERS = ("knowledge_manager", "supervisor", "admin")
CURATORS = ("knowledge_manager", "supervisor", "admin")
TRAINING_KINDS = (ArticleKind.case, ArticleKind.experience)
MAX_BOARD_ENTRIES = 200
MAX_TRAINING_ITEMS = 500


# --- announcements -------------------------------------------------------------------------------
def _addressed(announcement: Announcement, principal: Principal) -> bool:
    return bool(principal.roles.intersection(announcement.audience_roles))


async def create_announcement(
    db: AsyncSession,
    principal: Principal,
    *,
    title: str,
    body_markdown: str = "",
    requires_ack: bool = False,
    audience_roles: list[str] | None = None,
    article_id: int | None = None,
) -> Announcement:
    """A free announcement to some staff roles (all staff when none are named)."""
    if not principal.has_role(*ANNOUNCERS):
        raise ApiError(403, "forbidden", "only knowledge managers, supervisors and admins make announcements")
    title = " ".join(title.split())
    if not title:
        raise Invalid("the title must not be empty")
    if len(body_markdown) > MAX_BODY_CHARS:
        raise Invalid(f"the text is longer than {MAX_BODY_CHARS} characters")
    roles = sorted(set(audience_roles or service.STAFF))
    # Announcements are for staff: a customer role here would leak internal news to the help centre.
    if set(roles) - set(service.STAFF):
        raise Invalid("announcements address staff roles only", {"allowed": list(service.STAFF)})
    version_number = None
    if article_id is not None:
        try:
            view = await service.get_article(db, principal, article_id)
        except NotFound:
            raise Invalid(f"article {article_id} does not exist") from None
        version_number = view.live.number if view.live is not None else None
    announcement = Announcement(
        title=title,
        body_markdown=body_markdown,
        body_html=render_markdown(body_markdown),
        article_id=article_id,
        version_number=version_number,
        requires_ack=requires_ack,
        audience_roles=roles,
        created_by_id=principal.user_id,
    )
    db.add(announcement)
    await db.flush()
    await audit.record(
        db,
        actor_of(principal),
        "announcement.create",
        object_type="announcement",
        object_id=announcement.id,
        details={"title": title, "requires_ack": requires_ack, "roles": roles},
    )
    publish_on_commit(
        db,
        Event(
            "kb.announcement",
            {
                "announcement_id": announcement.id,
                "requires_ack": requires_ack,
                "message": f"{'重要公告 / important' if requires_ack else '公告 / announcement'}: {title}",
            },
            roles=tuple(roles),
        ),
    )
    return announcement


async def _announcement_for(db: AsyncSession, principal: Principal, announcement_id: int) -> Announcement:
    announcement = await db.get(Announcement, announcement_id)
    if announcement is None or not _addressed(announcement, principal):
        raise NotFound("announcement")
    return announcement


async def acknowledge(db: AsyncSession, principal: Principal, announcement_id: int) -> AnnouncementAck:
    """Record that the principal read the announcement. A second acknowledgement changes nothing and
    answers with the first one's time."""
    announcement = await _announcement_for(db, principal, announcement_id)
    insert = pg_insert if db.bind.dialect.name == "postgresql" else sqlite_insert
    # ON CONFLICT DO NOTHING: two clicks (or two tabs) at once never fail and never move the time.
    await db.execute(
        insert(AnnouncementAck)
        .values(announcement_id=announcement.id, user_id=principal.user_id, acked_at=utcnow())
        .on_conflict_do_nothing(index_elements=["announcement_id", "user_id"])
    )
    ack = await db.scalar(
        select(AnnouncementAck)
        .where(AnnouncementAck.announcement_id == announcement.id, AnnouncementAck.user_id == principal.user_id)
        .execution_options(populate_existing=True)
    )
    assert ack is not None
    return ack


@dataclass
class UnreadUser:
    user_id: int
    username: str
    display_name: str
    teams: list[str]


@dataclass
class UnreadReport:
    announcement: Announcement
    addressed: int  # active users holding an addressed role
    acknowledged: int  # of them, how many acknowledged
    unread: list[UnreadUser]


async def unread_report(db: AsyncSession, announcement_id: int) -> UnreadReport:
    """Who of the addressed (active users with an addressed role) has not acknowledged yet."""
    announcement = await db.get(Announcement, announcement_id)
    if announcement is None:
        raise NotFound("announcement")
    addressed = and_(
        User.is_active.is_(True),
        User.id.in_(select(UserRole.user_id).where(UserRole.role.in_(announcement.audience_roles))),
    )
    acked = select(AnnouncementAck.user_id).where(AnnouncementAck.announcement_id == announcement.id)
    total = await db.scalar(select(func.count()).select_from(User).where(addressed)) or 0
    read = await db.scalar(select(func.count()).select_from(User).where(addressed, User.id.in_(acked))) or 0
    users = list(
        (
            await db.scalars(select(User).where(addressed, User.id.not_in(acked)).order_by(User.display_name, User.id))
        ).all()
    )
    team_ids = {tid for u in users for tid in u.team_ids}
    team_names = (
        dict((await db.execute(select(Team.id, Team.name).where(Team.id.in_(team_ids)))).all()) if team_ids else {}
    )
    return UnreadReport(
        announcement=announcement,
        addressed=int(total),
        acknowledged=int(read),
        unread=[
            UnreadUser(u.id, u.username, u.display_name, sorted(team_names[t] for t in u.team_ids if t in team_names))
            for u in users
        ],
    )


# --- the board -----------------------------------------------------------------------------------
@dataclass
class BoardEntry:
    kind: Literal["change", "announcement"]
    at: datetime
    title: str
    article_id: int | None = None
    version_number: int | None = None
    change_note: str = ""  # a change: the author's note (plain text)
    body_html: str = ""  # an announcement: sanitized HTML
    announcement_id: int | None = None
    requires_ack: bool = False
    acked_at: datetime | None = None

    @property
    def acked(self) -> bool:
        return self.acked_at is not None


async def board(
    db: AsyncSession, principal: Principal, since_days: int = 30, *, now: datetime | None = None
) -> list[BoardEntry]:
    """Recent published changes and announcements for ``principal``, newest first."""
    now = now or utcnow()
    since = now - timedelta(days=since_days)
    changes = (
        await db.execute(
            select(ArticleVersion)
            .join(Article, Article.id == ArticleVersion.article_id)
            .where(
                ArticleVersion.status.in_((VersionStatus.published, VersionStatus.superseded)),
                ArticleVersion.published_at >= since,
                Article.archived_at.is_(None),
                service.visibility_clause(principal, now),
            )
            .order_by(ArticleVersion.published_at.desc(), ArticleVersion.id.desc())
            .limit(MAX_BOARD_ENTRIES)
        )
    ).scalars()
    entries = [
        BoardEntry(
            kind="change",
            at=v.published_at,  # type: ignore[arg-type]
            title=v.title,
            article_id=v.article_id,
            version_number=v.number,
            change_note=v.change_note,
        )
        for v in changes
    ]
    my_acks = dict(
        (
            await db.execute(
                select(AnnouncementAck.announcement_id, AnnouncementAck.acked_at).where(
                    AnnouncementAck.user_id == principal.user_id
                )
            )
        ).all()
        if principal.user_id is not None
        else []
    )
    mine_acked = select(AnnouncementAck.announcement_id).where(AnnouncementAck.user_id == principal.user_id)
    recent_or_pending = or_(
        Announcement.created_at >= since,
        and_(Announcement.requires_ack.is_(True), Announcement.id.not_in(mine_acked)),
    )
    announcements = [
        a
        for a in (
            await db.scalars(
                select(Announcement)
                .where(recent_or_pending)
                .order_by(Announcement.created_at.desc())
                .limit(MAX_BOARD_ENTRIES)
            )
        ).all()
        if _addressed(a, principal)
    ]
    # A linked article the principal may not see (say, an unpublished draft) is not linked for them.
    linked = {a.article_id for a in announcements if a.article_id is not None}
    visible: set[int] = set()
    if linked:
        visible_stmt = select(Article.id).where(Article.id.in_(linked), service.visibility_clause(principal, now))
        visible = set((await db.scalars(visible_stmt)).all())
    announced_versions = set()
    for a in announcements:
        article_id = a.article_id if a.article_id in visible else None
        if article_id is not None:
            announced_versions.add((article_id, a.version_number))
        entries.append(
            BoardEntry(
                kind="announcement",
                at=a.created_at,
                title=a.title,
                article_id=article_id,
                version_number=a.version_number if article_id is not None else None,
                body_html=a.body_html,
                announcement_id=a.id,
                requires_ack=a.requires_ack,
                acked_at=my_acks.get(a.id),
            )
        )
    # Publishing "with announcement" makes both a change and an announcement: show it once.
    entries = [
        e for e in entries if e.kind == "announcement" or (e.article_id, e.version_number) not in announced_versions
    ]
    entries.sort(key=lambda e: e.at, reverse=True)
    return entries[:MAX_BOARD_ENTRIES]


# --- training collections ------------------------------------------------------------------------
def curates(principal: Principal) -> bool:
    return principal.has_role(*CURATORS)


@dataclass
class TrainingItemView:
    article_id: int
    position: int
    kind: str
    title: str
    published: bool


@dataclass
class CollectionView:
    collection: TrainingCollection
    items: list[TrainingItemView] = field(default_factory=list)


async def _titles(db: AsyncSession, articles: list[Article]) -> dict[int, str]:
    """Article id -> the live title, else the latest version's title (drafts, seen by curators only)."""
    live_ids = [a.published_version_id for a in articles if a.published_version_id]
    titles: dict[int, str] = {}
    if live_ids:
        rows = await db.execute(
            select(ArticleVersion.article_id, ArticleVersion.title).where(ArticleVersion.id.in_(live_ids))
        )
        titles.update(dict(rows.all()))
    rest = [a.id for a in articles if a.id not in titles]
    if rest:
        rows = await db.execute(
            select(ArticleVersion.article_id, ArticleVersion.title)
            .where(ArticleVersion.article_id.in_(rest))
            .order_by(ArticleVersion.number)
        )
        titles.update(dict(rows.all()))  # ascending: the latest version wins
    return titles


def _shown_clause(principal: Principal, now: datetime) -> Any:
    """Items an agent sees are live articles only; curators also see unpublished ones to prepare."""
    if curates(principal):
        return and_(service.visibility_clause(principal, now), Article.archived_at.is_(None))
    return and_(service.visibility_clause(principal, now), service.live_now_clause(now))


async def _views(db: AsyncSession, principal: Principal, collections: list[TrainingCollection]) -> list[CollectionView]:
    if not collections:
        return []
    now = utcnow()
    rows = (
        await db.execute(
            select(TrainingItem, Article)
            .join(Article, Article.id == TrainingItem.article_id)
            .where(TrainingItem.collection_id.in_([c.id for c in collections]), _shown_clause(principal, now))
            .order_by(TrainingItem.collection_id, TrainingItem.position, TrainingItem.article_id)
        )
    ).all()
    titles = await _titles(db, [article for _, article in rows])
    views = {c.id: CollectionView(c) for c in collections}
    for item, article in rows:
        views[item.collection_id].items.append(
            TrainingItemView(
                article_id=article.id,
                position=item.position,
                kind=article.kind,
                title=titles.get(article.id, ""),
                published=article.published_version_id is not None,
            )
        )
    return list(views.values())


async def list_collections(db: AsyncSession, principal: Principal) -> list[CollectionView]:
    collections = list(
        (await db.scalars(select(TrainingCollection).order_by(TrainingCollection.name, TrainingCollection.id))).all()
    )
    return await _views(db, principal, collections)


async def get_collection(db: AsyncSession, principal: Principal, collection_id: int) -> CollectionView:
    collection = await db.get(TrainingCollection, collection_id)
    if collection is None or not service.is_staff(principal):
        raise NotFound("training collection")
    return (await _views(db, principal, [collection]))[0]


def _require_curator(principal: Principal) -> None:
    if not curates(principal):
        raise ApiError(403, "forbidden", "only knowledge managers, supervisors and admins curate training")


async def _name_free(db: AsyncSession, name: str, except_id: int | None = None) -> str:
    name = " ".join(name.split())
    if not name:
        raise Invalid("the name must not be empty")
    clash = await db.scalar(select(TrainingCollection.id).where(TrainingCollection.name == name))
    if clash is not None and clash != except_id:
        raise Conflict("a training collection with this name exists")
    return name


async def create_collection(
    db: AsyncSession,
    principal: Principal,
    *,
    name: str,
    description: str = "",
    article_ids: list[int] | None = None,
) -> CollectionView:
    _require_curator(principal)
    collection = TrainingCollection(name=await _name_free(db, name), description=description)
    try:
        # A savepoint: a concurrent creation of the same name is a 409, not a broken transaction.
        async with db.begin_nested():
            db.add(collection)
            await db.flush()
    except IntegrityError:
        raise Conflict("a training collection with this name exists") from None
    if article_ids:
        await _replace_items(db, principal, collection, article_ids)
    await audit.record(
        db,
        actor_of(principal),
        "training.create",
        object_type="training_collection",
        object_id=collection.id,
        details={"name": collection.name},
    )
    return (await _views(db, principal, [collection]))[0]


async def _collection_for_write(db: AsyncSession, collection_id: int) -> TrainingCollection:
    collection = await db.get(TrainingCollection, collection_id, with_for_update=True, populate_existing=True)
    if collection is None:
        raise NotFound("training collection")
    return collection


async def update_collection(
    db: AsyncSession,
    principal: Principal,
    collection_id: int,
    *,
    name: str | None = None,
    description: str | None = None,
) -> CollectionView:
    _require_curator(principal)
    collection = await _collection_for_write(db, collection_id)
    if name is not None:
        collection.name = await _name_free(db, name, except_id=collection.id)
    if description is not None:
        collection.description = description
    try:
        async with db.begin_nested():
            await db.flush()
    except IntegrityError:
        raise Conflict("a training collection with this name exists") from None
    await audit.record(
        db,
        actor_of(principal),
        "training.update",
        object_type="training_collection",
        object_id=collection.id,
        details={"name": collection.name},
    )
    return (await _views(db, principal, [collection]))[0]


async def _replace_items(
    db: AsyncSession, principal: Principal, collection: TrainingCollection, article_ids: list[int]
) -> None:
    if len(article_ids) > MAX_TRAINING_ITEMS:
        raise Invalid(f"a collection holds at most {MAX_TRAINING_ITEMS} articles")
    if len(set(article_ids)) != len(article_ids):
        raise Invalid("an article is listed twice")
    found = {
        a.id: a
        for a in (
            await db.scalars(select(Article).where(Article.id.in_(article_ids), service.visibility_clause(principal)))
        ).all()
    }
    missing = [i for i in article_ids if i not in found]
    if missing:
        raise Invalid("these articles do not exist", {"article_ids": missing})
    wrong_kind = [i for i in article_ids if found[i].kind not in TRAINING_KINDS]
    if wrong_kind:
        raise Invalid("training collections hold case and experience articles only", {"article_ids": wrong_kind})
    archived = [i for i in article_ids if found[i].archived_at is not None]
    if archived:
        raise Invalid("these articles are archived", {"article_ids": archived})
    for item in (await db.scalars(select(TrainingItem).where(TrainingItem.collection_id == collection.id))).all():
        await db.delete(item)
    await db.flush()
    for position, article_id in enumerate(article_ids):
        db.add(TrainingItem(collection_id=collection.id, article_id=article_id, position=position))
    collection.updated_at = utcnow()
    await db.flush()


async def set_items(
    db: AsyncSession, principal: Principal, collection_id: int, article_ids: list[int]
) -> CollectionView:
    """Replace the collection's articles with ``article_ids`` in this order: one call adds, removes and
    reorders. Only case and experience articles the curator can see are accepted."""
    _require_curator(principal)
    collection = await _collection_for_write(db, collection_id)
    await _replace_items(db, principal, collection, article_ids)
    await audit.record(
        db,
        actor_of(principal),
        "training.items_set",
        object_type="training_collection",
        object_id=collection.id,
        details={"article_ids": article_ids},
    )
    return (await _views(db, principal, [collection]))[0]


# --- points --------------------------------------------------------------------------------------
Period = Literal["week", "month", "all"]


def period_bounds(period: Period, now: datetime, time_zone: str) -> tuple[datetime | None, datetime | None]:
    """The calendar week (from Monday) or month containing ``now`` in the business time zone, in UTC;
    (None, None) for all time."""
    if period == "all":
        return None, None
    local = now.astimezone(ZoneInfo(time_zone))
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "week":
        start = midnight - timedelta(days=local.weekday())
        end = start + timedelta(days=7)
    else:
        start = midnight.replace(day=1)
        end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    # Aware arithmetic on a ZoneInfo time is wall-clock arithmetic: midnight stays midnight across a
    # DST change inside the period; the offset is worked out again on conversion to UTC.
    return start.astimezone(UTC), end.astimezone(UTC)


@dataclass
class Leaderboard:
    period: Period
    since: datetime | None
    until: datetime | None
    rows: list[points.LeaderboardRow]


async def leaderboard(
    db: AsyncSession, period: Period, *, time_zone: str, now: datetime | None = None, limit: int = 20
) -> Leaderboard:
    since, until = period_bounds(period, now or utcnow(), time_zone)
    rows = await points.leaderboard(db, since=since, until=until, limit=limit)
    return Leaderboard(period, since, until, rows)


@dataclass
class MyPoints:
    user_id: int
    total: int
    this_week: int
    this_month: int
    recent: list[PointsEntry]


async def _sum_since(db: AsyncSession, user_id: int, since: datetime | None) -> int:
    stmt = select(func.coalesce(func.sum(PointsEntry.points), 0)).where(PointsEntry.user_id == user_id)
    if since is not None:
        stmt = stmt.where(PointsEntry.created_at >= since)
    return int(await db.scalar(stmt) or 0)


async def my_points(
    db: AsyncSession, principal: Principal, *, time_zone: str, now: datetime | None = None, recent: int = 20
) -> MyPoints:
    if principal.user_id is None:
        raise ApiError(401, "unauthenticated", "sign in first")
    now = now or utcnow()
    week_start, _ = period_bounds("week", now, time_zone)
    month_start, _ = period_bounds("month", now, time_zone)
    entries = list(
        (
            await db.scalars(
                select(PointsEntry)
                .where(PointsEntry.user_id == principal.user_id)
                .order_by(PointsEntry.created_at.desc(), PointsEntry.id.desc())
                .limit(recent)
            )
        ).all()
    )
    return MyPoints(
        user_id=principal.user_id,
        total=await points.balance(db, principal.user_id),
        this_week=await _sum_since(db, principal.user_id, week_start),
        this_month=await _sum_since(db, principal.user_id, month_start),
        recent=entries,
    )
