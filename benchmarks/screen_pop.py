"""Screen pop latency: from the API call that creates a contact for an agent to that agent's WebSocket.

    .venv/bin/python benchmarks/screen_pop.py [--database sqlite|postgresql] [--agents 100] [--contacts 500]
                                              [--rate 20]

Starts one ``kefu serve`` process on a fresh database, creates ``agents`` agents and signs each in with its
own session and its own WebSocket on /ws (as a browser would: session cookie, same-origin Origin header).
Known customers are made first (one phone number each). Then ``contacts`` interactions are created through
``POST /api/v1/interactions`` at a steady ``rate`` per second (open loop: a slow answer does not slow the
sending), each with a known caller's number typed the way a switch delivers it (national format) and assigned
to a random agent. Measured: from sending the request to the assigned agent's socket receiving its
``desk.pop``. Pops that reach the wrong agent are counted. Prints one JSON document; target: p95 <= 1 s.
The load generator runs on the same machine as the server and competes with it for CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sys
import time
import uuid
from contextlib import nullcontext
from pathlib import Path

import httpx
from websockets.asyncio.client import ClientConnection, connect

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_support import (  # noqa: E402
    PASSWORD,
    fresh_database,
    kefu_server,
    latency_ms,
    percentile,
    session_cookie,
    token_for,
)

TARGET_P95_SECONDS = 1.0
DRAIN_SECONDS = 15.0


async def _gather_limited(calls: list, limit: int = 8) -> list:  # noqa: ANN001
    gate = asyncio.Semaphore(limit)

    async def run(call) -> object:  # noqa: ANN001
        async with gate:
            return await call()

    return await asyncio.gather(*(run(c) for c in calls))


async def _make_agents(api: httpx.AsyncClient, count: int) -> list[tuple[int, str]]:
    tag = uuid.uuid4().hex[:6]

    async def one(n: int) -> tuple[int, str]:
        username = f"pop{tag}{n:03d}"
        response = await api.post(
            "/api/v1/users",
            json={"username": username, "display_name": f"坐席 {n}", "roles": ["agent"], "password": PASSWORD},
        )
        response.raise_for_status()
        return response.json()["id"], username

    # One at a time: user creation is an administrative write, not what is measured here.
    return await _gather_limited([lambda n=n: one(n) for n in range(count)], limit=1)


async def _make_customers(api: httpx.AsyncClient, count: int) -> list[str]:
    """Known callers: a customer per number, made through the same API (first contact creates them)."""
    numbers = [f"+86139{n:08d}" for n in random.sample(range(10**8), count)]

    async def one(number: str) -> None:
        response = await api.post(
            "/api/v1/interactions",
            json={"channel": "phone", "identity": {"kind": "phone", "value": number}, "create_customer": True},
        )
        response.raise_for_status()
        assert response.json()["customer_id"] is not None

    await _gather_limited([lambda x=x: one(x) for x in numbers])
    return numbers


class Desk:
    """One agent's browser tab: a WebSocket that notes when each desk.pop arrives."""

    def __init__(self, agent_id: int, ws: ClientConnection, received: dict[int, tuple[float, int]]) -> None:
        self.agent_id = agent_id
        self.ws = ws
        self.received = received

    async def listen(self) -> None:
        async for raw in self.ws:
            now = time.perf_counter()
            message = json.loads(raw)
            if message.get("type") == "desk.pop":
                self.received[message["data"]["interaction_id"]] = (now, self.agent_id)


async def _drain(received: dict[int, tuple[float, int]], sent: dict[int, tuple[float, int]]) -> None:
    """Give late pops up to DRAIN_SECONDS to arrive (the listeners fill ``received`` meanwhile)."""
    deadline = time.perf_counter() + DRAIN_SECONDS
    for interaction_id in sent:
        while interaction_id not in received and time.perf_counter() < deadline:  # noqa: ASYNC110 - a dict the listeners fill
            await asyncio.sleep(0.05)


async def _measure(base: str, agents: int, contacts: int, rate: float) -> dict:
    token = await token_for(base, "bench")
    api = httpx.AsyncClient(
        base_url=base,
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
        limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
    )
    sockets: list[ClientConnection] = []
    listeners: list[asyncio.Task[None]] = []
    try:
        setup_started = time.perf_counter()
        made = await _make_agents(api, agents)
        callers = await _make_customers(api, min(contacts, 200))
        cookies = await _gather_limited([lambda u=u: session_cookie(base, u) for _, u in made], limit=4)
        received: dict[int, tuple[float, int]] = {}
        ws_url = base.replace("http://", "ws://", 1) + "/ws"
        for (agent_id, _), cookie in zip(made, cookies, strict=True):
            ws = await connect(ws_url, origin=base, additional_headers={"Cookie": f"kefu_session={cookie}"})  # type: ignore[arg-type]
            hello = json.loads(await asyncio.wait_for(ws.recv(), timeout=10))
            assert hello["type"] == "hello" and hello["data"]["user_id"] == agent_id, hello
            sockets.append(ws)
            listeners.append(asyncio.create_task(Desk(agent_id, ws, received).listen()))
        setup_seconds = time.perf_counter() - setup_started

        sent: dict[int, tuple[float, int]] = {}  # interaction id -> (sent at, assigned agent)
        api_seconds: list[float] = []
        errors: list[str] = []

        async def create(agent_id: int, number: str) -> None:
            started = time.perf_counter()
            # A switch delivers the caller's number in national format: identity resolution normalizes it.
            national = number.removeprefix("+86")
            body = {
                "channel": "phone",
                "external_id": f"call-{uuid.uuid4().hex}",
                "identity": {"kind": "phone", "value": f"{national[:3]} {national[3:7]} {national[7:]}"},
                # The switch put the call through to this agent (a queue would name a routing queue).
                "agent_id": agent_id,
            }
            try:
                response = await api.post("/api/v1/interactions", json=body)
            except httpx.HTTPError as exc:
                errors.append(type(exc).__name__)
                return
            api_seconds.append(time.perf_counter() - started)
            if response.status_code != 201:
                errors.append(f"{response.status_code}: {response.text[:200]}")
                return
            sent[response.json()["id"]] = (started, agent_id)

        agent_ids = [a for a, _ in made]
        tasks = []
        began = time.perf_counter()
        for n in range(contacts):
            # Steady rate, open loop: the n-th request leaves at n / rate seconds whatever the others do.
            delay = began + n / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(create(random.choice(agent_ids), random.choice(callers))))
        await asyncio.gather(*tasks)
        send_seconds = time.perf_counter() - began
        await _drain(received, sent)

        latencies = sorted(received[i][0] - at for i, (at, _) in sent.items() if i in received)
        wrong_agent = sum(1 for i, (_, agent) in sent.items() if i in received and received[i][1] != agent)
        api_seconds.sort()
        result: dict[str, object] = {
            "agents_connected": len(sockets),
            "contacts_sent": contacts,
            "contacts_created": len(sent),
            "pops_received": len(latencies),
            "pops_missing": len(sent) - len(latencies),
            "pops_to_wrong_agent": wrong_agent,
            "api_errors": len(errors),
            "first_errors": errors[:3],
            "achieved_rate_per_second": round(contacts / send_seconds, 1),
            "setup_seconds": round(setup_seconds, 1),
        }
        if latencies:
            result["pop_latency_ms"] = latency_ms(latencies)
            result["meets_target"] = percentile(latencies, 0.95) <= TARGET_P95_SECONDS and not result["pops_missing"]
        if api_seconds:
            result["api_latency_ms"] = latency_ms(api_seconds, ("p50", "p95", "max"))
        return result
    finally:
        for task in listeners:
            task.cancel()
        for ws in sockets:
            await ws.close()
        await api.aclose()


async def _run(
    database_url: str, data_dir: Path, agents: int, contacts: int, rate: float, server_log: str | None
) -> dict:
    # The server's output goes to ``server_log`` when given, else nowhere.
    with open(server_log, "ab") if server_log else nullcontext() as log:  # noqa: ASYNC230 - before measuring
        async with kefu_server(database_url, data_dir, log=log) as base:
            return await _measure(base, agents, contacts, rate)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--contacts", type=int, default=500)
    parser.add_argument("--rate", type=float, default=20.0, help="contacts created per second")
    parser.add_argument("--server-log", help="append the server's output to this file (errors, warnings)")
    args = parser.parse_args()
    if args.agents < 1 or args.contacts < 1 or args.rate <= 0:
        parser.error("--agents, --contacts and --rate must be positive")
    results: dict[str, object] = {
        "benchmark": "screen_pop",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "database": args.database,
        "processes": 1,
        "agents": args.agents,
        "contacts": args.contacts,
        "rate_per_second": args.rate,
        "target_p95_ms": round(TARGET_P95_SECONDS * 1000, 1),
        # Other work on the machine competes with the server and the load generator: read figures with it.
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
    }
    async with fresh_database(args.database) as (url, data_dir):
        results.update(await _run(url, data_dir, args.agents, args.contacts, args.rate, args.server_log))
    results["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    json.dump(results, sys.stdout, indent=2, ensure_ascii=False)
    print()


if __name__ == "__main__":
    asyncio.run(main())
