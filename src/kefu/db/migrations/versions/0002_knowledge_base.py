"""knowledge base

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29

Articles with immutable versions, categories, feedback threads, the points ledger (append-only),
announcements and acknowledgements, training collections, search logs and the index change feed.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import kefu.db.base
from kefu.db.migration_helpers import append_only, drop_append_only

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "kb_categories",
        sa.Column("parent_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("created_at", kefu.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", kefu.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["parent_id"],
            ["kb_categories.id"],
            name=op.f("fk_kb_categories_parent_id_kb_categories"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_kb_categories")),
        sa.UniqueConstraint("parent_id", "name", name="uq_kb_categories_parent_name"),
    )
    op.create_table(
        "kb_index_changes",
        sa.Column("article_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("created_at", kefu.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_kb_index_changes")),
    )
    op.create_table(
        "kb_training_collections",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.String(length=2000), nullable=False),
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("created_at", kefu.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", kefu.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_kb_training_collections")),
        sa.UniqueConstraint("name", name=op.f("uq_kb_training_collections_name")),
    )
    op.create_table(
        "kb_articles",
        sa.Column("external_id", sa.String(length=200), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("audience", sa.String(length=16), nullable=False),
        sa.Column("language", sa.String(length=16), nullable=False),
        sa.Column("translation_group_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("category_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("owner_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("published_version_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("archived_at", kefu.db.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("effective_from", kefu.db.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("expires_at", kefu.db.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("verify_interval_days", sa.Integer(), nullable=True),
        sa.Column("last_verified_at", kefu.db.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("created_at", kefu.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", kefu.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint("audience IN ('internal','public')", name=op.f("ck_kb_articles_known_audience")),
        sa.CheckConstraint("kind IN ('faq','case','experience')", name=op.f("ck_kb_articles_known_kind")),
        sa.ForeignKeyConstraint(
            ["category_id"],
            ["kb_categories.id"],
            name=op.f("fk_kb_articles_category_id_kb_categories"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["owner_id"], ["users.id"], name=op.f("fk_kb_articles_owner_id_users"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_kb_articles")),
        sa.UniqueConstraint("external_id", name=op.f("uq_kb_articles_external_id")),
    )
    with op.batch_alter_table("kb_articles", schema=None) as batch_op:
        batch_op.create_index("ix_kb_articles_category", ["category_id"], unique=False)
        batch_op.create_index("ix_kb_articles_group", ["translation_group_id"], unique=False)
        batch_op.create_index("ix_kb_articles_owner", ["owner_id"], unique=False)

    op.create_table(
        "kb_points_ledger",
        sa.Column("user_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("points", sa.Integer(), nullable=False),
        sa.Column("rule", sa.String(length=64), nullable=False),
        sa.Column("event_key", sa.String(length=200), nullable=False),
        sa.Column("article_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("note", sa.String(length=300), nullable=False),
        sa.Column("created_at", kefu.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_kb_points_ledger_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_kb_points_ledger")),
        sa.UniqueConstraint("event_key", name=op.f("uq_kb_points_ledger_event_key")),
    )
    with op.batch_alter_table("kb_points_ledger", schema=None) as batch_op:
        batch_op.create_index("ix_kb_points_time", ["created_at"], unique=False)
        batch_op.create_index("ix_kb_points_user_time", ["user_id", "created_at"], unique=False)

    op.create_table(
        "kb_search_log",
        sa.Column("query", sa.String(length=500), nullable=False),
        sa.Column("normalized", sa.String(length=500), nullable=False),
        sa.Column("user_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("surface", sa.String(length=16), nullable=False),
        sa.Column("result_count", sa.Integer(), nullable=False),
        sa.Column("top_score", sa.Double(), nullable=True),
        sa.Column(
            "result_ids", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column("clicked_article_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("solved", sa.Boolean(), nullable=False),
        sa.Column("created_at", kefu.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_kb_search_log_user_id_users"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_kb_search_log")),
    )
    with op.batch_alter_table("kb_search_log", schema=None) as batch_op:
        batch_op.create_index("ix_kb_search_log_norm", ["normalized"], unique=False)
        batch_op.create_index("ix_kb_search_log_time", ["created_at"], unique=False)

    op.create_table(
        "kb_announcements",
        sa.Column("title", sa.String(length=300), nullable=False),
        sa.Column("body_markdown", sa.Text(), nullable=False),
        sa.Column("body_html", sa.Text(), nullable=False),
        sa.Column("article_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("version_number", sa.Integer(), nullable=True),
        sa.Column("requires_ack", sa.Boolean(), nullable=False),
        sa.Column(
            "audience_roles",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("created_by_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("created_at", kefu.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.ForeignKeyConstraint(
            ["article_id"],
            ["kb_articles.id"],
            name=op.f("fk_kb_announcements_article_id_kb_articles"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["created_by_id"], ["users.id"], name=op.f("fk_kb_announcements_created_by_id_users"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_kb_announcements")),
    )
    with op.batch_alter_table("kb_announcements", schema=None) as batch_op:
        batch_op.create_index("ix_kb_announcements_time", ["created_at"], unique=False)

    op.create_table(
        "kb_article_versions",
        sa.Column("article_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("title", sa.String(length=300), nullable=False),
        sa.Column("body_markdown", sa.Text(), nullable=False),
        sa.Column("body_html", sa.Text(), nullable=False),
        sa.Column(
            "similar_questions",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "tags", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column(
            "case_fields", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column("change_note", sa.String(length=500), nullable=False),
        sa.Column("author_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("reviewer_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("review_comment", sa.String(length=2000), nullable=False),
        sa.Column("based_on_version", sa.Integer(), nullable=True),
        sa.Column("feedback_thread_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("created_at", kefu.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("submitted_at", kefu.db.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("reviewed_at", kefu.db.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("publish_at", kefu.db.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("published_at", kefu.db.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("published_by_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.ForeignKeyConstraint(
            ["article_id"],
            ["kb_articles.id"],
            name=op.f("fk_kb_article_versions_article_id_kb_articles"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["author_id"], ["users.id"], name=op.f("fk_kb_article_versions_author_id_users"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["published_by_id"],
            ["users.id"],
            name=op.f("fk_kb_article_versions_published_by_id_users"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["reviewer_id"], ["users.id"], name=op.f("fk_kb_article_versions_reviewer_id_users"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_kb_article_versions")),
        sa.UniqueConstraint("article_id", "number", name="uq_kb_article_versions_number"),
    )
    with op.batch_alter_table("kb_article_versions", schema=None) as batch_op:
        batch_op.create_index("ix_kb_article_versions_published", ["published_at"], unique=False)
        batch_op.create_index("ix_kb_article_versions_reviewer", ["reviewer_id", "status"], unique=False)
        batch_op.create_index("ix_kb_article_versions_status", ["status", "publish_at"], unique=False)

    op.create_table(
        "kb_training_items",
        sa.Column("collection_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("article_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["article_id"],
            ["kb_articles.id"],
            name=op.f("fk_kb_training_items_article_id_kb_articles"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["collection_id"],
            ["kb_training_collections.id"],
            name=op.f("fk_kb_training_items_collection_id_kb_training_collections"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("collection_id", "article_id", name=op.f("pk_kb_training_items")),
    )
    op.create_table(
        "kb_announcement_acks",
        sa.Column("announcement_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("user_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("acked_at", kefu.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["announcement_id"],
            ["kb_announcements.id"],
            name=op.f("fk_kb_announcement_acks_announcement_id_kb_announcements"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_kb_announcement_acks_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("announcement_id", "user_id", name=op.f("pk_kb_announcement_acks")),
    )
    op.create_table(
        "kb_feedback_threads",
        sa.Column("article_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("version_number", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("subject", sa.String(length=300), nullable=False),
        sa.Column("author_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("assignee_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("resolution_reason", sa.String(length=2000), nullable=False),
        sa.Column("resolved_by_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("resolved_at", kefu.db.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("draft_version_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("created_at", kefu.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", kefu.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint("kind IN ('question','error','suggestion')", name=op.f("ck_kb_feedback_threads_known_kind")),
        sa.ForeignKeyConstraint(
            ["article_id"],
            ["kb_articles.id"],
            name=op.f("fk_kb_feedback_threads_article_id_kb_articles"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["assignee_id"], ["users.id"], name=op.f("fk_kb_feedback_threads_assignee_id_users"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["author_id"], ["users.id"], name=op.f("fk_kb_feedback_threads_author_id_users"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["draft_version_id"],
            ["kb_article_versions.id"],
            name=op.f("fk_kb_feedback_threads_draft_version_id_kb_article_versions"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["resolved_by_id"],
            ["users.id"],
            name=op.f("fk_kb_feedback_threads_resolved_by_id_users"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_kb_feedback_threads")),
    )
    with op.batch_alter_table("kb_feedback_threads", schema=None) as batch_op:
        batch_op.create_index("ix_kb_feedback_article", ["article_id"], unique=False)
        batch_op.create_index("ix_kb_feedback_author", ["author_id"], unique=False)
        batch_op.create_index("ix_kb_feedback_inbox", ["status", "assignee_id"], unique=False)

    op.create_table(
        "kb_feedback_messages",
        sa.Column("thread_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("author_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("body_markdown", sa.Text(), nullable=False),
        sa.Column("body_html", sa.Text(), nullable=False),
        sa.Column("created_at", kefu.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.ForeignKeyConstraint(
            ["author_id"], ["users.id"], name=op.f("fk_kb_feedback_messages_author_id_users"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["thread_id"],
            ["kb_feedback_threads.id"],
            name=op.f("fk_kb_feedback_messages_thread_id_kb_feedback_threads"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_kb_feedback_messages")),
    )
    with op.batch_alter_table("kb_feedback_messages", schema=None) as batch_op:
        batch_op.create_index("ix_kb_feedback_messages_thread", ["thread_id", "id"], unique=False)
    append_only("kb_points_ledger")


def downgrade() -> None:
    drop_append_only("kb_points_ledger")
    with op.batch_alter_table("kb_feedback_messages", schema=None) as batch_op:
        batch_op.drop_index("ix_kb_feedback_messages_thread")

    op.drop_table("kb_feedback_messages")
    with op.batch_alter_table("kb_feedback_threads", schema=None) as batch_op:
        batch_op.drop_index("ix_kb_feedback_inbox")
        batch_op.drop_index("ix_kb_feedback_author")
        batch_op.drop_index("ix_kb_feedback_article")

    op.drop_table("kb_feedback_threads")
    op.drop_table("kb_announcement_acks")
    op.drop_table("kb_training_items")
    with op.batch_alter_table("kb_article_versions", schema=None) as batch_op:
        batch_op.drop_index("ix_kb_article_versions_status")
        batch_op.drop_index("ix_kb_article_versions_reviewer")
        batch_op.drop_index("ix_kb_article_versions_published")

    op.drop_table("kb_article_versions")
    with op.batch_alter_table("kb_announcements", schema=None) as batch_op:
        batch_op.drop_index("ix_kb_announcements_time")

    op.drop_table("kb_announcements")
    with op.batch_alter_table("kb_search_log", schema=None) as batch_op:
        batch_op.drop_index("ix_kb_search_log_time")
        batch_op.drop_index("ix_kb_search_log_norm")

    op.drop_table("kb_search_log")
    with op.batch_alter_table("kb_points_ledger", schema=None) as batch_op:
        batch_op.drop_index("ix_kb_points_user_time")
        batch_op.drop_index("ix_kb_points_time")

    op.drop_table("kb_points_ledger")
    with op.batch_alter_table("kb_articles", schema=None) as batch_op:
        batch_op.drop_index("ix_kb_articles_owner")
        batch_op.drop_index("ix_kb_articles_group")
        batch_op.drop_index("ix_kb_articles_category")

    op.drop_table("kb_articles")
    op.drop_table("kb_training_collections")
    op.drop_table("kb_index_changes")
    op.drop_table("kb_categories")
