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
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
PG_SERVER = os.environ.get("KEFU_BENCH_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres")
PASSWORD = "benchmark-password"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _pg_admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_SERVER.replace("+asyncpg", ""))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _env(database_url: str, data_dir: Path, port: int) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("KEFU_")},
        "KEFU_DATABASE_URL": database_url,
        "KEFU_DATA_DIR": str(data_dir),
        "KEFU_BASE_URL": f"http://127.0.0.1:{port}",
        "KEFU_LOG_LEVEL": "WARNING",
    }


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
        "p95_ms": round(latencies[int(len(latencies) * 0.95) - 1] * 1000, 2),
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 2),
    }


async def _run_backend(name: str, database_url: str, data_dir: Path, seconds: float, concurrency: int) -> dict:
    port = _free_port()
    env = _env(database_url, data_dir, port)
    kefu = [sys.executable, "-m", "kefu.cli"]
    subprocess.run([*kefu, "db", "upgrade"], env=env, check=True, capture_output=True)
    subprocess.run(
        [*kefu, "user", "create", "bench", "--role", "admin", "--password", PASSWORD],
        env=env,
        check=True,
        capture_output=True,
    )
    server = subprocess.Popen(
        [*kefu, "serve", "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=10) as c:
            for _ in range(300):
                try:
                    if (await c.get("/readyz")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)
            login = (await c.post("/api/v1/auth/login", json={"login": "bench", "password": PASSWORD})).json()
            made = await c.post(
                "/api/v1/me/tokens",
                json={"name": "bench", "scopes": ["*"]},
                headers={"X-CSRF-Token": login["csrf_token"]},
            )
            token = made.json()["token"]
            user_id = login["user"]["id"]

        async def read(client: httpx.AsyncClient) -> httpx.Response:
            return await client.get(f"/api/v1/users/{user_id}")

        async def write(client: httpx.AsyncClient) -> httpx.Response:
            return await client.post("/api/v1/skills", json={"name": f"skill-{uuid.uuid4().hex}"})

        await _phase(base, token, 1.0, concurrency, read)  # warm-up: connections, caches
        return {
            "read": await _phase(base, token, seconds, concurrency, read),
            "write": await _phase(base, token, seconds, concurrency, write),
        }
    finally:
        server.terminate()
        server.wait(timeout=10)


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
        data_dir = Path(tempfile.mkdtemp(prefix=f"kefu-bench-{backend}-"))
        try:
            if backend == "sqlite":
                results[backend] = await _run_backend(
                    backend, f"sqlite+aiosqlite:///{data_dir / 'kefu.db'}", data_dir, args.seconds, args.concurrency
                )
            else:
                name = f"kefu_bench_{uuid.uuid4().hex[:8]}"
                await _pg_admin(f'CREATE DATABASE "{name}"')
                try:
                    url = PG_SERVER.rsplit("/", 1)[0] + f"/{name}"
                    results[backend] = await _run_backend(backend, url, data_dir, args.seconds, args.concurrency)
                finally:
                    await _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            shutil.rmtree(data_dir, ignore_errors=True)
    json.dump(results, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    asyncio.run(main())
