"""Knowledge tables: articles and their immutable versions, categories, feedback threads, the points
ledger, announcements with acknowledgements, training collections, search logs and the index feed."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from kefu.db.base import Base, BigId, IdMixin, JsonDoc, TimestampMixin, UTCDateTime, utcnow


class ArticleKind(enum.StrEnum):
    faq = "faq"  # a knowledge point: standard question and answer
    case = "case"  # case library: problem, analysis, resolution, lessons
    experience = "experience"  # an agent's experience note


class Audience(enum.StrEnum):
    internal = "internal"  # staff only
    public = "public"  # also customers and the help centre


class VersionStatus(enum.StrEnum):
    draft = "draft"
    in_review = "in_review"
    approved = "approved"
    published = "published"  # the live version of its article (at most one)
    superseded = "superseded"  # was published, replaced by a later version
    withdrawn = "withdrawn"  # a draft abandoned without publishing


class Category(IdMixin, TimestampMixin, Base):
    __tablename__ = "kb_categories"

    parent_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("kb_categories.id", ondelete="RESTRICT"))
    name: Mapped[str] = mapped_column(String(128), nullable=False)
    position: Mapped[int] = mapped_column(Integer, default=0, nullable=False)

    __table_args__ = (UniqueConstraint("parent_id", "name", name="uq_kb_categories_parent_name"),)


class Article(IdMixin, TimestampMixin, Base):
    """The identity of a knowledge point. Its content lives in versions; nothing here is content."""

    __tablename__ = "kb_articles"

    # Stable id from an import source: importing the same file twice updates, never duplicates.
    external_id: Mapped[str | None] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(16), default=ArticleKind.faq, nullable=False)
    audience: Mapped[str] = mapped_column(String(16), default=Audience.internal, nullable=False)
    language: Mapped[str] = mapped_column(String(16), default="zh-CN", nullable=False)
    # Articles that are translations of each other share a group id (the id of the first of them).
    translation_group_id: Mapped[int | None] = mapped_column(BigId)
    category_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("kb_categories.id", ondelete="SET NULL"))
    owner_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("users.id", ondelete="SET NULL"))
    # The live version. No foreign key: the service keeps it pointing at a published version of this
    # same article, which a key could not express anyway.
    published_version_id: Mapped[int | None] = mapped_column(BigId)
    archived_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    effective_from: Mapped[datetime | None] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Re-verification: the owner confirms the article is still right every N days.
    verify_interval_days: Mapped[int | None] = mapped_column(Integer)
    last_verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    versions: Mapped[list[ArticleVersion]] = relationship(
        back_populates="article",
        foreign_keys="ArticleVersion.article_id",
        order_by="ArticleVersion.number",
        lazy="raise",
    )

    __table_args__ = (
        Index("ix_kb_articles_category", "category_id"),
        Index("ix_kb_articles_owner", "owner_id"),
        Index("ix_kb_articles_group", "translation_group_id"),
        CheckConstraint("kind IN ('faq','case','experience')", name="known_kind"),
        CheckConstraint("audience IN ('internal','public')", name="known_audience"),
    )


class ArticleVersion(IdMixin, Base):
    """One version of an article's content. Once published it is never changed again."""

    __tablename__ = "kb_article_versions"

    article_id: Mapped[int] = mapped_column(BigId, ForeignKey("kb_articles.id", ondelete="CASCADE"), nullable=False)
    number: Mapped[int] = mapped_column(Integer, nullable=False)
    status: Mapped[str] = mapped_column(String(16), default=VersionStatus.draft, nullable=False)
    title: Mapped[str] = mapped_column(String(300), nullable=False)
    # The source as written (Markdown) and its sanitized HTML rendering, made once on save.
    body_markdown: Mapped[str] = mapped_column(Text, default="", nullable=False)
    body_html: Mapped[str] = mapped_column(Text, default="", nullable=False)
    similar_questions: Mapped[list[str]] = mapped_column(JsonDoc, default=list, nullable=False)
    tags: Mapped[list[str]] = mapped_column(JsonDoc, default=list, nullable=False)
    # Case library fields (problem, analysis, resolution, lessons); empty for other kinds.
    case_fields: Mapped[dict[str, Any]] = mapped_column(JsonDoc, default=dict, nullable=False)
    change_note: Mapped[str] = mapped_column(String(500), default="", nullable=False)
    author_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("users.id", ondelete="SET NULL"))
    reviewer_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("users.id", ondelete="SET NULL"))
    review_comment: Mapped[str] = mapped_column(String(2000), default="", nullable=False)
    based_on_version: Mapped[int | None] = mapped_column(Integer)
    feedback_thread_id: Mapped[int | None] = mapped_column(BigId)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    submitted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    reviewed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    publish_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # scheduled publication
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    published_by_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("users.id", ondelete="SET NULL"))

    article: Mapped[Article] = relationship(back_populates="versions", foreign_keys=[article_id], lazy="raise")

    __table_args__ = (
        UniqueConstraint("article_id", "number", name="uq_kb_article_versions_number"),
        Index("ix_kb_article_versions_status", "status", "publish_at"),
        Index("ix_kb_article_versions_reviewer", "reviewer_id", "status"),
        Index("ix_kb_article_versions_published", "published_at"),
    )


class FeedbackKind(enum.StrEnum):
    question = "question"
    error = "error"
    suggestion = "suggestion"


class FeedbackStatus(enum.StrEnum):
    open = "open"
    answered = "answered"
    accepted = "accepted"
    rejected = "rejected"


class FeedbackThread(IdMixin, TimestampMixin, Base):
    __tablename__ = "kb_feedback_threads"

    article_id: Mapped[int] = mapped_column(BigId, ForeignKey("kb_articles.id", ondelete="CASCADE"), nullable=False)
    version_number: Mapped[int | None] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    status: Mapped[str] = mapped_column(String(16), default=FeedbackStatus.open, nullable=False)
    subject: Mapped[str] = mapped_column(String(300), nullable=False)
    author_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("users.id", ondelete="SET NULL"))
    # Who should answer: the article owner, else any knowledge manager.
    assignee_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("users.id", ondelete="SET NULL"))
    resolution_reason: Mapped[str] = mapped_column(String(2000), default="", nullable=False)
    resolved_by_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("users.id", ondelete="SET NULL"))
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    draft_version_id: Mapped[int | None] = mapped_column(
        BigId, ForeignKey("kb_article_versions.id", ondelete="SET NULL")
    )

    __table_args__ = (
        Index("ix_kb_feedback_article", "article_id"),
        Index("ix_kb_feedback_inbox", "status", "assignee_id"),
        Index("ix_kb_feedback_author", "author_id"),
        CheckConstraint("kind IN ('question','error','suggestion')", name="known_kind"),
    )


class FeedbackMessage(IdMixin, Base):
    __tablename__ = "kb_feedback_messages"

    thread_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("kb_feedback_threads.id", ondelete="CASCADE"), nullable=False
    )
    author_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("users.id", ondelete="SET NULL"))
    body_markdown: Mapped[str] = mapped_column(Text, nullable=False)
    body_html: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)

    __table_args__ = (Index("ix_kb_feedback_messages_thread", "thread_id", "id"),)


class PointsEntry(IdMixin, Base):
    """Append-only points ledger. ``event_key`` makes each award happen once, however often its event
    is processed."""

    __tablename__ = "kb_points_ledger"

    user_id: Mapped[int] = mapped_column(BigId, ForeignKey("users.id", ondelete="CASCADE"), nullable=False)
    points: Mapped[int] = mapped_column(Integer, nullable=False)
    rule: Mapped[str] = mapped_column(String(64), nullable=False)
    event_key: Mapped[str] = mapped_column(String(200), unique=True, nullable=False)
    article_id: Mapped[int | None] = mapped_column(BigId)
    note: Mapped[str] = mapped_column(String(300), default="", nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)

    __table_args__ = (
        Index("ix_kb_points_user_time", "user_id", "created_at"),
        Index("ix_kb_points_time", "created_at"),
    )


class Announcement(IdMixin, Base):
    """An entry of the "recently updated" board: a published change or a free announcement."""

    __tablename__ = "kb_announcements"

    title: Mapped[str] = mapped_column(String(300), nullable=False)
    body_markdown: Mapped[str] = mapped_column(Text, default="", nullable=False)
    body_html: Mapped[str] = mapped_column(Text, default="", nullable=False)
    article_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("kb_articles.id", ondelete="SET NULL"))
    version_number: Mapped[int | None] = mapped_column(Integer)
    # Important announcements must be acknowledged by every staff member they address.
    requires_ack: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)
    audience_roles: Mapped[list[str]] = mapped_column(JsonDoc, default=list, nullable=False)
    created_by_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)

    __table_args__ = (Index("ix_kb_announcements_time", "created_at"),)


class AnnouncementAck(Base):
    __tablename__ = "kb_announcement_acks"

    announcement_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("kb_announcements.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[int] = mapped_column(BigId, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    acked_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)


class TrainingCollection(IdMixin, TimestampMixin, Base):
    __tablename__ = "kb_training_collections"

    name: Mapped[str] = mapped_column(String(200), unique=True, nullable=False)
    description: Mapped[str] = mapped_column(String(2000), default="", nullable=False)


class TrainingItem(Base):
    __tablename__ = "kb_training_items"

    collection_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("kb_training_collections.id", ondelete="CASCADE"), primary_key=True
    )
    article_id: Mapped[int] = mapped_column(BigId, ForeignKey("kb_articles.id", ondelete="CASCADE"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, default=0, nullable=False)


class SearchLog(IdMixin, Base):
    __tablename__ = "kb_search_log"

    query: Mapped[str] = mapped_column(String(500), nullable=False)
    # Normalized (width, case, spaces) so the gap report groups what users meant, not how they typed it.
    normalized: Mapped[str] = mapped_column(String(500), nullable=False)
    user_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("users.id", ondelete="SET NULL"))
    surface: Mapped[str] = mapped_column(String(16), default="agent", nullable=False)  # agent | help_centre | api
    result_count: Mapped[int] = mapped_column(Integer, nullable=False)
    top_score: Mapped[float | None] = mapped_column()
    result_ids: Mapped[list[int]] = mapped_column(JsonDoc, default=list, nullable=False)
    clicked_article_id: Mapped[int | None] = mapped_column(BigId)
    solved: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)

    __table_args__ = (Index("ix_kb_search_log_time", "created_at"), Index("ix_kb_search_log_norm", "normalized"))


class IndexChange(IdMixin, Base):
    """A feed of articles whose searchable content changed. Every app process follows it by id, so all
    processes' in-memory indexes converge within a poll interval, whatever the event backend."""

    __tablename__ = "kb_index_changes"

    article_id: Mapped[int] = mapped_column(BigId, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)


class ArticleAttachment(IdMixin, Base):
    """A file attached to an article. Kept in the database, so every app process and host serves it."""

    __tablename__ = "kb_attachments"

    article_id: Mapped[int] = mapped_column(BigId, ForeignKey("kb_articles.id", ondelete="CASCADE"), nullable=False)
    filename: Mapped[str] = mapped_column(String(255), nullable=False)
    content_type: Mapped[str] = mapped_column(String(127), nullable=False)
    size: Mapped[int] = mapped_column(Integer, nullable=False)
    sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    content: Mapped[bytes] = mapped_column(LargeBinary, nullable=False, deferred=True)
    uploaded_by_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)

    __table_args__ = (Index("ix_kb_attachments_article", "article_id"),)


class ArticleVector(Base):
    """An article's sentence embedding for one model, made from the text ``passage_key`` names. Made once
    by whichever process gets there first and read by every other one at start (embedding costs about a
    third of a second per article on one core; reading it back, microseconds)."""

    __tablename__ = "kb_article_vectors"

    article_id: Mapped[int] = mapped_column(BigId, ForeignKey("kb_articles.id", ondelete="CASCADE"), primary_key=True)
    model: Mapped[str] = mapped_column(String(300), primary_key=True)
    passage_key: Mapped[str] = mapped_column(String(64), nullable=False)
    vector: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)  # float32, little-endian
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)


class QuestionModelRow(Base):
    """The question model of search (kefu.knowledge.search.question_model) for one embedding model: built
    in the background by whichever process gets there first, read by every other one."""

    __tablename__ = "kb_question_models"

    model: Mapped[str] = mapped_column(String(300), primary_key=True)
    articles: Mapped[int] = mapped_column(Integer, nullable=False)  # knowledge-base size it was built from
    payload: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)  # QuestionModel.to_bytes()
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
