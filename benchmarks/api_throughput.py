"""Requests per second of ``/api/v1`` reads and writes, one kefu process, loopback, SQLite and PostgreSQL.

    .venv/bin/python benchmarks/api_throughput.py [--seconds 10] [--concurrency 16] [--backends sqlite,postgresql]

Starts ``kefu serve`` (one process, job worker on) on a fresh database per backend, signs in an admin,
makes an API token, then runs a closed loop of ``concurrency`` clients for ``seconds`` per phase:
- read:  GET /api/v1/users/{id} (token auth, one indexed lookup + its roles, teams, skills)
- write: POST /api/v1/skills (validation, uniqueness check, insert, audit entry, commit)
Prints one JSON document. The load generator runs on the same 2-core machine, so it competes with the
server for CPU: the figures are a floor, not a ceiling.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
import uuid
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_support import fresh_database, kefu_server, percentile, token_for  # noqa: E402


async def _phase(base: str, token: str, seconds: float, concurrency: int, make_request) -> dict[str, float]:  # noqa: ANN001
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=base, headers={"Authorization": f"Bearer {token}"}, limits=limits, timeout=30
    ) as client:

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                response = await make_request(client)
                latencies.append(time.perf_counter() - started)
                if response.status_code >= 400:
                    errors += 1

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    latencies.sort()
    return {
        "requests": len(latencies),
        "errors": errors,
        "requests_per_second": round(len(latencies) / elapsed, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 2),
        "p95_ms": round(percentile(latencies, 0.95) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
    }


async def _run_backend(database_url: str, data_dir: Path, seconds: float, concurrency: int) -> dict:
    async with kefu_server(database_url, data_dir) as base:
        token = await token_for(base, "bench")
        async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=10) as c:
            user_id = (await c.get("/api/v1/me")).json()["id"]

        async def read(client: httpx.AsyncClient) -> httpx.Response:
            return await client.get(f"/api/v1/users/{user_id}")

        async def write(client: httpx.AsyncClient) -> httpx.Response:
            return await client.post("/api/v1/skills", json={"name": f"skill-{uuid.uuid4().hex}"})

        await _phase(base, token, 1.0, concurrency, read)  # warm-up: connections, caches
        return {
            "read": await _phase(base, token, seconds, concurrency, read),
            "write": await _phase(base, token, seconds, concurrency, write),
        }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args()
    results: dict[str, object] = {
        "benchmark": "api_throughput",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "seconds_per_phase": args.seconds,
        "concurrency": args.concurrency,
        "processes": 1,
    }
    for backend in args.backends.split(","):
        async with fresh_database(backend) as (url, data_dir):
            results[backend] = await _run_backend(url, data_dir, args.seconds, args.concurrency)
    json.dump(results, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    asyncio.run(main())
