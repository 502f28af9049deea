"""CTI event to screen pop: from the PBX's signed ``ringing`` event to the ringing agent's WebSocket.

    .venv/bin/python benchmarks/cti_screen_pop.py [--database auto|sqlite|postgresql] [--agents 50]
                                                  [--calls 500] [--rate 5]

Starts one ``kefu serve`` process on a fresh database (``auto``: PostgreSQL when the server at
KEFU_BENCH_POSTGRES_URL answers, else SQLite) with a PBX secret (KEFU_CTI_SECRET) and kefu's IVR off (the
PBX runs its own). Creates ``agents`` agents with an extension each and signs each in with its own session
and WebSocket on /ws (as a browser: session cookie, same-origin Origin). Then ``calls`` calls start at a
steady ``rate`` per second (open loop). Each call is three signed ``POST /api/v1/cti/events`` in a row, as
a PBX sends them: ``call_new`` (a new caller number each time), ``queued`` (the PBX's own queue), and
``ringing`` at a random agent's extension. Measured: from sending the ``ringing`` event to that agent's
socket receiving the ``desk.pop`` that names the caller's number. Pops reaching another agent are counted.
Prints one JSON document; target: p95 <= 1 s. The load generator shares the machine with the server.
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
from datetime import UTC, datetime
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
    postgres_reachable,
    session_cookie,
    token_for,
)

from kefu.core import signing  # noqa: E402

TARGET_P95_SECONDS = 1.0
DRAIN_SECONDS = 15.0
SECRET = "bench-" + uuid.uuid4().hex


def _signed(payload: dict) -> tuple[bytes, dict[str, str]]:
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return raw, {**signing.signed_headers(SECRET, raw), "Content-Type": "application/json"}


async def _make_agents(api: httpx.AsyncClient, count: int) -> list[tuple[int, str, str]]:
    tag = uuid.uuid4().hex[:6]
    agents = []
    for n in range(count):  # administrative writes, not measured: one at a time
        username = f"cti{tag}{n:03d}"
        made = await api.post(
            "/api/v1/users",
            json={"username": username, "display_name": f"坐席 {n}", "roles": ["agent"], "password": PASSWORD},
        )
        made.raise_for_status()
        user_id = made.json()["id"]
        extension = f"{8000 + n}"
        (await api.put(f"/api/v1/cti/extensions/{user_id}", json={"extension": extension})).raise_for_status()
        agents.append((user_id, username, extension))
    return agents


async def _listen(agent_id: int, ws: ClientConnection, received: dict[str, tuple[float, int]]) -> None:
    async for raw in ws:
        now = time.perf_counter()
        message = json.loads(raw)
        if message.get("type") == "desk.pop":
            identity = message["data"].get("identity") or {}
            received.setdefault(identity.get("value") or "", (now, agent_id))


async def _measure(base: str, agents: int, calls: int, rate: float) -> dict:
    token = await token_for(base, "bench")
    api = httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    pbx = httpx.AsyncClient(
        base_url=base, timeout=30, limits=httpx.Limits(max_connections=64, max_keepalive_connections=64)
    )
    sockets: list[ClientConnection] = []
    listeners: list[asyncio.Task[None]] = []
    try:
        setup_started = time.perf_counter()
        made = await _make_agents(api, agents)
        received: dict[str, tuple[float, int]] = {}  # caller number -> (pop arrived, agent)
        ws_url = base.replace("http://", "ws://", 1) + "/ws"
        for agent_id, username, _ in made:
            cookie = await session_cookie(base, username)
            ws = await connect(ws_url, origin=base, additional_headers={"Cookie": f"kefu_session={cookie}"})
            hello = json.loads(await asyncio.wait_for(ws.recv(), timeout=10))
            assert hello["type"] == "hello" and hello["data"]["user_id"] == agent_id, hello
            sockets.append(ws)
            listeners.append(asyncio.create_task(_listen(agent_id, ws, received)))
        setup_seconds = time.perf_counter() - setup_started

        sent: dict[str, tuple[float, int]] = {}  # caller -> (ringing sent at, agent)
        ringing_api: list[float] = []
        errors: list[str] = []
        numbers = random.sample(range(10**8), calls)

        async def post(payload: dict) -> httpx.Response | None:
            raw, headers = _signed(payload)
            try:
                response = await pbx.post("/api/v1/cti/events", content=raw, headers=headers)
            except httpx.HTTPError as exc:
                errors.append(type(exc).__name__)
                return None
            if response.status_code != 200:
                errors.append(f"{response.status_code}: {response.text[:200]}")
                return None
            return response

        async def call(n: int) -> None:
            agent_id, _, extension = random.choice(made)
            caller = f"+86137{numbers[n]:08d}"
            call_id = f"bench-{uuid.uuid4().hex}"

            def event(seq: int, type_: str, **fields: object) -> dict:
                at = datetime.now(UTC).isoformat()
                ids = {"event_id": f"{call_id}-{seq}", "call_id": call_id, "seq": seq}
                return {**ids, "type": type_, "at": at, **fields}

            if await post(event(1, "call_new", caller=caller.removeprefix("+86"), called="4008001234")) is None:
                return
            if await post(event(2, "queued", queue="pbx-bench")) is None:
                return
            started = time.perf_counter()
            sent[caller] = (started, agent_id)
            if await post(event(3, "ringing", extension=extension)) is not None:
                ringing_api.append(time.perf_counter() - started)

        tasks = []
        began = time.perf_counter()
        for n in range(calls):
            delay = began + n / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(call(n)))
        await asyncio.gather(*tasks)
        send_seconds = time.perf_counter() - began
        deadline = time.perf_counter() + DRAIN_SECONDS
        while any(c not in received for c in sent) and time.perf_counter() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)

        latencies = sorted(received[c][0] - at for c, (at, _) in sent.items() if c in received)
        wrong_agent = sum(1 for c, (_, agent) in sent.items() if c in received and received[c][1] != agent)
        ringing_api.sort()
        result: dict[str, object] = {
            "agents_connected": len(sockets),
            "calls_started": calls,
            "ringing_sent": len(sent),
            "pops_received": len(latencies),
            "pops_missing": len(sent) - len(latencies),
            "pops_to_wrong_agent": wrong_agent,
            "api_errors": len(errors),
            "first_errors": errors[:3],
            "achieved_call_rate_per_second": round(calls / send_seconds, 1),
            "setup_seconds": round(setup_seconds, 1),
        }
        if latencies:
            result["ringing_to_pop_ms"] = latency_ms(latencies)
            result["meets_target"] = percentile(latencies, 0.95) <= TARGET_P95_SECONDS and not result["pops_missing"]
        if ringing_api:
            result["ringing_response_ms"] = latency_ms(ringing_api, ("p50", "p95", "max"))
        return result
    finally:
        for task in listeners:
            task.cancel()
        for ws in sockets:
            await ws.close()
        await api.aclose()
        await pbx.aclose()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", choices=("auto", "sqlite", "postgresql"), default="auto")
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--calls", type=int, default=500)
    # 5 calls a second is far beyond what 50 agents answer (about one call each per 3 minutes: 0.3/s).
    parser.add_argument("--rate", type=float, default=5.0, help="calls started per second")
    parser.add_argument("--server-log", help="append the server's output to this file (errors, warnings)")
    args = parser.parse_args()
    if args.agents < 1 or args.calls < 1 or args.rate <= 0 or args.calls > 10**7:
        parser.error("--agents, --calls and --rate must be positive")
    database = args.database
    if database == "auto":
        database = "postgresql" if await postgres_reachable() else "sqlite"
    results: dict[str, object] = {
        "benchmark": "cti_screen_pop",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "database": database,
        "processes": 1,
        "agents": args.agents,
        "calls": args.calls,
        "rate_per_second": args.rate,
        "target_p95_ms": round(TARGET_P95_SECONDS * 1000, 1),
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
    }
    env = {"KEFU_CTI_SECRET": SECRET, "KEFU_CTI_IVR": "false"}
    async with fresh_database(database) as (url, data_dir):
        with open(args.server_log, "ab") if args.server_log else nullcontext() as log:  # noqa: ASYNC230
            async with kefu_server(url, data_dir, log=log, extra_env=env) as base:
                results.update(await _measure(base, args.agents, args.calls, args.rate))
    results["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    json.dump(results, sys.stdout, indent=2, ensure_ascii=False)
    print()


if __name__ == "__main__":
    asyncio.run(main())
