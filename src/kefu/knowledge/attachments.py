"""Files attached to knowledge articles (names, types, sizes and download headers: ``kefu.core.files``)."""

from __future__ import annotations

import hashlib

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import undefer

from kefu.core import audit, files
from kefu.core.errors import ApiError, Invalid, NotFound
from kefu.core.policy import Principal
from kefu.identity.service import actor_of
from kefu.knowledge import service
from kefu.knowledge.models import ArticleAttachment

MAX_ATTACHMENTS_PER_ARTICLE = 50


def download_headers(attachment: ArticleAttachment) -> dict[str, str]:
    return files.download_headers(attachment.filename)


async def add(
    db: AsyncSession, principal: Principal, article_id: int, *, filename: str, data: bytes, max_bytes: int
) -> ArticleAttachment:
    view = await service.get_article(db, principal, article_id)
    if view.article.archived_at is not None:
        raise ApiError(409, "conflict", "the article is archived")
    if not service.may_edit(principal, view.article, view.working):
        raise ApiError(403, "forbidden", "only the author, the owner or a knowledge manager may attach files")
    files.check_size(data, max_bytes)
    count = len(
        (await db.scalars(select(ArticleAttachment.id).where(ArticleAttachment.article_id == article_id))).all()
    )
    if count >= MAX_ATTACHMENTS_PER_ARTICLE:
        raise Invalid(f"an article may have at most {MAX_ATTACHMENTS_PER_ARTICLE} attachments")
    name = files.clean_filename(filename)
    attachment = ArticleAttachment(
        article_id=article_id,
        filename=name,
        content_type=files.content_type_for(name),
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        content=data,
        uploaded_by_id=principal.user_id,
    )
    db.add(attachment)
    await db.flush()
    await audit.record(
        db,
        actor_of(principal),
        "article.attachment_added",
        object_type="article",
        object_id=article_id,
        details={"attachment_id": attachment.id, "filename": name, "size": len(data)},
    )
    return attachment


async def list_for(db: AsyncSession, principal: Principal, article_id: int) -> list[ArticleAttachment]:
    await service.get_article(db, principal, article_id)  # visibility: 404 when the article is hidden
    stmt = select(ArticleAttachment).where(ArticleAttachment.article_id == article_id).order_by(ArticleAttachment.id)
    return list((await db.scalars(stmt)).all())


async def get(
    db: AsyncSession, principal: Principal, article_id: int, attachment_id: int, *, with_content: bool = False
) -> ArticleAttachment:
    await service.get_article(db, principal, article_id)
    stmt = select(ArticleAttachment).where(
        ArticleAttachment.id == attachment_id, ArticleAttachment.article_id == article_id
    )
    if with_content:
        stmt = stmt.options(undefer(ArticleAttachment.content))
    attachment = await db.scalar(stmt)
    if attachment is None:
        raise NotFound("attachment")
    return attachment


async def remove(db: AsyncSession, principal: Principal, article_id: int, attachment_id: int) -> None:
    view = await service.get_article(db, principal, article_id)
    if not service.may_edit(principal, view.article, view.working):
        raise ApiError(403, "forbidden", "only the author, the owner or a knowledge manager may remove files")
    attachment = await get(db, principal, article_id, attachment_id)
    await db.delete(attachment)
    await audit.record(
        db,
        actor_of(principal),
        "article.attachment_removed",
        object_type="article",
        object_id=article_id,
        details={"attachment_id": attachment_id, "filename": attachment.filename},
    )
