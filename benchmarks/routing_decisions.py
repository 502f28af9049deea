"""Routing decisions per second and the latency of one decision, with 1,000 agents and 10,000 waiting contacts.

    .venv/bin/python benchmarks/routing_decisions.py [--database sqlite|postgresql|both] [--agents 1000]
                                                     [--waiting 10000] [--decisions 400] [--concurrency 1]

One process, on a fresh database per backend, calling the routing service directly (no HTTP). Set-up:
half the agents serve two "backlog" phone queues, half serve two "arrival" phone queues (each agent one
to three skills at proficiency 1-5, capacity one call); every agent's routing state is made by the real
service (``set_presence`` to a break). The 10,000 waiting contacts are bulk-inserted into the backlog
queues (interactions and routing entries, waits spread over the last ten minutes, priorities 0-2); they
stay in the database for both measurements.

(a) ``agent_free``: backlog agents come back from their break (``set_presence`` available, with routing
    held back: not timed); then one decision = one transaction running ``route_agent`` for one of them:
    the best of the 10,000 waiting is chosen and claimed, the offer written, the transaction committed.
(b) ``contact_arrives``: arrival agents are all available (many idle); contacts are recorded first (the
    channel's ``create_interaction``: not timed); then one decision = one transaction running ``enqueue``
    (the routing entry, then ``route_contact`` over the queue's members, the claim and the offer) and the
    commit. Each decision takes one agent, so the idle pool shrinks from half the agents to half minus
    ``decisions``.

Before each measurement the database is vacuumed and analyzed (``--stale-statistics``: not), as autovacuum does within
a minute of so many presence changes in a running centre: the planner then knows how many agents are
available, not the picture of the load, when all were on a break.

Latency is measured per transaction (wall clock, commit included) and, inside it, for the routing call
alone. With ``--concurrency N`` (PostgreSQL), N tasks in this one process run decisions at once, each with
its own session and connection; decisions/s is then the aggregate. SQL statements per decision are
counted. Prints one JSON document; target on PostgreSQL, one process: >= 500 decisions/s, p99 <= 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import random
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import event, func, insert, select

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_support import fresh_database, percentile, postgres_cpu_seconds  # noqa: E402

from kefu.core.audit import Actor  # noqa: E402
from kefu.core.policy import Principal  # noqa: E402
from kefu.db.base import utcnow  # noqa: E402
from kefu.db.engine import make_engine, make_session_factory  # noqa: E402
from kefu.db.migrate import upgrade  # noqa: E402
from kefu.identity import service as identity  # noqa: E402
from kefu.identity.models import AgentSkill, User  # noqa: E402
from kefu.interactions import service as interactions  # noqa: E402
from kefu.interactions.models import Interaction  # noqa: E402
from kefu.routing import service as routing  # noqa: E402
from kefu.routing.models import EntryState, QueueMember, QueueSkill, RoutingEntry, RoutingQueue  # noqa: E402

TARGET_RATE = 500
TARGET_P99_MS = 50
SYSTEM_ACTOR = Actor.system("bench")
SYSTEM = Principal(user_id=None, username="bench", roles=frozenset({"admin"}), via="session")


def _agent(user_id: int) -> Principal:
    return Principal(user_id=user_id, username=f"a{user_id}", roles=frozenset({"agent"}), via="session")


class StatementCounter:
    """SQL statements run by the engine (all tasks together)."""

    def __init__(self, engine: Any) -> None:
        self.count = 0
        self.backend = engine.dialect.name
        event.listen(engine.sync_engine, "before_cursor_execute", self._seen)

    def _seen(self, *_: Any) -> None:
        self.count += 1


async def _setup(factory: Any, agents: int, waiting: int, rng: random.Random) -> dict[str, Any]:
    async with factory() as db, db.begin():
        skills = [(await identity.create_skill(db, SYSTEM_ACTOR, name=f"bench-{n}")).id for n in range(4)]
        queues = {}
        for name, needs in (
            ("backlog-1", {skills[0]: 2}),
            ("backlog-2", {skills[1]: 1}),
            ("arrival-1", {skills[2]: 2}),
            ("arrival-2", {skills[3]: 1}),
        ):
            queue = RoutingQueue(code=name, name=name, channel="phone", offer_timeout_seconds=30)
            db.add(queue)
            await db.flush()
            for skill_id, level in needs.items():
                db.add(QueueSkill(queue_id=queue.id, skill_id=skill_id, min_proficiency=level))
            queues[name] = queue.id
    # Users are made in bulk (administration is not measured); skills, memberships too.
    now = utcnow()
    async with factory() as db, db.begin():
        await db.execute(
            insert(User),
            [
                {
                    "username": f"bench{n:05d}",
                    "display_name": f"坐席 {n}",
                    "is_active": True,
                    "locale": "zh_CN",
                    "time_zone": "Asia/Shanghai",
                }
                for n in range(agents)
            ],
        )
        ids = list((await db.scalars(select(User.id).where(User.username.like("bench%")).order_by(User.id))).all())
        skill_rows, member_rows = [], []
        half = len(ids) // 2
        for n, user_id in enumerate(ids):
            pair = (0, 1) if n < half else (2, 3)
            own = {skills[pair[0]]: rng.randint(1, 5), skills[pair[1]]: rng.randint(1, 5)}
            skill_rows += [{"user_id": user_id, "skill_id": s, "proficiency": p} for s, p in own.items()]
            names = ("backlog-1", "backlog-2") if n < half else ("arrival-1", "arrival-2")
            member_rows += [{"queue_id": queues[q], "user_id": user_id} for q in names]
        await db.execute(insert(AgentSkill), skill_rows)
        await db.execute(insert(QueueMember), member_rows)
        await routing.refresh_member_ranks(db)  # what adding members through the service does
    # Every agent's routing state through the service: on a break for now.
    for user_id in ids:
        async with factory() as db, db.begin():
            await routing.set_presence(db, _agent(user_id), user_id, "break", reason="meeting")
    async with factory() as db, db.begin():
        await db.execute(
            insert(Interaction),
            [
                {
                    "channel": "phone",
                    "direction": "inbound",
                    "state": "queued",
                    "external_id": f"bench-{n}",
                    "arrived_at": now - timedelta(seconds=600 - 600 * n / waiting),
                    "attributes": {},
                }
                for n in range(waiting)
            ],
        )
        made = (
            await db.execute(
                select(Interaction.id, Interaction.arrived_at).where(Interaction.external_id.like("bench-%"))
            )
        ).all()
        rows = []
        for interaction_id, arrived in made:
            queue = queues["backlog-1"] if interaction_id % 2 else queues["backlog-2"]
            priority = rng.choice((0, 0, 0, 1, 2))
            rows.append(
                {
                    "interaction_id": interaction_id,
                    "queue_id": queue,
                    "channel_class": "voice",
                    "state": EntryState.waiting,
                    "priority": priority,
                    "priority_order": -priority,
                    "entered_at": arrived,
                    "waiting_since": arrived,
                    "queue_entered_at": arrived,
                    "excluded_agents": [],
                    "review_at": None,
                }
            )
        await db.execute(insert(RoutingEntry), rows)
        await db.execute(
            Interaction.__table__.update()
            .where(Interaction.external_id.like("bench-%"))
            .values(queued_at=Interaction.arrived_at)
        )
    return {"agents": ids, "half": len(ids) // 2, "queues": queues}


class CpuMeter:
    """CPU time per decision: of this process (Python, SQLAlchemy, the driver) and, when the database is a
    local PostgreSQL, of its server processes. Tells where a decision's time goes when both share the cores."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.process = time.process_time()
        self.server = postgres_cpu_seconds() if backend == "postgresql" else None

    def per_decision_ms(self, decisions: int) -> dict[str, float | None]:
        process = (time.process_time() - self.process) * 1000 / decisions
        server_now = postgres_cpu_seconds() if self.server is not None else None
        server = None if server_now is None else (server_now - self.server) * 1000 / decisions
        return {"this_process": round(process, 2), "database_server": None if server is None else round(server, 2)}


def _summary(
    latencies: list[float], routing_part: list[float], seconds: float, statements: int, cpu: CpuMeter
) -> dict[str, Any]:
    latencies, routing_part = sorted(latencies), sorted(routing_part)

    def ms(values: list[float], fraction: float) -> float:
        return round(percentile(values, fraction) * 1000, 2)

    n = len(latencies)
    return {
        "decisions": n,
        "decisions_per_second": round(n / seconds, 1),
        "transaction_ms": {
            "p50": ms(latencies, 0.5),
            "p95": ms(latencies, 0.95),
            "p99": ms(latencies, 0.99),
            "max": round(latencies[-1] * 1000, 2),
        },
        "routing_call_ms": {"p50": ms(routing_part, 0.5), "p95": ms(routing_part, 0.95), "p99": ms(routing_part, 0.99)},
        "sql_statements_per_decision": round(statements / n, 1),
        "cpu_ms_per_decision": cpu.per_decision_ms(n),
    }


async def _run_tasks(jobs: list[Any], concurrency: int) -> None:
    queue: asyncio.Queue = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)

    async def runner() -> None:
        while not queue.empty():
            await queue.get_nowait()()

    await asyncio.gather(*(runner() for _ in range(concurrency)))


async def _agent_free(
    factory: Any, counter: StatementCounter, agents: list[int], concurrency: int, analyze_with: Any | None
) -> dict[str, Any]:
    """The agents come back from their break first (with routing held back, untimed); then each decision
    is one transaction: ``route_agent`` for one of them (the best of the 10,000 waiting) + commit."""
    real_route_agent = routing.route_agent

    async def hold_back(*_args: Any, **_kwargs: Any) -> list[Any]:
        return []

    routing.route_agent = hold_back  # type: ignore[assignment]
    try:
        for user_id in agents:
            async with factory() as db, db.begin():
                await routing.set_presence(db, _agent(user_id), user_id, "available")
    finally:
        routing.route_agent = real_route_agent  # type: ignore[assignment]

    if analyze_with is not None:
        await _settle(analyze_with)
    latencies: list[float] = []
    routing_part: list[float] = []
    offers = 0

    async def one(user_id: int) -> None:
        nonlocal offers
        started = time.perf_counter()
        async with factory() as db, db.begin():
            inner = time.perf_counter()
            made = await routing.route_agent(db, user_id)
            routing_part.append(time.perf_counter() - inner)
        latencies.append(time.perf_counter() - started)
        offers += len(made)

    before = counter.count
    cpu = CpuMeter(counter.backend)
    started = time.perf_counter()
    await _run_tasks([lambda u=u: one(u) for u in agents], concurrency)
    elapsed = time.perf_counter() - started
    result = _summary(latencies, routing_part, elapsed, counter.count - before, cpu)
    result["offers_made"] = offers
    return result


async def _contact_arrives(
    factory: Any,
    counter: StatementCounter,
    queues: list[int],
    decisions: int,
    concurrency: int,
    analyze_with: Any | None,
) -> dict[str, Any]:
    """The contacts are recorded first (untimed: that is the channel's work); then each decision is one
    transaction: ``enqueue`` (the entry, then ``route_contact`` over the queue's members) + commit."""
    contacts = []
    for _ in range(decisions):
        async with factory() as db, db.begin():
            view, _ = await interactions.create_interaction(
                db, SYSTEM, interactions.NewInteraction(channel="phone", arrived_at=utcnow() - timedelta(seconds=1))
            )
            contacts.append(view.interaction.id)
    if analyze_with is not None:
        await _settle(analyze_with)
    latencies: list[float] = []
    routing_part: list[float] = []
    offers = 0

    async def one(n: int) -> None:
        nonlocal offers
        queue_id = queues[n % len(queues)]
        started = time.perf_counter()
        async with factory() as db, db.begin():
            inner = time.perf_counter()
            result = await routing.enqueue(db, contacts[n], queue_id, channel="phone", customer_id=None)
            routing_part.append(time.perf_counter() - inner)
        latencies.append(time.perf_counter() - started)
        offers += result.offer is not None

    before = counter.count
    cpu = CpuMeter(counter.backend)
    started = time.perf_counter()
    await _run_tasks([lambda n=n: one(n) for n in range(decisions)], concurrency)
    elapsed = time.perf_counter() - started
    result = _summary(latencies, routing_part, elapsed, counter.count - before, cpu)
    result["offers_made"] = offers
    return result


async def _settle(engine: Any) -> None:
    """What a database in service has: planner statistics and, on PostgreSQL, the visibility map
    (autovacuum does both within a minute of a load or of many changes; without them the first queries
    plan for empty tables or for presences long gone, and index-only scans visit the heap)."""
    async with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.exec_driver_sql("VACUUM ANALYZE")
        else:
            await conn.exec_driver_sql("ANALYZE")
            await conn.commit()


async def bench(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(5)
    async with fresh_database(backend) as (url, _data_dir):
        await asyncio.to_thread(upgrade, url)
        engine = make_engine(url)
        factory = make_session_factory(engine)
        try:
            t0 = time.perf_counter()
            world = await _setup(factory, args.agents, args.waiting, rng)
            await _settle(engine)
            gc.freeze()  # as the app does at the end of its start (kefu/app.py)
            setup_seconds = time.perf_counter() - t0
            counter = StatementCounter(engine)
            concurrency = args.concurrency if backend == "postgresql" else 1
            backlog_agents = world["agents"][: world["half"]][: args.decisions]
            # The engine to analyze the database with before each measurement, or none.
            fresh = None if args.stale_statistics else engine
            agent_free = await _agent_free(factory, counter, backlog_agents, concurrency, fresh)
            async with factory() as db:
                still_waiting = await db.scalar(select(func.count()).where(RoutingEntry.state == EntryState.waiting))
            # The arrival agents become available (nothing waits in their queues: no decision yet).
            for user_id in world["agents"][world["half"] :]:
                async with factory() as db, db.begin():
                    await routing.set_presence(db, _agent(user_id), user_id, "available")
            arrivals = [world["queues"]["arrival-1"], world["queues"]["arrival-2"]]
            contact_arrives = await _contact_arrives(factory, counter, arrivals, args.decisions, concurrency, fresh)
        finally:
            gc.unfreeze()
            await engine.dispose()
    return {
        "database": backend,
        "agents": args.agents,
        "waiting_contacts": args.waiting,
        "waiting_after_agent_free": still_waiting,
        "concurrency_in_process": concurrency,
        "planner_statistics": "stale" if args.stale_statistics else "fresh",
        "setup_seconds": round(setup_seconds, 1),
        "agent_free": agent_free,
        "contact_arrives": contact_arrives,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--waiting", type=int, default=10000)
    parser.add_argument("--decisions", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument(
        "--stale-statistics",
        action="store_true",
        help="no ANALYZE before each measurement: the planner sees every agent on a break, as at the load",
    )
    args = parser.parse_args()
    backends = ("sqlite", "postgresql") if args.database == "both" else (args.database,)
    results = [await bench(b, args) for b in backends]
    for result in results:
        if result["database"] == "postgresql":
            worst = [result[k] for k in ("agent_free", "contact_arrives")]
            result["target_met"] = all(
                r["decisions_per_second"] >= TARGET_RATE and r["transaction_ms"]["p99"] <= TARGET_P99_MS for r in worst
            )
    print(
        json.dumps(
            {
                "benchmark": "routing_decisions",
                "target": {"decisions_per_second": TARGET_RATE, "p99_ms": TARGET_P99_MS, "database": "postgresql"},
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "results": results,
            },
            indent=2,
            ensure_ascii=False,
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
