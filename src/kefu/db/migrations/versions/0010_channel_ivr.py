"""channel: ivr

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-29 17:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import kefu.db.base

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _json() -> sa.types.TypeEngine:
    return sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "ivr_flows",
        sa.Column("code", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("is_default", sa.Boolean(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("live_version_id", BigId, nullable=True),
        sa.Column("created_by_id", BigId, nullable=True),
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("created_at", kefu.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", kefu.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["created_by_id"], ["users.id"], name=op.f("fk_ivr_flows_created_by_id_users"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ivr_flows")),
        sa.UniqueConstraint("code", name=op.f("uq_ivr_flows_code")),
    )
    op.create_table(
        "ivr_flow_numbers",
        sa.Column("flow_id", BigId, nullable=False),
        sa.Column("number", sa.String(length=32), nullable=False),
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.ForeignKeyConstraint(
            ["flow_id"], ["ivr_flows.id"], name=op.f("fk_ivr_flow_numbers_flow_id_ivr_flows"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ivr_flow_numbers")),
        sa.UniqueConstraint("number", name=op.f("uq_ivr_flow_numbers_number")),
    )
    op.create_index("ix_ivr_flow_numbers_flow", "ivr_flow_numbers", ["flow_id"], unique=False)
    op.create_table(
        "ivr_flow_versions",
        sa.Column("flow_id", BigId, nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("source_format", sa.String(length=8), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("definition", _json(), nullable=False),
        sa.Column("warnings", _json(), nullable=False),
        sa.Column("note", sa.String(length=500), nullable=False),
        sa.Column("created_by_id", BigId, nullable=True),
        sa.Column("created_at", kefu.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", kefu.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("published_at", kefu.db.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("published_by_id", BigId, nullable=True),
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.CheckConstraint("source_format IN ('yaml','json')", name=op.f("ck_ivr_flow_versions_known_format")),
        sa.CheckConstraint(
            "status IN ('draft','published','superseded')", name=op.f("ck_ivr_flow_versions_known_status")
        ),
        sa.ForeignKeyConstraint(
            ["created_by_id"], ["users.id"], name=op.f("fk_ivr_flow_versions_created_by_id_users"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["flow_id"], ["ivr_flows.id"], name=op.f("fk_ivr_flow_versions_flow_id_ivr_flows"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["published_by_id"],
            ["users.id"],
            name=op.f("fk_ivr_flow_versions_published_by_id_users"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ivr_flow_versions")),
        sa.UniqueConstraint("flow_id", "number", name="uq_ivr_flow_versions_number"),
    )
    op.create_index("ix_ivr_flow_versions_flow_status", "ivr_flow_versions", ["flow_id", "status"], unique=False)
    op.create_table(
        "ivr_callbacks",
        sa.Column("call_id", sa.String(length=128), nullable=False),
        sa.Column("node_id", sa.String(length=64), nullable=False),
        sa.Column("flow_version_id", BigId, nullable=True),
        sa.Column("caller", sa.String(length=64), nullable=True),
        sa.Column("work_order_id", BigId, nullable=True),
        sa.Column("created_at", kefu.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.ForeignKeyConstraint(
            ["flow_version_id"],
            ["ivr_flow_versions.id"],
            name=op.f("fk_ivr_callbacks_flow_version_id_ivr_flow_versions"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["work_order_id"],
            ["work_orders.id"],
            name=op.f("fk_ivr_callbacks_work_order_id_work_orders"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ivr_callbacks")),
        sa.UniqueConstraint("call_id", "node_id", name="uq_ivr_callbacks_call_node"),
    )


def downgrade() -> None:
    op.drop_table("ivr_callbacks")
    op.drop_index("ix_ivr_flow_versions_flow_status", table_name="ivr_flow_versions")
    op.drop_table("ivr_flow_versions")
    op.drop_index("ix_ivr_flow_numbers_flow", table_name="ivr_flow_numbers")
    op.drop_table("ivr_flow_numbers")
    op.drop_table("ivr_flows")
