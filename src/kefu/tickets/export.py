"""CSV export of work-order lists: the same filter and the same visibility as the list, streamed page
by page so a large export never sits in memory."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Iterable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from kefu.core.policy import Principal
from kefu.db.base import utcnow
from kefu.tickets import service

PAGE = 500
COLUMNS = (
    "number",
    "id",
    "type",
    "status",
    "priority",
    "title",
    "customer_id",
    "customer_name",
    "team_id",
    "team_name",
    "assignee_id",
    "assignee_name",
    "restricted",
    "tags",
    "resolution_due_at",
    "created_at",
    "updated_at",
)


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if hasattr(value, "isoformat"):
        return value.isoformat()
    # A leading = + - @ would run as a formula in a spreadsheet: neutralize it.
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _cells(row: service.WorkOrderRow) -> list[Any]:
    wo = row.work_order
    values = (
        wo.number,
        wo.id,
        wo.type,
        wo.status,
        wo.priority,
        wo.title,
        wo.customer_id,
        row.customer_name,
        wo.team_id,
        row.team_name,
        wo.assignee_id,
        row.assignee_name,
        wo.restricted,
        " ".join(row.tags),
        wo.resolution_due_at,
        wo.created_at,
        wo.updated_at,
    )
    return [_cell(v) for v in values]


def _lines(rows: Iterable[list[Any]]) -> str:
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    return out.getvalue()


async def csv_chunks(
    session_factory: async_sessionmaker[AsyncSession], principal: Principal, flt: service.WorkOrderFilter
) -> AsyncIterator[str]:
    """The header, then one chunk per page. Its own session: it outlives the request's."""
    yield "\ufeff" + _lines([list(COLUMNS)])  # the BOM lets spreadsheet programs read the Chinese text
    now = utcnow()  # one "now" for the whole export: the overdue view must not shift between pages
    cursor: str | None = None
    async with session_factory() as db:
        while True:
            rows, cursor = await service.list_work_orders(db, principal, flt, cursor, PAGE, now=now)
            if rows:
                yield _lines(_cells(r) for r in rows)
            if cursor is None:
                break
