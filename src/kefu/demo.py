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
    await load_service_desk_demo(db, teams)
    await load_routing_demo(db, teams, skills)
    await load_channels_demo(db)
    return created


async def load_channels_demo(db: AsyncSession) -> None:
    """A support mailbox, an SMS and a WeChat channel, an IVR hotline, agents' extensions (each idempotent)."""
    from kefu.channels.cti.demo import load_cti_demo
    from kefu.channels.email.demo import seed_demo as seed_email
    from kefu.channels.ivr.demo import seed_demo as seed_ivr
    from kefu.channels.webhooks.demo import load_webhooks_demo
    from kefu.settings import get_settings

    await seed_email(db)
    await load_webhooks_demo(db)
    await seed_ivr(db, get_settings())
    await load_cti_demo(db, get_settings())


DEMO_CUSTOMERS = (
    # external id, name, phone, email, language, attributes
    (
        "demo-c1",
        "陈先生 Mr Chen",
        "138 1234 5678",
        "chen@example.com",
        "zh-CN",
        {"会员等级": "金卡", "产品": "宽带 500M"},
    ),
    ("demo-c2", "林女士 Ms Lin", "(0755) 8888 6666", "lin@example.com", "zh-CN", {"产品": "信用卡"}),
    ("demo-c3", "Emma Brown", "+44 20 7946 0958", "emma@example.co.uk", "en", {"plan": "Travel insurance"}),
)
DEMO_REASONS = (
    ("billing", "账单 Billing", None),
    ("billing.dispute", "扣费异议 Charge dispute", "billing"),
    ("account", "账户 Account", None),
    ("account.login", "无法登录 Cannot sign in", "account"),
    ("fault", "故障 Fault", None),
    ("fault.network", "网络中断 Network down", "fault"),
)


async def load_service_desk_demo(db: AsyncSession, teams: dict[str, Team]) -> None:
    """A business calendar with SLA policies, contact reasons, three customers, work orders and a macro."""
    from kefu.core.policy import Principal
    from kefu.customers import service as customers
    from kefu.interactions import service as interactions
    from kefu.tickets import macros, sla
    from kefu.tickets import service as tickets
    from kefu.tickets.schemas import WorkOrderCreate

    if await customers.find_by_identity(db, "email", "chen@example.com") is not None:
        return
    admin_id = await db.scalar(select(User.id).where(User.username == "admin"))
    agent_id = await db.scalar(select(User.id).where(User.username == "agent"))
    front = teams["一线客服 Front line"].id
    system = Principal(user_id=admin_id, username="demo", roles=frozenset({"admin"}), via="session")
    hours = [["09:00", "12:00"], ["13:30", "18:00"]]
    calendar = await sla.create_calendar(
        db,
        system,
        name="工作日 Weekdays (Beijing)",
        time_zone="Asia/Shanghai",
        weekly_hours={str(day): hours for day in range(5)},
    )
    calendar_id = calendar.calendar.id
    for name, kind, priority, first, resolve in (
        ("标准 Standard", None, None, 4 * 3600, 3 * 8 * 3600),
        ("投诉 Complaints", "complaint", None, 2 * 3600, 2 * 8 * 3600),
        ("紧急 Urgent", None, "urgent", 1800, 4 * 3600),
    ):
        await sla.create_policy(
            db,
            system,
            {
                "name": name,
                "work_order_type": kind,
                "priority": priority,
                "calendar_id": calendar_id,
                "first_response_seconds": first,
                "resolution_seconds": resolve,
                "warn_before_seconds": 1800,
            },
        )
    reason_ids: dict[str, int] = {}
    for code, name, parent in DEMO_REASONS:
        node = await interactions.create_reason(
            db, system, code=code, name=name, parent_id=reason_ids.get(parent) if parent else None
        )
        reason_ids[code] = node.reason.id
    made = []
    for external_id, name, phone, email, language, attributes in DEMO_CUSTOMERS:
        made.append(
            await customers.create_customer(
                db,
                system,
                display_name=name,
                external_id=external_id,
                language=language,
                attributes=attributes,
                identities=[customers.NewIdentity("phone", phone), customers.NewIdentity("email", email)],
            )
        )
    for customer, (kind, priority, title) in zip(
        made,
        (
            ("fault", "high", "宽带频繁掉线 Broadband keeps dropping"),
            ("complaint", "normal", "信用卡年费重复扣取 Annual fee charged twice"),
            ("inquiry", "normal", "Claim status for trip delay"),
        ),
        strict=True,
    ):
        await tickets.create_work_order(
            db,
            system,
            WorkOrderCreate(
                type=kind, priority=priority, title=title, customer_id=customer.id, team_id=front, assignee_id=agent_id
            ),
        )
    await macros.create_macro(
        db,
        system,
        name="致歉并跟进 Apology and follow-up",
        scope="shared",
        team_id=None,
        actions={},
        body="{{customer.name}}您好，关于工单 {{work_order.number}}，我们已在处理中，将尽快给您答复。——{{agent.name}}",
    )


DEMO_QUEUES = (
    # code, name, channel, language, skills (name -> minimum), members, extra settings
    (
        "cn-phone",
        "中文热线 Chinese line",
        "phone",
        "zh-CN",
        {"账户与登录 Accounts": 3},
        ("agent", "agent2"),
        {
            "bullseye": [{"after_seconds": 30, "proficiency_drop": 1}, {"after_seconds": 90, "any_member": True}],
            "sticky_seconds": 120,
            "after_contact_seconds": 30,
            "max_wait_seconds": 600,
            "max_wait_action": "callback",
        },
    ),
    ("cn-chat", "在线客服 Web chat", "chat", "zh-CN", {}, ("agent", "agent2"), {"sticky_seconds": 600}),
    (
        "en-phone",
        "English line",
        "phone",
        "en",
        {"银行卡 Cards": 3},
        ("agent2",),
        {"sl_target_percent": 80, "sl_threshold_seconds": 30, "after_contact_seconds": 30},
    ),
    ("email", "邮件 Email", "email", None, {}, ("agent", "agent2"), {"sl_threshold_seconds": 14400}),
)


async def load_routing_demo(db: AsyncSession, teams: dict[str, Team], skills: dict[str, Skill]) -> None:
    """Queues for phone, chat and email with skills and members, and the front line's capacity profile."""
    from kefu.core.policy import Principal
    from kefu.routing import queues
    from kefu.routing.models import RoutingQueue

    if await db.scalar(select(RoutingQueue.id).where(RoutingQueue.code == "cn-phone")) is not None:
        return
    admin_id = await db.scalar(select(User.id).where(User.username == "admin"))
    system = Principal(user_id=admin_id, username="demo", roles=frozenset({"admin"}), via="session")
    users = {u.username: u.id for u in (await db.scalars(select(User))).all()}
    for code, name, channel, language, needs, members, extra in DEMO_QUEUES:
        queue = await queues.create_queue(
            db,
            system,
            {
                "code": code,
                "name": name,
                "channel": channel,
                "language": language,
                "skills": [{"skill_id": skills[n].id, "min_proficiency": p} for n, p in needs.items()],
                **extra,
            },
        )
        await queues.set_members(db, system, queue.queue.id, [users[m] for m in members])
    profile = await queues.create_profile(db, system, {"name": "标准 Standard", "voice": 1, "chat": 3, "email": 5})
    await queues.assign_profile(db, system, team_id=teams["一线客服 Front line"].id, profile_id=profile.profile.id)
