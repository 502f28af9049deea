"""API shapes of the identity domain."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field, field_validator

from kefu.core.schemas import (
    DbId,
    Email,
    LanguageTag,
    Name,
    Password,
    RequestModel,
    ResponseModel,
    ShortText,
    TimeZone,
    Username,
)
from kefu.identity.models import Role, User

Locale = Literal["zh_CN", "en"]
RoleName = Literal["admin", "supervisor", "knowledge_manager", "agent", "customer"]


class SkillLevel(ResponseModel):
    skill_id: int
    skill_name: str
    proficiency: int


class UserOut(ResponseModel):
    id: int
    username: str
    display_name: str
    email: str | None
    is_active: bool
    locale: str
    time_zone: str
    roles: list[str]
    team_ids: list[int]
    skills: list[SkillLevel]
    languages: list[str]
    created_at: datetime

    @classmethod
    def of(cls, user: User) -> UserOut:
        return cls(
            id=user.id,
            username=user.username,
            display_name=user.display_name,
            email=user.email,
            is_active=user.is_active,
            locale=user.locale,
            time_zone=user.time_zone,
            roles=sorted(user.role_names),
            team_ids=sorted(user.team_ids),
            skills=[
                SkillLevel(skill_id=s.skill_id, skill_name=s.skill.name, proficiency=s.proficiency)
                for s in sorted(user.skills, key=lambda s: s.skill_id)
            ],
            languages=sorted(lang.language for lang in user.languages),
            created_at=user.created_at,
        )


class UserCreate(RequestModel):
    username: Username
    display_name: Name
    email: Email | None = None
    password: Password | None = None
    roles: list[RoleName] = Field(min_length=1, max_length=5)
    locale: Locale = "zh_CN"
    time_zone: TimeZone = "Asia/Shanghai"
    team_ids: list[DbId] = Field(default_factory=list, max_length=100)


class UserUpdate(RequestModel):
    display_name: Name | None = None
    email: Email | None = None
    roles: list[RoleName] | None = Field(default=None, min_length=1, max_length=5)
    locale: Locale | None = None
    time_zone: TimeZone | None = None
    team_ids: list[DbId] | None = Field(default=None, max_length=100)
    is_active: bool | None = None


class ProfileUpdate(RequestModel):
    display_name: Name | None = None
    locale: Locale | None = None
    time_zone: TimeZone | None = None


class PasswordChange(RequestModel):
    current_password: Password
    new_password: Password


class SkillAssignment(RequestModel):
    skill_id: DbId
    proficiency: int = Field(ge=1, le=5)


class AgentSkillsUpdate(RequestModel):
    skills: list[SkillAssignment] = Field(max_length=200)
    languages: list[LanguageTag] | None = Field(default=None, max_length=20)

    @field_validator("skills")
    @classmethod
    def _distinct(cls, value: list[SkillAssignment]) -> list[SkillAssignment]:
        if len({s.skill_id for s in value}) != len(value):
            raise ValueError("each skill may appear once")
        return value


class TeamOut(ResponseModel):
    id: int
    name: str
    description: str
    is_active: bool
    member_ids: list[int]
    lead_ids: list[int]

    @classmethod
    def of(cls, team: object) -> TeamOut:
        members = team.members  # type: ignore[attr-defined]
        return cls(
            id=team.id,  # type: ignore[attr-defined]
            name=team.name,  # type: ignore[attr-defined]
            description=team.description,  # type: ignore[attr-defined]
            is_active=team.is_active,  # type: ignore[attr-defined]
            member_ids=sorted(m.user_id for m in members),
            lead_ids=sorted(m.user_id for m in members if m.is_lead),
        )


class TeamCreate(RequestModel):
    name: Name
    description: ShortText = ""


class TeamUpdate(RequestModel):
    name: Name | None = None
    description: ShortText | None = None
    is_active: bool | None = None
    member_ids: list[DbId] | None = Field(default=None, max_length=5000)
    lead_ids: list[DbId] = Field(default_factory=list, max_length=100)


class SkillOut(ResponseModel):
    id: int
    name: str
    description: str


class SkillCreate(RequestModel):
    name: Name
    description: ShortText = ""


class SkillUpdate(RequestModel):
    name: Name | None = None
    description: ShortText | None = None


Scope = Literal[
    "*",
    "user:read",
    "user:write",
    "team:read",
    "team:write",
    "skill:read",
    "skill:write",
    "agent_skill:write",
    "audit_log:read",
    "profile:read",
    "profile:write",
    "api_token:read",
    "api_token:write",
    "metrics:read",
    "job:read",
    "event:read",
]


class ApiTokenCreate(RequestModel):
    name: Name
    scopes: list[Scope] = Field(min_length=1, max_length=30)
    expires_in_days: int | None = Field(default=90, ge=1, le=3650)


class ApiTokenOut(ResponseModel):
    id: int
    name: str
    prefix: str
    scopes: list[str]
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None


class ApiTokenCreated(ApiTokenOut):
    token: str = Field(description="shown once; store it now")


class LoginIn(RequestModel):
    login: Name
    password: Password


class PasswordResetRequest(RequestModel):
    login: Name


class PasswordResetConfirm(RequestModel):
    token: Name
    new_password: Password


class AuditOut(ResponseModel):
    id: int
    at: datetime
    actor_user_id: int | None
    actor_name: str
    action: str
    object_type: str
    object_id: str
    ip: str
    details: dict


ROLE_VALUES = [r.value for r in Role]
