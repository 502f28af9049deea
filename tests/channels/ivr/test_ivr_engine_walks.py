"""The engine walking calls: menus, retries and fallbacks, collection and lookups, knowledge answers,
opening hours with a frozen clock, callbacks made once, and calls keeping their flow version."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from ivr_support import (
    SYSTEM,
    advance,
    call,
    make_article,
    make_calendar,
    make_customer,
    make_flow,
    make_queue,
    make_work_order,
    phone,
    start,
    through_plays,
)
from sqlalchemy import func, select

from conftest import is_postgres
from kefu.channels.ivr import engine, service
from kefu.channels.ivr.models import IvrCallback
from kefu.core.errors import Invalid, NotFound
from kefu.tickets.models import WorkOrder, WorkOrderTag

# Monday 2026-11-30 10:00 and Sunday 2026-11-29 10:00 in Shanghai (UTC+8).
MONDAY_10 = datetime(2026, 11, 30, 2, 0, tzinfo=UTC)
SUNDAY_10 = datetime(2026, 11, 29, 2, 0, tzinfo=UTC)
MONDAY_20 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def menu_flow(queue: str, *, prompt: str = "账单请按1，人工请按3。", retries: int = 2) -> str:
    return f"""\
language: zh-CN
start: main
nodes:
  main:
    type: menu
    prompt: "{prompt}"
    options: {{"1": billing, "3": agent, "#": main}}
    invalid_prompt: "输入有误。"
    max_retries: {retries}
    timeout_seconds: 4
    fallback: bye
  billing:
    type: play
    text: "账单每月5日生成。"
    next: main
  agent:
    type: queue
    queue: {queue}
    priority: 5
    text: "正在为您转接。"
  bye:
    type: hangup
    text: "再见。"
"""


async def test_menu_walk_to_a_queue(app) -> None:  # noqa: ANN001
    queue = await make_queue(app)
    view = await make_flow(app, menu_flow(queue))
    c = call(phone())
    step = await start(app, view.flow.code, c)
    assert step.instruction == {
        "action": "collect",
        "text": "账单请按1，人工请按3。",
        "language": "zh-CN",
        "min_digits": 1,
        "max_digits": 1,
        "timeout_seconds": 4,
        "terminator": "",
    }
    assert not step.done and step.state["node"] == "main" and step.state["version_id"] == view.live.id
    step = await advance(app, c, step.state, "1")
    assert step.instruction == {"action": "play", "text": "账单每月5日生成。", "language": "zh-CN", "then": "advance"}
    step = await advance(app, c, step.state, None)
    assert step.instruction["action"] == "collect" and step.state["node"] == "main"
    step = await advance(app, c, step.state, "3")
    assert step.done and step.queue == queue and not step.callback
    assert step.instruction["action"] == "queue" and step.instruction["priority"] == 5
    assert step.instruction["text"] == "正在为您转接。"


async def test_state_is_json_and_not_changed_by_advance(app) -> None:  # noqa: ANN001
    import json

    view = await make_flow(app, menu_flow(await make_queue(app)))
    c = call(phone())
    first = await start(app, view.flow.code, c)
    frozen = json.loads(json.dumps(first.state))
    again = await advance(app, c, frozen, "1")
    assert frozen == json.loads(json.dumps(first.state))  # the caller's copy is untouched
    assert again.state is not frozen and again.state["node"] == "billing"


async def test_retries_then_fallback(app) -> None:  # noqa: ANN001
    view = await make_flow(app, menu_flow(await make_queue(app)))
    c = call(phone())
    step = await start(app, view.flow.code, c)
    step = await advance(app, c, step.state, "7")
    assert step.instruction["text"] == "输入有误。 账单请按1，人工请按3。"
    assert step.state["retries"] == 1
    step = await advance(app, c, step.state, None)  # a timeout: the default timeout text in the flow's language
    assert step.instruction["action"] == "collect" and step.state["retries"] == 2
    assert step.instruction["text"].endswith("账单请按1，人工请按3。")
    step = await advance(app, c, step.state, "xyz")  # not DTMF at all: invalid, never stored
    assert step.done and step.instruction == {"action": "hangup", "text": "再见。", "language": "zh-CN"}


async def test_looping_caller_is_ended_after_the_step_limit(app) -> None:  # noqa: ANN001
    view = await make_flow(app, menu_flow(await make_queue(app)))
    settings = app.state.settings.model_copy(update={"ivr_max_steps_per_call": 4})
    c = call(phone())
    async with app.state.session_factory() as db, db.begin():
        step = await engine.start(db, settings, view.flow.code, c)
        for _ in range(4):
            assert not step.done
            step = await engine.advance(db, settings, c, step.state, "#")  # '#' goes back to the menu
    assert step.done and step.instruction["action"] == "hangup"


STATUS_FLOW = """\
language: en
start: who
nodes:
  who: {{type: lookup, kind: customer_by_caller, found: hello, not_found: ask}}
  hello: {{type: play, text: "Hello {{customer_name}}.", next: ask}}
  ask:
    type: collect
    prompt: "Enter your work order number, then hash."
    into: wo
    min_digits: 1
    max_digits: 12
    next: status
    fallback: agent
  status: {{type: lookup, kind: work_order_status, number: wo, found: said, not_found: missing}}
  said: {{type: play, text: "Work order {{work_order_number}} is {{work_order_status}}.", next: bye}}
  missing: {{type: play, text: "We found no such work order for your number.", next: bye}}
  agent: {{type: queue, queue: {queue}}}
  bye: {{type: hangup, text: "Goodbye."}}
"""


async def test_collect_lookup_and_status_readout(app) -> None:  # noqa: ANN001
    queue = await make_queue(app)
    view = await make_flow(app, STATUS_FLOW.format(queue=queue))
    number = phone()
    customer_id = await make_customer(app, "Mr Chen", number)
    work_order = await make_work_order(app, customer_id)
    c = call(number)
    step = await start(app, view.flow.code, c)
    assert step.instruction["text"] == "Hello Mr Chen." and step.state["vars"]["customer_id"] == customer_id
    step = await advance(app, c, step.state, None)
    assert step.instruction["action"] == "collect" and step.instruction["terminator"] == "#"
    assert step.instruction["max_digits"] == 12
    step = await advance(app, c, step.state, f"{work_order.id}#")
    assert step.instruction["text"] == f"Work order {work_order.number} is received."
    assert step.state["vars"]["wo"] == str(work_order.id)
    step = await advance(app, c, step.state, None)
    assert step.done and step.instruction["text"] == "Goodbye."


async def test_status_is_told_only_to_the_customer_and_never_for_restricted_orders(app) -> None:  # noqa: ANN001
    view = await make_flow(app, STATUS_FLOW.format(queue=await make_queue(app)))
    owner = phone()
    customer_id = await make_customer(app, "Owner", owner)
    open_order = await make_work_order(app, customer_id)
    restricted = await make_work_order(app, customer_id, restricted=True)

    async def told(caller: str | None, digits: str) -> str:
        c = call(caller)
        step = await through_plays(app, c, await start(app, view.flow.code, c))
        step = await advance(app, c, step.state, digits)
        return step.instruction["text"]

    assert await told(phone(), f"{open_order.id}#") == "We found no such work order for your number."
    assert await told(None, f"{open_order.id}#") == "We found no such work order for your number."
    assert await told(owner, f"{restricted.id}#") == "We found no such work order for your number."
    assert await told(owner, "999999999999#") == "We found no such work order for your number."
    assert (await told(owner, f"{open_order.id}#")).startswith(f"Work order {open_order.number}")


async def test_collect_retries_on_too_short_and_pattern(app) -> None:  # noqa: ANN001
    queue = await make_queue(app)
    source = f"""\
start: ask
nodes:
  ask:
    type: collect
    prompt: "请输入6位验证码"
    into: code
    min_digits: 6
    max_digits: 6
    pattern: "[1-9][0-9]{{5}}"
    max_retries: 1
    next: ok
    fallback: agent
  ok: {{type: hangup, text: "验证码 {{code}} 已收到"}}
  agent: {{type: queue, queue: {queue}}}
"""
    view = await make_flow(app, source)
    c = call(phone())
    step = await start(app, view.flow.code, c)
    step = await advance(app, c, step.state, "012345#")  # six digits, but the pattern refuses a leading 0
    assert step.instruction["action"] == "collect" and step.state["retries"] == 1
    step = await advance(app, c, step.state, "123456")
    assert step.done and step.instruction["text"] == "验证码 123456 已收到"
    c = call(phone())
    step = await start(app, view.flow.code, c)
    step = await advance(app, c, step.state, "12#")
    step = await advance(app, c, step.state, "")  # nothing typed twice: the fallback
    assert step.done and step.queue == queue


ANSWER_FLOW = """\
language: zh-CN
start: a
nodes:
  a: {{type: answer, {what}, intro: "为您解答：", next: bye, not_found: agent, max_chars: {chars}}}
  agent: {{type: queue, queue: {queue}, text: "转人工。"}}
  bye: {{type: hangup}}
"""


async def test_article_answer_is_plain_capped_text(app) -> None:  # noqa: ANN001
    queue = await make_queue(app)
    body = (
        "**账单**每月5日生成。<script>alert(1)</script>\n\n"
        "- 扣费异议请在30天内提出。\n- [网上营业厅](https://example.com)可查明细。\n\n" + "更多说明。" * 200
    )
    article = await make_article(app, title="如何查询账单", body=body)
    view = await make_flow(app, ANSWER_FLOW.format(what=f"article: {article}", chars=60, queue=queue))
    c = call(phone())
    step = await start(app, view.flow.code, c)
    text = step.instruction["text"]
    assert step.instruction["action"] == "play"
    assert text.startswith("为您解答： 账单每月5日生成。")
    assert "<" not in text and "*" not in text and "alert" not in text and "https" not in text
    assert len(text) <= len("为您解答： ") + 60 and text.endswith("。")
    assert step.state["vars"]["article_title"] == "如何查询账单"


async def test_answer_by_query_and_not_found_branch(app, monkeypatch) -> None:  # noqa: ANN001
    queue = await make_queue(app)
    title = f"停机保号怎么办理 {phone()}"
    await make_article(app, title=title, body="停机保号可在营业厅办理，每月收取5元。")
    monkeypatch.setattr(engine, "_knowledge_index", None)  # the knowledge service's title match
    view = await make_flow(app, ANSWER_FLOW.format(what=f'query: "{title}"', chars=200, queue=queue))
    c = call(phone())
    step = await start(app, view.flow.code, c)
    assert step.instruction["text"] == "为您解答： 停机保号可在营业厅办理，每月收取5元。"

    missing = await make_flow(app, ANSWER_FLOW.format(what='query: "完全不存在的问题xyz"', chars=200, queue=queue))
    step = await start(app, missing.flow.code, call(phone()))
    assert step.done and step.queue == queue and step.instruction["text"] == "转人工。"


async def test_answer_from_an_article_no_longer_public_takes_not_found(app) -> None:  # noqa: ANN001
    from kefu.knowledge import service as knowledge

    queue = await make_queue(app)
    article = await make_article(app, title="临时公告", body="本周六系统维护。")
    view = await make_flow(app, ANSWER_FLOW.format(what=f"article: {article}", chars=200, queue=queue))
    async with app.state.session_factory() as db, db.begin():
        await knowledge.archive(db, SYSTEM, article)
    step = await start(app, view.flow.code, call(phone()))
    assert step.done and step.queue == queue


HOURS_FLOW = """\
start: h
nodes:
  h: {{type: hours, calendar: "{calendar}", open: open_q, closed: closed}}
  open_q: {{type: queue, queue: {queue}}}
  closed: {{type: hangup, text: "现在是非工作时间。"}}
"""


@pytest.mark.parametrize(("moment", "is_open"), [(MONDAY_10, True), (SUNDAY_10, False), (MONDAY_20, False)])
async def test_opening_hours_with_a_frozen_clock(app, moment: datetime, is_open: bool) -> None:  # noqa: ANN001
    queue = await make_queue(app)
    _calendar_id, name = await make_calendar(app)
    view = await make_flow(app, HOURS_FLOW.format(calendar=name, queue=queue))
    step = await start(app, view.flow.code, call(phone(), now=moment))
    assert step.done
    assert (step.queue == queue) is is_open
    if not is_open:
        assert step.instruction == {"action": "hangup", "text": "现在是非工作时间。", "language": "zh-CN"}


CALLBACK_FLOW = """\
start: main
nodes:
  main: {type: menu, prompt: "预约回电请按0", options: {"0": cb}, fallback: bye}
  cb: {type: callback, text: "已为您登记回电，再见。", work_order_type: request}
  bye: {type: hangup}
"""


async def test_callback_makes_one_work_order_even_when_advanced_twice(app) -> None:  # noqa: ANN001
    number = phone()
    customer_id = await make_customer(app, "林女士", number)
    view = await make_flow(app, CALLBACK_FLOW)
    c = call(number, "4008001234")
    menu = await start(app, view.flow.code, c)
    first = await advance(app, c, menu.state, "0")
    second = await advance(app, c, menu.state, "0")  # the PBX retried the same step
    again = await advance(app, c, first.state, None)  # and asked once more after the end
    assert first.done and first.callback and first.instruction["action"] == "callback"
    assert first.instruction["text"] == "已为您登记回电，再见。"
    made = first.instruction["work_order_id"]
    assert made is not None
    assert second.instruction["work_order_id"] == made == again.instruction["work_order_id"]
    async with app.state.session_factory() as db:
        rows = await db.scalar(select(func.count()).select_from(IvrCallback).where(IvrCallback.call_id == c.call_id))
        orders = (await db.scalars(select(WorkOrder).where(WorkOrder.customer_id == customer_id))).all()
        tags = set(await db.scalars(select(WorkOrderTag.tag).where(WorkOrderTag.work_order_id == made)))
    assert rows == 1
    assert [o.id for o in orders] == [made]
    assert orders[0].type == "request" and number in orders[0].title
    assert f"call: {c.call_id}" in orders[0].description
    assert tags == {"channel:phone", "ivr:callback"}


async def test_callback_from_an_unknown_number_makes_the_customer(app) -> None:  # noqa: ANN001
    from kefu.customers import service as customers

    number = phone()
    view = await make_flow(app, CALLBACK_FLOW)
    c = call(number)
    step = await advance(app, c, (await start(app, view.flow.code, c)).state, "0")
    async with app.state.session_factory() as db:
        customer = await customers.find_by_identity(db, "phone", number)
        order = await db.get(WorkOrder, step.instruction["work_order_id"])
    assert customer is not None and order.customer_id == customer.id


async def test_a_call_keeps_its_version_when_the_flow_is_republished(app) -> None:  # noqa: ANN001
    queue = await make_queue(app)
    other = await make_queue(app)
    view = await make_flow(app, menu_flow(queue, prompt="旧菜单"))
    c = call(phone())
    old = await start(app, view.flow.code, c)
    async with app.state.session_factory() as db, db.begin():
        await service.update_flow(
            db, SYSTEM, app.state.settings, view.flow.id, {"source": menu_flow(other, prompt="新菜单")}
        )
        await service.publish(db, SYSTEM, app.state.settings, view.flow.id)
    step = await advance(app, c, old.state, "7")
    assert step.instruction["text"].endswith("旧菜单")
    step = await advance(app, c, step.state, "3")
    assert step.queue == queue and step.state["version_id"] == view.live.id
    fresh = await start(app, view.flow.code, call(phone()))
    assert fresh.instruction["text"] == "新菜单" and fresh.state["version_id"] != view.live.id
    fresh = await advance(app, c, fresh.state, "3")
    assert fresh.queue == other


async def test_flow_chosen_by_called_number_and_unknown_flows(app) -> None:  # noqa: ANN001
    queue = await make_queue(app)
    number = "400" + phone()[3:]
    view = await make_flow(app, menu_flow(queue, prompt="号码绑定的流程"), numbers=[f"{number[:3]}-{number[3:]}"])
    assert view.numbers == [number]
    step = await start(app, None, call(phone(), called=number))
    assert step.instruction["text"] == "号码绑定的流程"
    with pytest.raises(NotFound):
        await start(app, "no-such-flow", call(phone()))
    draft_only = await make_flow(app, menu_flow(queue), publish=False)
    with pytest.raises(NotFound):
        await start(app, draft_only.flow.code, call(phone()))


async def test_damaged_state_is_refused(app) -> None:  # noqa: ANN001
    view = await make_flow(app, menu_flow(await make_queue(app)))
    c = call(phone())
    step = await start(app, view.flow.code, c)
    for bad in ({}, {"version_id": "1", "node": "main"}, {**step.state, "node": "nowhere"}, [1]):
        with pytest.raises(Invalid):
            await advance(app, c, bad, "1")  # type: ignore[arg-type]


@pytest.mark.skipif(not is_postgres(), reason="concurrent writers: PostgreSQL row locks (SQLite serialises them)")
async def test_callback_made_once_when_two_retries_race(app) -> None:  # noqa: ANN001
    import asyncio

    number = phone()
    customer_id = await make_customer(app, "并发客户", number)
    view = await make_flow(app, CALLBACK_FLOW)
    c = call(number)
    menu = await start(app, view.flow.code, c)
    first, second = await asyncio.gather(advance(app, c, menu.state, "0"), advance(app, c, menu.state, "0"))
    assert first.instruction["work_order_id"] == second.instruction["work_order_id"] is not None
    async with app.state.session_factory() as db:
        orders = (await db.scalars(select(WorkOrder.id).where(WorkOrder.customer_id == customer_id))).all()
    assert orders == [first.instruction["work_order_id"]]
