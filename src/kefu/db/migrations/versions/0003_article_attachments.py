"""article attachments

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29

Files attached to knowledge articles, stored in the database (every process and host serves them).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import kefu.db.base

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "kb_attachments",
        sa.Column("article_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("filename", sa.String(length=255), nullable=False),
        sa.Column("content_type", sa.String(length=127), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.Column("uploaded_by_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("created_at", kefu.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.ForeignKeyConstraint(
            ["article_id"],
            ["kb_articles.id"],
            name=op.f("fk_kb_attachments_article_id_kb_articles"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["uploaded_by_id"], ["users.id"], name=op.f("fk_kb_attachments_uploaded_by_id_users"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_kb_attachments")),
    )
    with op.batch_alter_table("kb_attachments", schema=None) as batch_op:
        batch_op.create_index("ix_kb_attachments_article", ["article_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("kb_attachments", schema=None) as batch_op:
        batch_op.drop_index("ix_kb_attachments_article")

    op.drop_table("kb_attachments")
