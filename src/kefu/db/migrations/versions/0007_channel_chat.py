"""channel: chat

Conversations (per-conversation message counter, the visitor token's hash, the agent heartbeat), their
sequence-numbered messages (unique per conversation by seq and by client message id) and attachments.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29 17:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import kefu.db.base

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "chat_conversations",
        sa.Column("public_id", sa.String(length=32), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("widget", sa.String(length=64), nullable=False),
        sa.Column("queue_code", sa.String(length=64), nullable=False),
        sa.Column("interaction_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("segment", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("closed_reason", sa.String(length=32), nullable=True),
        sa.Column("visitor_name", sa.String(length=128), nullable=False),
        sa.Column("visitor_email", sa.String(length=254), nullable=True),
        sa.Column("visitor_phone", sa.String(length=32), nullable=True),
        sa.Column("locale", sa.String(length=8), nullable=False),
        sa.Column("origin", sa.String(length=255), nullable=True),
        sa.Column("last_seq", sa.Integer(), nullable=False),
        sa.Column("agent_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("agent_seen_at", kefu.db.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("answered_at", kefu.db.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("closed_at", kefu.db.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("created_at", kefu.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", kefu.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["users.id"], name=op.f("fk_chat_conversations_agent_id_users"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["interaction_id"],
            ["interactions.id"],
            name=op.f("fk_chat_conversations_interaction_id_interactions"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_chat_conversations")),
        sa.UniqueConstraint("interaction_id", name=op.f("uq_chat_conversations_interaction_id")),
        sa.UniqueConstraint("public_id", name=op.f("uq_chat_conversations_public_id")),
    )
    with op.batch_alter_table("chat_conversations", schema=None) as batch_op:
        batch_op.create_index("ix_chat_conversations_agent_status", ["agent_id", "status"], unique=False)
        batch_op.create_index("ix_chat_conversations_status_seen", ["status", "agent_seen_at"], unique=False)

    op.create_table(
        "chat_attachments",
        sa.Column("conversation_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("filename", sa.String(length=200), nullable=False),
        sa.Column("content_type", sa.String(length=128), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", kefu.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["chat_conversations.id"],
            name=op.f("fk_chat_attachments_conversation_id_chat_conversations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_chat_attachments")),
    )
    with op.batch_alter_table("chat_attachments", schema=None) as batch_op:
        batch_op.create_index("ix_chat_attachments_conversation", ["conversation_id"], unique=False)

    op.create_table(
        "chat_messages",
        sa.Column("conversation_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("sender", sa.String(length=16), nullable=False),
        sa.Column("author_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("author_name", sa.String(length=128), nullable=True),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("client_msg_id", sa.String(length=64), nullable=True),
        sa.Column("code", sa.String(length=32), nullable=True),
        sa.Column("attachment_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("created_at", kefu.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.ForeignKeyConstraint(
            ["attachment_id"],
            ["chat_attachments.id"],
            name=op.f("fk_chat_messages_attachment_id_chat_attachments"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["author_id"], ["users.id"], name=op.f("fk_chat_messages_author_id_users"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["chat_conversations.id"],
            name=op.f("fk_chat_messages_conversation_id_chat_conversations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_chat_messages")),
        sa.UniqueConstraint("conversation_id", "client_msg_id", name="uq_chat_messages_conversation_client_msg"),
        sa.UniqueConstraint("conversation_id", "seq", name="uq_chat_messages_conversation_seq"),
    )


def downgrade() -> None:
    op.drop_table("chat_messages")
    with op.batch_alter_table("chat_attachments", schema=None) as batch_op:
        batch_op.drop_index("ix_chat_attachments_conversation")

    op.drop_table("chat_attachments")
    with op.batch_alter_table("chat_conversations", schema=None) as batch_op:
        batch_op.drop_index("ix_chat_conversations_status_seen")
        batch_op.drop_index("ix_chat_conversations_agent_status")

    op.drop_table("chat_conversations")
