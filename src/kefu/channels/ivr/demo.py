"""Demo IVR: a Chinese-first hotline on the demo business calendar.

Needs the main demo data first (``kefu.demo.load_demo``: the queues ``cn-phone`` and ``en-phone`` and
the calendar "工作日 Weekdays (Beijing)"). ``seed_demo`` adds a public knowledge article about bills
and the flow ``demo-hotline`` (published, the default flow, bound to 400-800-8000)::

    hours ── open ──> who (customer by caller) ──> main menu
      │                 1 账单 billing: the article read out, then 1 again / 3 agent / * menu
      │                 2 工单 work-order status by number (typed, then #)
      │                 3 人工 -> queue cn-phone   9 English -> queue en-phone   0 callback
      └─ closed ──> 0 callback / 1 billing answer

Try it in the simulator on /ivr/flows (caller 13812345678 is the demo customer 陈先生, whose work
order number is shown on /work-orders), or from the PBX through the CTI channel.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from kefu.core.policy import Principal

from . import service
from .models import IvrFlow

FLOW_CODE = "demo-hotline"
DEMO_NUMBER = "4008008000"
CALENDAR = "工作日 Weekdays (Beijing)"
ARTICLE_EXTERNAL_ID = "demo-ivr-billing"
ARTICLE_TITLE = "如何查询和理解月度账单"
ARTICLE_BODY = """\
**月度账单**在每月 5 日前生成。您可以登录网上营业厅或手机 App，在“我的账单”中查看明细。

- 账单金额包含月租、超出套餐的用量和增值业务费用。
- 如对扣费有疑问，可在账单生成后 30 天内提出异议，我们会在 3 个工作日内处理。
- 自动扣款失败时，系统会短信提醒您，请在 7 日内补缴，以免影响使用。
"""

FLOW_SOURCE = """\
# 演示热线 Demo hotline: Chinese first, English on 9.
language: zh-CN
description: 演示热线 Demo hotline
start: hours
nodes:
  hours:
    type: hours
    calendar: "{calendar}"
    open: who
    closed: closed

  closed:
    type: menu
    prompt: "您好，现在是非工作时间，人工服务时间为工作日 9 点至 18 点。预约回电请按0，收听账单说明请按1。"
    options: {{"0": callback, "1": billing}}
    max_retries: 1
    fallback: goodbye

  who:
    type: lookup
    kind: customer_by_caller
    found: hello_customer
    not_found: main

  hello_customer:
    type: play
    text: "{{customer_name}}，您好！"
    next: main

  main:
    type: menu
    prompt: "欢迎致电客服热线。账单问题请按1，查询工单进度请按2，人工服务请按3，For English, press 9，预约回电请按0。"
    options: {{"1": billing, "2": ask_number, "3": agent, "9": english, "0": callback}}
    invalid_prompt: "输入有误。"
    timeout_prompt: "没有收到您的输入。"
    max_retries: 2
    timeout_seconds: 6
    fallback: agent

  billing:
    type: answer
    article: {article_id}
    intro: "账单说明："
    next: after_billing
    not_found: agent

  after_billing:
    type: menu
    prompt: "重听请按1，人工服务请按3，返回主菜单请按星号键。"
    options: {{"1": billing, "3": agent, "*": main}}
    max_retries: 1
    fallback: goodbye

  ask_number:
    type: collect
    prompt: "请输入工单号中的数字，以井号键结束。"
    into: work_order_input
    min_digits: 1
    max_digits: 12
    terminator: "#"
    max_retries: 2
    next: status
    fallback: agent

  status:
    type: lookup
    kind: work_order_status
    number: work_order_input
    found: status_found
    not_found: status_missing

  status_found:
    type: play
    text: "您的工单 {{work_order_number}} 当前状态：{{work_order_status}}。"
    next: after_status

  status_missing:
    type: play
    text: "没有找到与您的来电号码对应的这个工单。"
    next: after_status

  after_status:
    type: menu
    prompt: "查询其他工单请按2，人工服务请按3，结束通话请按井号键。"
    options: {{"2": ask_number, "3": agent, "#": goodbye}}
    max_retries: 1
    fallback: goodbye

  agent:
    type: queue
    queue: cn-phone
    text: "正在为您转接人工服务，请稍候。"

  english:
    type: queue
    language: en
    queue: en-phone
    text: "Connecting you to our English service line. Please hold."

  callback:
    type: callback
    text: "已为您登记回电请求，我们会在工作时间尽快给您回电。再见。"

  goodbye:
    type: hangup
    text: "感谢您的来电，再见。"
"""


async def _billing_article(db: AsyncSession, settings: Any, principal: Principal) -> int:
    from kefu.knowledge import service as knowledge
    from kefu.knowledge.models import Article

    found = await db.scalar(select(Article.id).where(Article.external_id == ARTICLE_EXTERNAL_ID))
    if found is not None:
        return found
    view = await knowledge.create_article(
        db,
        principal,
        knowledge.Content(
            title=ARTICLE_TITLE,
            body_markdown=ARTICLE_BODY,
            similar_questions=["账单怎么看", "话费账单", "扣费异议"],
            tags=["账单", "billing"],
        ),
        knowledge.Placement(kind="faq", audience="public", language="zh-CN"),
        external_id=ARTICLE_EXTERNAL_ID,
    )
    await knowledge.publish(db, principal, settings, view.article.id)
    return view.article.id


async def seed_demo(db: AsyncSession, settings: Any, principal: Principal | None = None) -> IvrFlow | None:
    """Idempotent: an existing demo flow is left alone. Returns the flow, or None when the main demo data
    (queues, calendar) is missing. Run it inside a transaction after ``kefu.demo.load_demo``."""
    from kefu.identity.models import User
    from kefu.routing.models import RoutingQueue
    from kefu.tickets.models import BusinessCalendar

    existing = await db.scalar(select(IvrFlow).where(IvrFlow.code == FLOW_CODE))
    if existing is not None:
        return existing
    codes = set(await db.scalars(select(RoutingQueue.code).where(RoutingQueue.code.in_(("cn-phone", "en-phone")))))
    if codes != {"cn-phone", "en-phone"}:
        return None
    if await db.scalar(select(BusinessCalendar.id).where(BusinessCalendar.name == CALENDAR)) is None:
        return None
    if principal is None:
        admin_id = await db.scalar(select(User.id).where(User.username == "admin"))
        principal = Principal(user_id=admin_id, username="demo", roles=frozenset({"admin"}), via="session")
    article_id = await _billing_article(db, settings, principal)
    source = FLOW_SOURCE.format(calendar=CALENDAR, article_id=article_id)
    view = await service.create_flow(
        db,
        principal,
        settings,
        {
            "code": FLOW_CODE,
            "name": "演示热线 Demo hotline",
            "source": source,
            "numbers": [DEMO_NUMBER],
            "is_default": True,
            "publish": True,
            "note": "demo",
        },
    )
    return view.flow
