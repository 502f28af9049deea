"""knowledge: article vectors

Sentence embeddings of articles for the optional embedding model of search, stored so that a process
start reads them instead of computing them again.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-29 20:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import kefu.db.base

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "kb_article_vectors",
        sa.Column("article_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("model", sa.String(length=300), nullable=False),
        sa.Column("passage_key", sa.String(length=64), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", kefu.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["article_id"],
            ["kb_articles.id"],
            name=op.f("fk_kb_article_vectors_article_id_kb_articles"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("article_id", "model", name=op.f("pk_kb_article_vectors")),
    )


def downgrade() -> None:
    op.drop_table("kb_article_vectors")
