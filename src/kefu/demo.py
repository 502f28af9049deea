"""Demo data for the embedded default: one user per role, two teams, a few skills."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from kefu.core.audit import Actor
from kefu.identity import service
from kefu.identity.models import Skill, Team, User

DEMO_PASSWORD = "kefu-demo-2026"
DEMO_USERS = (
    # username, display name, roles, team, skills (name -> proficiency), languages
    ("admin", "系统管理员 Admin", ["admin"], None, {}, ["zh-CN", "en"]),
    ("supervisor", "王班长 Wang (supervisor)", ["supervisor"], "一线客服 Front line", {}, ["zh-CN"]),
    ("km", "李知识 Li (knowledge manager)", ["knowledge_manager"], None, {}, ["zh-CN", "en"]),
    (
        "agent",
        "张坐席 Zhang (agent)",
        ["agent"],
        "一线客服 Front line",
        {"账户与登录 Accounts": 4, "银行卡 Cards": 3},
        ["zh-CN"],
    ),
    (
        "agent2",
        "Emily Chen (agent)",
        ["agent"],
        "English desk",
        {"银行卡 Cards": 5, "投诉处理 Complaints": 2},
        ["en", "zh-CN"],
    ),
    ("customer", "陈先生 Mr Chen (customer)", ["customer"], None, {}, ["zh-CN"]),
)
DEMO_TEAMS = ("一线客服 Front line", "English desk", "后台支持 Back office")
DEMO_SKILLS = ("账户与登录 Accounts", "银行卡 Cards", "投诉处理 Complaints", "保险理赔 Insurance claims")


async def load_demo(db: AsyncSession) -> list[str]:
    """Idempotent: what exists is left alone. Returns the usernames created."""
    actor = Actor.system("demo")
    teams = {t.name: t for t in (await db.scalars(select(Team))).all()}
    for name in DEMO_TEAMS:
        if name not in teams:
            teams[name] = await service.create_team(db, actor, name=name)
    skills = {s.name: s for s in (await db.scalars(select(Skill))).all()}
    for name in DEMO_SKILLS:
        if name not in skills:
            skills[name] = await service.create_skill(db, actor, name=name)
    created = []
    for username, display, roles, team, skill_levels, languages in DEMO_USERS:
        if await db.scalar(select(User.id).where(User.username == username)) is not None:
            continue
        user = await service.create_user(
            db,
            actor,
            username=username,
            display_name=display,
            roles=roles,
            password=DEMO_PASSWORD,
            email=f"{username}@demo.kefu.local",
            locale="en" if username == "agent2" else "zh_CN",
            team_ids=[teams[team].id] if team else [],
        )
        if skill_levels or languages:
            await service.set_agent_skills(
                db, actor, user, skills={skills[n].id: p for n, p in skill_levels.items()}, languages=languages
            )
        created.append(username)
    return created
