"""The demo hotline: seeded on a fresh database of its own after the main demo data (so the shared test
database keeps no default flow), then called."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from kefu.channels.ivr import demo, engine
from kefu.channels.ivr.engine import CallContext
from kefu.db.engine import make_engine, make_session_factory
from kefu.db.migrate import upgrade
from kefu.demo import load_demo
from kefu.settings import Settings

MONDAY_10 = datetime(2026, 11, 30, 2, 0, tzinfo=UTC)  # 10:00 in Beijing
SUNDAY_10 = datetime(2026, 11, 29, 2, 0, tzinfo=UTC)
CHEN = "13812345678"  # the demo customer 陈先生 (138 1234 5678)


@pytest.fixture(scope="module")
async def demo_db(tmp_path_factory: pytest.TempPathFactory) -> Any:
    path: Path = tmp_path_factory.mktemp("ivrdemo") / "demo.db"
    url = f"sqlite+aiosqlite:///{path}"
    await asyncio.to_thread(upgrade, url)
    db_engine = make_engine(url)
    factory = make_session_factory(db_engine)
    settings = Settings(database_url=url, data_dir=path.parent, secret_key="x" * 32, run_worker=False)
    async with factory() as db, db.begin():
        await load_demo(db)
        flow = await demo.seed_demo(db, settings)
    assert flow is not None and flow.is_default
    async with factory() as db, db.begin():
        again = await demo.seed_demo(db, settings)  # idempotent
    assert again is not None and again.id == flow.id
    yield factory, settings
    await db_engine.dispose()


async def _walk(demo_db: Any, inputs: list[str | None], *, now: datetime, caller: str = CHEN) -> list[dict[str, Any]]:
    factory, settings = demo_db
    call = CallContext(call_id=f"demo-{len(inputs)}-{now.isoformat()}", caller=caller, called=demo.DEMO_NUMBER, now=now)
    said = []
    async with factory() as db, db.begin():
        step = await engine.start(db, settings, None, call)
        said.append(step.instruction)
        pending = list(inputs)
        while not step.done:
            if step.instruction["action"] == "play":
                digits = None
            elif pending:
                digits = pending.pop(0)
            else:
                break
            step = await engine.advance(db, settings, call, step.state, digits)
            said.append(step.instruction)
    return said


async def test_demo_greets_the_known_caller_and_reads_the_bill_answer(demo_db: Any) -> None:
    said = await _walk(demo_db, ["1", "3"], now=MONDAY_10)
    assert said[0] == {"action": "play", "text": "陈先生 Mr Chen，您好！", "language": "zh-CN", "then": "advance"}
    assert said[1]["action"] == "collect" and "账单问题请按1" in said[1]["text"]
    assert said[2]["action"] == "play" and said[2]["text"].startswith("账单说明： 月度账单在每月 5 日前生成。")
    assert "**" not in said[2]["text"]
    assert said[-1]["action"] == "queue" and said[-1]["queue"] == "cn-phone"


async def test_demo_work_order_status_and_english(demo_db: Any) -> None:
    from sqlalchemy import select

    from kefu.customers import service as customers
    from kefu.tickets.models import WorkOrder

    factory, _settings = demo_db
    async with factory() as db:
        chen = await customers.find_by_identity(db, "phone", CHEN)
        order = await db.scalar(select(WorkOrder).where(WorkOrder.customer_id == chen.id))
    said = await _walk(demo_db, ["2", f"{order.id}#", "#"], now=MONDAY_10)
    spoken = [s.get("text") for s in said]
    assert f"您的工单 {order.number} 当前状态：" in next(t for t in spoken if t and "您的工单" in t)
    assert said[-1] == {"action": "hangup", "text": "感谢您的来电，再见。", "language": "zh-CN"}

    english = await _walk(demo_db, ["9"], now=MONDAY_10, caller="13900000001")
    assert english[-1]["queue"] == "en-phone" and english[-1]["language"] == "en"


async def test_demo_closed_hours_offer_a_callback(demo_db: Any) -> None:
    said = await _walk(demo_db, ["0"], now=SUNDAY_10, caller="13900000002")
    assert "非工作时间" in said[0]["text"]
    assert said[-1]["action"] == "callback" and said[-1]["work_order_number"].startswith("WO")
