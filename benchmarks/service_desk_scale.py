"""Work-order lists and the customer 360 view on a large PostgreSQL database.

    .venv/bin/python benchmarks/service_desk_scale.py [--interactions 1000000] [--work-orders 200000]
        [--customers 200000] [--requests 200] [--keep]

Creates a PostgreSQL database, migrates it, fills it with SQL set operations (customers with phone
identities, 400 agents in 20 teams, work orders in every status with 5 % restricted, interactions
over a year with reasons and links to work orders), ANALYZEs, starts one ``kefu serve`` process and
times, one request at a time (latency, not throughput), each page an agent or supervisor opens all day:
work-order lists (mine, team, all visible, overdue, filtered, by customer), the customer 360 page, the
interaction timeline and identity lookup. Prints one JSON document with p50/p95/max per page. Target
in issue 4: p95 <= 150 ms. ``--keep`` leaves the database for another run (``--reuse NAME``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import time
import uuid
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_support import (  # noqa: E402
    PASSWORD,
    free_port,
    fresh_database,
    kefu,
    kefu_server,
    percentile,
    pg_admin,
    server_env,
    token_for,
)

AGENTS = 400
TEAMS = 20


def fill_sql(customers: int, work_orders: int, interactions: int) -> list[str]:
    """Set-based inserts: a million rows in seconds, not the hours one API call per row would take."""
    return [
        f"""INSERT INTO teams (name, description, is_active, created_at, updated_at)
            SELECT 'bench-team-' || g, '', true, now(), now() FROM generate_series(1::bigint, {TEAMS}) g""",
        f"""INSERT INTO users (username, display_name, is_active, locale, time_zone, security_stamp,
                               created_at, updated_at)
            SELECT 'bench-agent-' || g, '坐席' || g, true, 'zh_CN', 'Asia/Shanghai', 0, now(), now()
            FROM generate_series(1::bigint, {AGENTS}) g""",
        "INSERT INTO user_roles (user_id, role) SELECT id, 'agent' FROM users WHERE username LIKE 'bench-agent-%'",
        """CREATE TABLE bench_agents AS
            SELECT row_number() OVER (ORDER BY u.id) - 1 AS rn, u.id AS user_id, t.id AS team_id
            FROM users u JOIN teams t ON t.name = 'bench-team-' || (1 + u.id % 20)
            WHERE u.username LIKE 'bench-agent-%'""",
        "INSERT INTO team_members (team_id, user_id, is_lead) SELECT team_id, user_id, false FROM bench_agents",
        """INSERT INTO contact_reasons (code, name, active, position, created_at, updated_at)
            SELECT 'bench-' || g, '原因' || g, true, g, now(), now() FROM generate_series(1, 30) g""",
        f"""INSERT INTO customers (display_name, external_id, language, attributes, created_at, updated_at)
            SELECT '客户' || g, 'bench-' || g, 'zh-CN', '{{}}'::jsonb, now() - (g % 365) * interval '1 day', now()
            FROM generate_series(1::bigint, {customers}) g""",
        """INSERT INTO customer_identities (customer_id, kind, value, verified, created_at)
            SELECT id, 'phone', '+86138' || lpad(id::text, 8, '0'), false, now() FROM customers""",
        f"""INSERT INTO work_orders (type, status, priority, title, description, customer_id, team_id,
                assignee_id, restricted, custom_fields, created_at, updated_at, resolution_due_at,
                first_response_due_at, resolved_at)
            SELECT (ARRAY['inquiry','complaint','suggestion','fault','request'])[1 + g % 5],
                   (ARRAY['new','open','pending','escalated','resolved','closed','closed','closed'])[1 + g % 8],
                   (ARRAY['low','normal','normal','high','urgent'])[1 + g % 5],
                   '工单 ' || g || ' 宽带无法连接', '', 1 + (g * 7919) % {customers}, a.team_id, a.user_id,
                   g % 20 = 0, '{{}}'::jsonb,
                   now() - (g % 365) * interval '1 day' - (g % 1440) * interval '1 minute',
                   now() - (g % 360) * interval '1 day' - (g % 1440) * interval '1 minute',
                   now() + ((g % 10) - 3) * interval '1 day',
                   now() + ((g % 10) - 5) * interval '1 hour',
                   CASE WHEN g % 8 >= 4 THEN now() - (g % 300) * interval '1 day' END
            FROM generate_series(1::bigint, {work_orders}) g
            JOIN bench_agents a ON a.rn = (g * 31) % {AGENTS}""",
        f"""INSERT INTO interactions (channel, direction, external_id, state, customer_id, identity_kind,
                identity_value, queue, team_id, agent_id, work_order_id, subject, contact_reason_id,
                disposition, resolved_first_contact, attributes, arrived_at, queued_at, offered_at,
                answered_at, ended_at, wrap_up_ended_at)
            SELECT (ARRAY['phone','phone','chat','email','sms'])[1 + g % 5], 'inbound', 'bench-' || g, 'done',
                   c, 'phone', '+86138' || lpad(c::text, 8, '0'), 'general', a.team_id, a.user_id,
                   CASE WHEN g % 5 = 0 THEN 1 + (g / 5) % {work_orders} END, '来电 ' || g,
                   (SELECT min(id) FROM contact_reasons) + g % 30, 'resolved', g % 3 <> 0, '{{}}'::jsonb,
                   t, t + interval '5 second', t + interval '20 second', t + interval '25 second',
                   t + interval '300 second', t + interval '330 second'
            FROM (SELECT g, 1 + (g * 104729) % {customers} AS c,
                         now() - (g % 365) * interval '1 day' - (g % 86400) * interval '1 second' AS t
                  FROM generate_series(1::bigint, {interactions}) g) s
            JOIN bench_agents a ON a.rn = (g * 17) % {AGENTS}""",
        "DROP TABLE bench_agents",
        "ANALYZE",
    ]


async def _fill(dsn: str, customers: int, work_orders: int, interactions: int) -> dict[str, float]:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    timings: dict[str, float] = {}
    try:
        for statement in fill_sql(customers, work_orders, interactions):
            began = time.perf_counter()
            await conn.execute(statement)
            label = " ".join(statement.split()[:3])
            timings[label] = round(time.perf_counter() - began, 2)
    finally:
        await conn.close()
    return timings


def _summary(latencies: list[float], statuses: list[int]) -> dict[str, float]:
    latencies = sorted(latencies)
    return {
        "requests": len(latencies),
        "errors": sum(1 for s in statuses if s >= 400),
        "p50_ms": round(statistics.median(latencies) * 1000, 1),
        "p95_ms": round(percentile(latencies, 0.95) * 1000, 1),
        "max_ms": round(latencies[-1] * 1000, 1),
    }


async def _time_pages(base: str, tokens: dict[str, str], customers: int, requests: int) -> dict[str, dict]:
    rng = random.Random(4)
    pages = {
        "work_orders_mine": ("agent", lambda: "/api/v1/work-orders?view=mine"),
        "work_orders_team": ("agent", lambda: "/api/v1/work-orders?view=team"),
        "work_orders_all_visible": ("agent", lambda: "/api/v1/work-orders"),
        "work_orders_overdue_team": ("agent", lambda: "/api/v1/work-orders?view=overdue"),
        "work_orders_filtered": (
            "supervisor",
            lambda: f"/api/v1/work-orders?status=open&priority={rng.choice(['high', 'urgent', 'low'])}",
        ),
        "work_orders_of_customer": ("agent", lambda: f"/api/v1/work-orders?customer_id={rng.randint(1, customers)}"),
        "work_orders_page_html": ("agent", lambda: "/work-orders?view=team"),
        "customer_360_html": ("agent", lambda: f"/customers/{rng.randint(1, customers)}"),
        "interaction_timeline": ("agent", lambda: f"/api/v1/interactions?customer_id={rng.randint(1, customers)}"),
        "customer_lookup_by_phone": (
            "agent",
            lambda: f"/api/v1/customers/lookup?kind=phone&value=138{rng.randint(1, customers):08d}",
        ),
    }
    results: dict[str, dict] = {}
    clients = {
        who: httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        for who, token in tokens.items()
    }
    try:
        for name, (who, path_of) in pages.items():
            client = clients[who]
            for _ in range(5):  # warm-up
                await client.get(path_of())
            latencies, statuses = [], []
            for _ in range(requests):
                path = path_of()
                began = time.perf_counter()
                response = await client.get(path)
                latencies.append(time.perf_counter() - began)
                statuses.append(response.status_code)
            results[name] = _summary(latencies, statuses) | {"example": path, "last_status": statuses[-1]}
    finally:
        for client in clients.values():
            await client.aclose()
    return results


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=200_000)
    parser.add_argument("--work-orders", type=int, default=200_000)
    parser.add_argument("--interactions", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument("--reuse", default="", help="name of a database kept by an earlier --keep run")
    args = parser.parse_args()

    result: dict[str, object] = {
        "benchmark": "service_desk_scale",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "database": "postgresql",
        "rows": {"customers": args.customers, "work_orders": args.work_orders, "interactions": args.interactions},
    }
    # A named database is neither created nor dropped by fresh_database: --keep makes one, and a reused
    # one is dropped afterwards unless --keep.
    name = args.reuse
    if args.keep and not name:
        name = f"kefu_bench_scale_{uuid.uuid4().hex[:8]}"
        await pg_admin(f'CREATE DATABASE "{name}"')
    try:
        async with fresh_database("postgresql", name=name) as (url, data_dir):
            if not args.reuse:
                env = server_env(url, data_dir, free_port())
                kefu(env, "db", "upgrade")
                began = time.perf_counter()
                dsn = url.replace("+asyncpg", "")
                result["fill_seconds"] = await _fill(dsn, args.customers, args.work_orders, args.interactions)
                result["fill_total_seconds"] = round(time.perf_counter() - began, 1)
                kefu(env, "user", "create", "bench-sup", "--role", "supervisor", "--password", PASSWORD)
                kefu(env, "user", "set-password", "bench-agent-1", stdin=f"{PASSWORD}\n{PASSWORD}\n")
            async with kefu_server(url, data_dir, prepare=False) as base:
                tokens = {
                    "agent": await token_for(base, "bench-agent-1"),
                    "supervisor": await token_for(base, "bench-sup"),
                }
                result["pages"] = await _time_pages(base, tokens, args.customers, args.requests)
    finally:
        if args.keep:
            result["kept_database"] = name
        elif args.reuse:
            await pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    json.dump(result, sys.stdout, indent=2, ensure_ascii=False)
    print()


if __name__ == "__main__":
    asyncio.run(main())
