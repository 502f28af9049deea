"""channel: email outbound

The transport's tables: outbound mails with their idempotency state, the once-a-day record of
automatic replies, and the IMAP poll lease of each mailbox.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-29 17:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy import Text
from sqlalchemy.dialects import postgresql

import kefu.db.base

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "email_imap_leases",
        sa.Column(
            "mailbox_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=False, nullable=False
        ),
        sa.Column("holder", sa.String(length=128), nullable=False),
        sa.Column("locked_until", kefu.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_poll_at", kefu.db.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["mailbox_id"],
            ["email_mailboxes.id"],
            name=op.f("fk_email_imap_leases_mailbox_id_email_mailboxes"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("mailbox_id", name=op.f("pk_email_imap_leases")),
    )
    op.create_table(
        "email_auto_replies",
        sa.Column("mailbox_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("sender", sa.String(length=254), nullable=False),
        sa.Column("thread_key", sa.String(length=64), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("email_message_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("created_at", kefu.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.ForeignKeyConstraint(
            ["email_message_id"],
            ["email_messages.id"],
            name=op.f("fk_email_auto_replies_email_message_id_email_messages"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["mailbox_id"],
            ["email_mailboxes.id"],
            name=op.f("fk_email_auto_replies_mailbox_id_email_mailboxes"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_email_auto_replies")),
        sa.UniqueConstraint("mailbox_id", "sender", "thread_key", "day", name="uq_email_auto_replies_once_a_day"),
    )
    op.create_table(
        "email_outbound",
        sa.Column("mailbox_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("email_message_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("work_order_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("comment_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("message_id", sa.String(length=255), nullable=False),
        sa.Column("envelope_from", sa.String(length=254), nullable=False),
        sa.Column(
            "recipients", sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), "postgresql"), nullable=False
        ),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("smtp_response", sa.Text(), nullable=True),
        sa.Column("created_by_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("created_at", kefu.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("attempted_at", kefu.db.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("sent_at", kefu.db.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.CheckConstraint("kind in ('reply','auto_reply','notice')", name=op.f("ck_email_outbound_kind")),
        sa.CheckConstraint("state in ('queued','sending','sent','failed')", name=op.f("ck_email_outbound_state")),
        sa.ForeignKeyConstraint(
            ["comment_id"],
            ["work_order_comments.id"],
            name=op.f("fk_email_outbound_comment_id_work_order_comments"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["created_by_id"], ["users.id"], name=op.f("fk_email_outbound_created_by_id_users"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["email_message_id"],
            ["email_messages.id"],
            name=op.f("fk_email_outbound_email_message_id_email_messages"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_email_outbound_job_id_jobs"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["mailbox_id"],
            ["email_mailboxes.id"],
            name=op.f("fk_email_outbound_mailbox_id_email_mailboxes"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["work_order_id"],
            ["work_orders.id"],
            name=op.f("fk_email_outbound_work_order_id_work_orders"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_email_outbound")),
        sa.UniqueConstraint("comment_id", name=op.f("uq_email_outbound_comment_id")),
        sa.UniqueConstraint("email_message_id", name=op.f("uq_email_outbound_email_message_id")),
        sa.UniqueConstraint("message_id", name=op.f("uq_email_outbound_message_id")),
    )
    with op.batch_alter_table("email_outbound", schema=None) as batch_op:
        batch_op.create_index("ix_email_outbound_state", ["state", "created_at"], unique=False)
        batch_op.create_index("ix_email_outbound_work_order", ["work_order_id", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("email_outbound", schema=None) as batch_op:
        batch_op.drop_index("ix_email_outbound_work_order")
        batch_op.drop_index("ix_email_outbound_state")

    op.drop_table("email_outbound")
    op.drop_table("email_auto_replies")
    op.drop_table("email_imap_leases")
