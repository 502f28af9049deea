"""Helpers for IVR tests: queues, calendars, articles, customers and work orders made through their
services, flows made through the IVR service, and a call to walk."""

from __future__ import annotations

import random
import uuid
from typing import Any

from kefu.channels.ivr import engine, service
from kefu.channels.ivr.engine import CallContext, IvrStep
from kefu.core.policy import Principal
from kefu.db.base import utcnow

SYSTEM = Principal(user_id=None, username="ivr-test", roles=frozenset({"admin"}), via="session")


def code(prefix: str = "ivr") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def phone() -> str:
    return "139" + "".join(random.choice("0123456789") for _ in range(8))  # noqa: S311 - test data


async def make_queue(app: Any, **fields: Any) -> str:
    from kefu.routing import queues

    values = {"code": code("q"), "name": "IVR 测试队列", "channel": "phone", **fields}
    async with app.state.session_factory() as db, db.begin():
        view = await queues.create_queue(db, SYSTEM, values)
    return view.queue.code


async def make_calendar(app: Any) -> tuple[int, str]:
    """Monday to Friday 09:00-18:00 in Shanghai."""
    from kefu.tickets import sla

    name = code("cal")
    hours = {str(day): [["09:00", "18:00"]] for day in range(5)}
    async with app.state.session_factory() as db, db.begin():
        made = await sla.create_calendar(db, SYSTEM, name=name, time_zone="Asia/Shanghai", weekly_hours=hours)
    return made.calendar.id, name


async def make_article(app: Any, *, title: str, body: str, audience: str = "public", publish: bool = True) -> int:
    from kefu.knowledge import service as knowledge

    async with app.state.session_factory() as db, db.begin():
        view = await knowledge.create_article(
            db,
            SYSTEM,
            knowledge.Content(title=title, body_markdown=body),
            knowledge.Placement(kind="faq", audience=audience, language="zh-CN"),
        )
        if publish:
            await knowledge.publish(db, SYSTEM, app.state.settings, view.article.id)
    return view.article.id


async def make_customer(app: Any, name: str, number: str) -> int:
    from kefu.customers import service as customers

    async with app.state.session_factory() as db, db.begin():
        customer = await customers.create_customer(
            db, SYSTEM, display_name=name, identities=[customers.NewIdentity("phone", number)]
        )
    return customer.id


async def make_work_order(app: Any, customer_id: int | None, **fields: Any) -> Any:
    from kefu.tickets import service as tickets
    from kefu.tickets.schemas import WorkOrderCreate

    async with app.state.session_factory() as db, db.begin():
        return await tickets.create_work_order(
            db, SYSTEM, WorkOrderCreate(title="宽带故障", customer_id=customer_id, **fields)
        )


async def make_flow(app: Any, source: str, *, publish: bool = True, **fields: Any) -> service.FlowView:
    data = {"code": code("flow"), "name": "测试流程", "source": source, "publish": publish, **fields}
    async with app.state.session_factory() as db, db.begin():
        return await service.create_flow(db, SYSTEM, app.state.settings, data)


def call(caller: str | None = None, called: str | None = None, **kw: Any) -> CallContext:
    return CallContext(call_id=code("call"), caller=caller, called=called, now=kw.pop("now", utcnow()), **kw)


async def start(app: Any, flow_code: str | None, c: CallContext) -> IvrStep:
    async with app.state.session_factory() as db, db.begin():
        return await engine.start(db, app.state.settings, flow_code, c)


async def advance(app: Any, c: CallContext, state: dict[str, Any], digits: str | None) -> IvrStep:
    async with app.state.session_factory() as db, db.begin():
        return await engine.advance(db, app.state.settings, c, state, digits)


async def through_plays(app: Any, c: CallContext, step: IvrStep) -> IvrStep:
    """Advance past play instructions, as the PBX does once it has said them."""
    while step.instruction["action"] == "play":
        step = await advance(app, c, step.state, None)
    return step
