"""REST routes of the board (recent changes and announcements), the points views and the training
collections: thin wrappers over ``knowledge.board``."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import AfterValidator, Field, StringConstraints
from sqlalchemy.ext.asyncio import AsyncSession

from kefu.core.policy import Principal, authorize
from kefu.core.schemas import DbId, IdParam, RequestModel, ResponseModel, multi_line, single_line
from kefu.db.session import get_db
from kefu.knowledge import board
from kefu.knowledge.content import MAX_BODY_CHARS
from kefu.settings import Settings

router = APIRouter(prefix="/api/v1/kb")
Db = Annotated[AsyncSession, Depends(get_db)]

Title = Annotated[str, StringConstraints(min_length=1, max_length=300), AfterValidator(single_line)]
CollectionName = Annotated[str, StringConstraints(min_length=1, max_length=200), AfterValidator(single_line)]
Description = Annotated[str, StringConstraints(max_length=2000), AfterValidator(multi_line)]
Markdown = Annotated[str, StringConstraints(max_length=MAX_BODY_CHARS), AfterValidator(multi_line)]
StaffRole = Literal["agent", "knowledge_manager", "supervisor", "admin"]
ArticleIds = Annotated[list[DbId], Field(max_length=board.MAX_TRAINING_ITEMS)]


def settings_of(request: Request) -> Settings:
    return request.app.state.settings


# --- board and announcements ---------------------------------------------------------------------
class AnnouncementCreate(RequestModel):
    title: Title
    body_markdown: Markdown = ""
    requires_ack: bool = False
    # Empty: every staff role.
    audience_roles: list[StaffRole] = Field(default_factory=list, max_length=4)
    article_id: DbId | None = None


class AnnouncementOut(ResponseModel):
    id: int
    title: str
    body_html: str
    article_id: int | None
    version_number: int | None
    requires_ack: bool
    audience_roles: list[str]
    created_by_id: int | None
    created_at: datetime


class BoardEntryOut(ResponseModel):
    kind: Literal["change", "announcement"]
    at: datetime
    title: str
    article_id: int | None
    version_number: int | None
    change_note: str  # plain text: escape it when showing it
    body_html: str  # sanitized HTML
    announcement_id: int | None
    requires_ack: bool
    acked: bool
    acked_at: datetime | None


class AckOut(ResponseModel):
    announcement_id: int
    user_id: int
    acked_at: datetime


class UnreadUserOut(ResponseModel):
    user_id: int
    username: str
    display_name: str
    teams: list[str]


class UnreadReportOut(ResponseModel):
    announcement_id: int
    title: str
    requires_ack: bool
    addressed: int
    acknowledged: int
    unread: list[UnreadUserOut]


@router.get("/board", tags=["knowledge board"])
async def get_board(
    db: Db,
    principal: Principal = authorize("announcement", "list"),
    since_days: Annotated[int, Query(ge=1, le=366)] = 30,
) -> list[BoardEntryOut]:
    entries = await board.board(db, principal, since_days)
    return [BoardEntryOut.model_validate(e) for e in entries]


@router.post("/announcements", status_code=201, tags=["knowledge board"])
async def create_announcement(
    body: AnnouncementCreate, db: Db, principal: Principal = authorize("announcement", "create")
) -> AnnouncementOut:
    async with db.begin():
        announcement = await board.create_announcement(db, principal, **body.model_dump())
    return AnnouncementOut.model_validate(announcement)


@router.post("/announcements/{announcement_id}/ack", tags=["knowledge board"])
async def acknowledge_announcement(
    announcement_id: IdParam, db: Db, principal: Principal = authorize("announcement", "ack", by_id=True)
) -> AckOut:
    async with db.begin():
        ack = await board.acknowledge(db, principal, announcement_id)
    return AckOut.model_validate(ack)


@router.get("/announcements/{announcement_id}/unread", tags=["knowledge board"])
async def announcement_unread(
    announcement_id: IdParam, db: Db, principal: Principal = authorize("announcement", "report", by_id=True)
) -> UnreadReportOut:
    report = await board.unread_report(db, announcement_id)
    return UnreadReportOut(
        announcement_id=report.announcement.id,
        title=report.announcement.title,
        requires_ack=report.announcement.requires_ack,
        addressed=report.addressed,
        acknowledged=report.acknowledged,
        unread=[UnreadUserOut.model_validate(u) for u in report.unread],
    )


# --- points --------------------------------------------------------------------------------------
class LeaderboardRowOut(ResponseModel):
    rank: int
    user_id: int
    display_name: str
    points: int
    awards: int


class LeaderboardOut(ResponseModel):
    period: Literal["week", "month", "all"]
    since: datetime | None
    until: datetime | None
    rows: list[LeaderboardRowOut]


class PointsEntryOut(ResponseModel):
    points: int
    rule: str
    article_id: int | None
    note: str
    created_at: datetime


class MyPointsOut(ResponseModel):
    user_id: int
    total: int
    this_week: int
    this_month: int
    recent: list[PointsEntryOut]


@router.get("/points/leaderboard", tags=["knowledge points"])
async def points_leaderboard(
    request: Request,
    db: Db,
    principal: Principal = authorize("points", "read"),
    period: Literal["week", "month", "all"] = "month",
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> LeaderboardOut:
    result = await board.leaderboard(db, period, time_zone=settings_of(request).time_zone, limit=limit)
    return LeaderboardOut(
        period=result.period,
        since=result.since,
        until=result.until,
        rows=[
            LeaderboardRowOut(rank=i, user_id=r.user_id, display_name=r.display_name, points=r.points, awards=r.awards)
            for i, r in enumerate(result.rows, start=1)
        ],
    )


@router.get("/points/me", tags=["knowledge points"])
async def my_points(request: Request, db: Db, principal: Principal = authorize("points", "read")) -> MyPointsOut:
    mine = await board.my_points(db, principal, time_zone=settings_of(request).time_zone)
    return MyPointsOut.model_validate(mine)


# --- training collections ------------------------------------------------------------------------
class CollectionCreate(RequestModel):
    name: CollectionName
    description: Description = ""
    article_ids: ArticleIds = Field(default_factory=list)


class CollectionUpdate(RequestModel):
    name: CollectionName | None = None
    description: Description | None = None


class CollectionItems(RequestModel):
    # The whole list in order: adds, removes and reorders in one call.
    article_ids: ArticleIds


class TrainingItemOut(ResponseModel):
    article_id: int
    position: int
    kind: str
    title: str
    published: bool


class CollectionOut(ResponseModel):
    id: int
    name: str
    description: str
    items: list[TrainingItemOut]
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, view: board.CollectionView) -> CollectionOut:
        c = view.collection
        return cls(
            id=c.id,
            name=c.name,
            description=c.description,
            items=[TrainingItemOut.model_validate(i) for i in view.items],
            created_at=c.created_at,
            updated_at=c.updated_at,
        )


@router.get("/training", tags=["knowledge training"])
async def list_training(db: Db, principal: Principal = authorize("training", "list")) -> list[CollectionOut]:
    return [CollectionOut.of(v) for v in await board.list_collections(db, principal)]


@router.post("/training", status_code=201, tags=["knowledge training"])
async def create_training(
    body: CollectionCreate, db: Db, principal: Principal = authorize("training", "manage")
) -> CollectionOut:
    async with db.begin():
        view = await board.create_collection(db, principal, **body.model_dump())
    return CollectionOut.of(view)


@router.get("/training/{collection_id}", tags=["knowledge training"])
async def get_training(
    collection_id: IdParam, db: Db, principal: Principal = authorize("training", "read", by_id=True)
) -> CollectionOut:
    return CollectionOut.of(await board.get_collection(db, principal, collection_id))


@router.patch("/training/{collection_id}", tags=["knowledge training"])
async def update_training(
    collection_id: IdParam,
    body: CollectionUpdate,
    db: Db,
    principal: Principal = authorize("training", "manage", by_id=True),
) -> CollectionOut:
    async with db.begin():
        view = await board.update_collection(db, principal, collection_id, **body.model_dump(exclude_unset=True))
    return CollectionOut.of(view)


@router.put("/training/{collection_id}/items", tags=["knowledge training"])
async def set_training_items(
    collection_id: IdParam,
    body: CollectionItems,
    db: Db,
    principal: Principal = authorize("training", "manage", by_id=True),
) -> CollectionOut:
    async with db.begin():
        view = await board.set_items(db, principal, collection_id, body.article_ids)
    return CollectionOut.of(view)
