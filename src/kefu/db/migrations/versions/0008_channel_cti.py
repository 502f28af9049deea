"""channel: cti

PBXs with their signing secrets, calls (the projection of their events), every call event stored once per
(pbx, event_id) and once per (call, seq), and the agents' extensions.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29 17:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import kefu.db.base

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cti_pbxs",
        sa.Column("code", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("secret", sa.String(length=128), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("created_at", kefu.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", kefu.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cti_pbxs")),
        sa.UniqueConstraint("code", name=op.f("uq_cti_pbxs_code")),
    )
    op.create_table(
        "cti_extensions",
        sa.Column("user_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("extension", sa.String(length=32), nullable=False),
        sa.Column("updated_at", kefu.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_cti_extensions_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_cti_extensions")),
        sa.UniqueConstraint("extension", name=op.f("uq_cti_extensions_extension")),
    )
    op.create_table(
        "cti_calls",
        sa.Column("pbx", sa.String(length=64), nullable=False),
        sa.Column("call_id", sa.String(length=128), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("direction", sa.String(length=16), nullable=True),
        sa.Column("caller", sa.String(length=64), nullable=True),
        sa.Column("called", sa.String(length=64), nullable=True),
        sa.Column("language", sa.String(length=16), nullable=True),
        sa.Column("queue", sa.String(length=64), nullable=True),
        sa.Column("extension", sa.String(length=32), nullable=True),
        sa.Column("agent_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("answered_by_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("interaction_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("started_at", kefu.db.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("queued_at", kefu.db.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("ringing_at", kefu.db.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("answered_at", kefu.db.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("ended_at", kefu.db.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("hangup_cause", sa.String(length=64), nullable=True),
        sa.Column("hangup_by", sa.String(length=16), nullable=True),
        sa.Column("held_seconds", sa.Integer(), nullable=False),
        sa.Column("transfers", sa.Integer(), nullable=False),
        sa.Column("digits", sa.String(length=255), nullable=True),
        sa.Column("recording_url", sa.Text(), nullable=True),
        sa.Column("recording_path", sa.Text(), nullable=True),
        sa.Column("recording_seconds", sa.Integer(), nullable=True),
        sa.Column(
            "ivr_state", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=True
        ),
        sa.Column(
            "ivr_instruction",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("ivr_done", sa.Boolean(), nullable=False),
        sa.Column("applied_seq", sa.Integer(), nullable=False),
        sa.Column("gap_since", kefu.db.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("event_count", sa.Integer(), nullable=False),
        sa.Column("last_event_at", kefu.db.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", kefu.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", kefu.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["users.id"], name=op.f("fk_cti_calls_agent_id_users"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["answered_by_id"], ["users.id"], name=op.f("fk_cti_calls_answered_by_id_users"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["interaction_id"],
            ["interactions.id"],
            name=op.f("fk_cti_calls_interaction_id_interactions"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cti_calls")),
        sa.UniqueConstraint("pbx", "call_id", name="uq_cti_calls_pbx_call_id"),
    )
    op.create_index("ix_cti_calls_agent", "cti_calls", ["agent_id"], unique=False)
    op.create_index("ix_cti_calls_gap", "cti_calls", ["gap_since"], unique=False)
    op.create_index("ix_cti_calls_interaction", "cti_calls", ["interaction_id"], unique=False)
    op.create_index("ix_cti_calls_started", "cti_calls", ["started_at"], unique=False)
    op.create_table(
        "cti_call_events",
        sa.Column("pbx", sa.String(length=64), nullable=False),
        sa.Column("event_id", sa.String(length=128), nullable=False),
        sa.Column("call_row_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=True),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("at", kefu.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column(
            "data", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column("received_at", kefu.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("deliveries", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.String(length=32), nullable=True),
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.ForeignKeyConstraint(
            ["call_row_id"], ["cti_calls.id"], name=op.f("fk_cti_call_events_call_row_id_cti_calls"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cti_call_events")),
        sa.UniqueConstraint("call_row_id", "seq", name="uq_cti_call_events_call_row_id_seq"),
        sa.UniqueConstraint("pbx", "event_id", name="uq_cti_call_events_pbx_event_id"),
    )


def downgrade() -> None:
    op.drop_table("cti_call_events")
    op.drop_index("ix_cti_calls_started", table_name="cti_calls")
    op.drop_index("ix_cti_calls_interaction", table_name="cti_calls")
    op.drop_index("ix_cti_calls_gap", table_name="cti_calls")
    op.drop_index("ix_cti_calls_agent", table_name="cti_calls")
    op.drop_table("cti_calls")
    op.drop_table("cti_extensions")
    op.drop_table("cti_pbxs")
