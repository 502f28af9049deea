"""Files attached to work orders: seen by whoever sees the work order, served only as downloads
(names, types, sizes and safe headers: ``kefu.core.files``)."""

from __future__ import annotations

import hashlib

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import undefer

from kefu.core import files
from kefu.core.errors import ApiError, Invalid, NotFound
from kefu.core.policy import Principal
from kefu.tickets import service
from kefu.tickets.models import WorkOrderAttachment

MAX_ATTACHMENTS_PER_WORK_ORDER = 50
REMOVES_ANY = ("supervisor", "admin")


def download_headers(attachment: WorkOrderAttachment) -> dict[str, str]:
    return files.download_headers(attachment.filename)


async def add(
    db: AsyncSession, principal: Principal, work_order_id: int, *, filename: str, data: bytes, max_bytes: int
) -> WorkOrderAttachment:
    work_order = await service.get_work_order(db, principal, work_order_id, for_update=True)
    if work_order.merged_into_id is not None:
        raise Invalid("this work order was merged into another; work on that one")
    files.check_size(data, max_bytes)
    count = await db.scalar(
        select(func.count()).select_from(WorkOrderAttachment).where(WorkOrderAttachment.work_order_id == work_order_id)
    )
    if (count or 0) >= MAX_ATTACHMENTS_PER_WORK_ORDER:
        raise Invalid(f"a work order may have at most {MAX_ATTACHMENTS_PER_WORK_ORDER} attachments")
    name = files.clean_filename(filename)
    attachment = WorkOrderAttachment(
        work_order_id=work_order_id,
        filename=name,
        content_type=files.content_type_for(name),
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        content=data,
        uploaded_by_id=principal.user_id,
    )
    db.add(attachment)
    await db.flush()
    await service.record_event(
        db,
        work_order,
        principal.user_id,
        "attachment_added",
        attachment_id=attachment.id,
        filename=name,
        size=len(data),
    )
    service.notify(db, work_order, "attachment_added", attachment_id=attachment.id)
    return attachment


async def list_for(db: AsyncSession, principal: Principal, work_order_id: int) -> list[WorkOrderAttachment]:
    await service.get_work_order(db, principal, work_order_id)  # 404 when the work order is hidden
    stmt = (
        select(WorkOrderAttachment)
        .where(WorkOrderAttachment.work_order_id == work_order_id)
        .order_by(WorkOrderAttachment.id)
    )
    return list((await db.scalars(stmt)).all())


async def get(
    db: AsyncSession, principal: Principal, work_order_id: int, attachment_id: int, *, with_content: bool = False
) -> WorkOrderAttachment:
    await service.get_work_order(db, principal, work_order_id)
    stmt = select(WorkOrderAttachment).where(
        WorkOrderAttachment.id == attachment_id, WorkOrderAttachment.work_order_id == work_order_id
    )
    if with_content:
        stmt = stmt.options(undefer(WorkOrderAttachment.content))
    attachment = await db.scalar(stmt)
    if attachment is None:
        raise NotFound("attachment")
    return attachment


async def remove(db: AsyncSession, principal: Principal, work_order_id: int, attachment_id: int) -> None:
    """The uploader, a supervisor or an admin removes a file; the history keeps that it existed."""
    attachment = await get(db, principal, work_order_id, attachment_id)
    if attachment.uploaded_by_id != principal.user_id and not principal.has_role(*REMOVES_ANY):
        raise ApiError(403, "forbidden", "only the uploader, a supervisor or an admin may remove this file")
    work_order = await service.get_work_order(db, principal, work_order_id, for_update=True)
    await db.delete(attachment)
    await service.record_event(
        db,
        work_order,
        principal.user_id,
        "attachment_removed",
        attachment_id=attachment_id,
        filename=attachment.filename,
    )
