"""Identity tables: who may sign in, with which roles, in which teams, with which skills."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import Boolean, CheckConstraint, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from kefu.db.base import Base, IdMixin, JsonDoc, TimestampMixin, UTCDateTime, utcnow


class Role(enum.StrEnum):
    admin = "admin"
    supervisor = "supervisor"
    knowledge_manager = "knowledge_manager"
    agent = "agent"
    customer = "customer"


STAFF_ROLES = frozenset({Role.admin, Role.supervisor, Role.knowledge_manager, Role.agent})


class User(IdMixin, TimestampMixin, Base):
    __tablename__ = "users"

    username: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    email: Mapped[str | None] = mapped_column(String(254), unique=True)
    display_name: Mapped[str] = mapped_column(String(128), nullable=False)
    password_hash: Mapped[str | None] = mapped_column(String(255))
    is_active: Mapped[bool] = mapped_column(Boolean, default=True, nullable=False)
    locale: Mapped[str] = mapped_column(String(16), default="zh_CN", nullable=False)
    time_zone: Mapped[str] = mapped_column(String(64), default="Asia/Shanghai", nullable=False)
    # Bumped on password change or disable: every older session and reset token stops working.
    security_stamp: Mapped[int] = mapped_column(Integer, default=0, nullable=False)

    roles: Mapped[list[UserRole]] = relationship(back_populates="user", cascade="all, delete-orphan", lazy="selectin")
    skills: Mapped[list[AgentSkill]] = relationship(
        back_populates="user", cascade="all, delete-orphan", lazy="selectin"
    )
    languages: Mapped[list[AgentLanguage]] = relationship(
        back_populates="user", cascade="all, delete-orphan", lazy="selectin"
    )
    memberships: Mapped[list[TeamMember]] = relationship(
        back_populates="user", cascade="all, delete-orphan", lazy="selectin"
    )

    @property
    def role_names(self) -> frozenset[str]:
        return frozenset(r.role for r in self.roles)

    @property
    def team_ids(self) -> frozenset[int]:
        return frozenset(m.team_id for m in self.memberships)


class UserRole(Base):
    __tablename__ = "user_roles"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    role: Mapped[str] = mapped_column(String(32), primary_key=True)
    user: Mapped[User] = relationship(back_populates="roles")

    __table_args__ = (
        CheckConstraint("role IN ('admin','supervisor','knowledge_manager','agent','customer')", name="known_role"),
    )


class Team(IdMixin, TimestampMixin, Base):
    __tablename__ = "teams"

    name: Mapped[str] = mapped_column(String(128), unique=True, nullable=False)
    description: Mapped[str] = mapped_column(String(1000), default="", nullable=False)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True, nullable=False)

    members: Mapped[list[TeamMember]] = relationship(
        back_populates="team", cascade="all, delete-orphan", lazy="selectin"
    )


class TeamMember(Base):
    __tablename__ = "team_members"

    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    is_lead: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)

    team: Mapped[Team] = relationship(back_populates="members")
    user: Mapped[User] = relationship(back_populates="memberships", lazy="selectin")

    __table_args__ = (Index("ix_team_members_user", "user_id"),)


class Skill(IdMixin, TimestampMixin, Base):
    __tablename__ = "skills"

    name: Mapped[str] = mapped_column(String(128), unique=True, nullable=False)
    description: Mapped[str] = mapped_column(String(1000), default="", nullable=False)


class AgentSkill(Base):
    __tablename__ = "agent_skills"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    skill_id: Mapped[int] = mapped_column(ForeignKey("skills.id", ondelete="CASCADE"), primary_key=True)
    proficiency: Mapped[int] = mapped_column(Integer, nullable=False)

    user: Mapped[User] = relationship(back_populates="skills")
    skill: Mapped[Skill] = relationship(lazy="selectin")

    __table_args__ = (
        CheckConstraint("proficiency BETWEEN 1 AND 5", name="proficiency_range"),
        # Routing asks "who has skill S at level >= n": served by this index.
        Index("ix_agent_skills_skill", "skill_id", "proficiency"),
    )


class AgentLanguage(Base):
    __tablename__ = "agent_languages"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    # BCP 47 tag, e.g. "zh-CN", "en", "yue".
    language: Mapped[str] = mapped_column(String(16), primary_key=True)

    user: Mapped[User] = relationship(back_populates="languages")


class WebSession(Base):
    """A signed-in browser. Server-side, so sign-out and disable take effect in every process."""

    __tablename__ = "web_sessions"

    # sha256 of the cookie value: a leaked database does not leak live sessions.
    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=False)
    csrf_token: Mapped[str] = mapped_column(String(64), nullable=False)
    security_stamp: Mapped[int] = mapped_column(Integer, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    ip: Mapped[str] = mapped_column(String(64), default="", nullable=False)
    user_agent: Mapped[str] = mapped_column(String(255), default="", nullable=False)

    __table_args__ = (Index("ix_web_sessions_user", "user_id"),)


class ApiToken(IdMixin, Base):
    __tablename__ = "api_tokens"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=False)
    name: Mapped[str] = mapped_column(String(128), nullable=False)
    # First characters of the token, shown in lists so a user can tell tokens apart.
    prefix: Mapped[str] = mapped_column(String(16), nullable=False)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    scopes: Mapped[list[str]] = mapped_column(JsonDoc, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    user: Mapped[User] = relationship(lazy="selectin")


class PasswordResetToken(IdMixin, Base):
    __tablename__ = "password_reset_tokens"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=False)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    security_stamp: Mapped[int] = mapped_column(Integer, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class LoginThrottle(Base):
    """Failed sign-ins per key (a username, or a client address). Shared by every process."""

    __tablename__ = "login_throttle"

    key: Mapped[str] = mapped_column(String(160), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)


__all__ = [
    "AgentLanguage",
    "AgentSkill",
    "ApiToken",
    "LoginThrottle",
    "PasswordResetToken",
    "Role",
    "STAFF_ROLES",
    "Skill",
    "Team",
    "TeamMember",
    "User",
    "UserRole",
    "WebSession",
]
