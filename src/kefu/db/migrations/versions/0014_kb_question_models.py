"""knowledge: question models

The fast question vectors of search with an embedding model (term vectors, weights and map), stored so
that one process builds them and every other reads them.

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-29 23:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import kefu.db.base

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "kb_question_models",
        sa.Column("model", sa.String(length=300), nullable=False),
        sa.Column("articles", sa.Integer(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", kefu.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("model", name=op.f("pk_kb_question_models")),
    )


def downgrade() -> None:
    op.drop_table("kb_question_models")
