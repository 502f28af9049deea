"""How long until a published change is searchable, in the publishing process and in another process.

    .venv/bin/python benchmarks/kb_freshness.py [--changes 30] [--backends sqlite,postgresql]

Starts kefu (on PostgreSQL: two app processes on one database; on SQLite: one process), publishes
``changes`` articles through process A's API, and polls the search API of every process until each
article is found. Prints one JSON document with p50/p95/max seconds per process. The target is < 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from api_throughput import PASSWORD, PG_SERVER, _env, _free_port, _pg_admin  # noqa: E402


async def _wait_ready(base: str) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=5) as c:
        for _ in range(300):
            try:
                if (await c.get("/readyz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{base} did not start")


async def _token(base: str) -> str:
    async with httpx.AsyncClient(base_url=base, timeout=10) as c:
        login = (await c.post("/api/v1/auth/login", json={"login": "bench", "password": PASSWORD})).json()
        made = await c.post(
            "/api/v1/me/tokens", json={"name": "bench", "scopes": ["*"]}, headers={"X-CSRF-Token": login["csrf_token"]}
        )
        return made.json()["token"]


async def _measure(bases: list[str], changes: int) -> dict[str, dict[str, float]]:
    token = await _token(bases[0])
    headers = {"Authorization": f"Bearer {token}"}
    delays: dict[str, list[float]] = {f"process_{i}": [] for i in range(len(bases))}
    clients = [httpx.AsyncClient(base_url=b, headers=headers, timeout=10) for b in bases]
    try:
        for _ in range(changes):
            word = "fresh" + uuid.uuid4().hex[:10]
            created = await clients[0].post(
                "/api/v1/kb/articles", json={"title": f"新知识 {word}", "body_markdown": word}
            )
            article_id = created.json()["id"]
            started = time.perf_counter()
            await clients[0].post(f"/api/v1/kb/articles/{article_id}/publish", json={})

            async def seen(
                i: int,
                client: httpx.AsyncClient,
                word: str = word,
                article_id: int = article_id,
                started: float = started,
            ) -> None:
                while time.perf_counter() - started < 30:
                    hits = (await client.get("/api/v1/kb/search", params={"q": word})).json()["hits"]
                    if any(h["article_id"] == article_id for h in hits):
                        delays[f"process_{i}"].append(time.perf_counter() - started)
                        return
                    await asyncio.sleep(0.01)
                delays[f"process_{i}"].append(float("inf"))

            await asyncio.gather(*(seen(i, c) for i, c in enumerate(clients)))
    finally:
        for c in clients:
            await c.aclose()
    out = {}
    for name, values in delays.items():
        values.sort()
        out[name] = {
            "changes": len(values),
            "p50_seconds": round(statistics.median(values), 3),
            "p95_seconds": round(values[max(0, int(len(values) * 0.95) - 1)], 3),
            "max_seconds": round(values[-1], 3),
        }
    return out


async def _run(database_url: str, data_dir: Path, processes: int, changes: int) -> dict:
    ports = [_free_port() for _ in range(processes)]
    env = _env(database_url, data_dir, ports[0])
    kefu = [sys.executable, "-m", "kefu.cli"]
    subprocess.run([*kefu, "db", "upgrade"], env=env, check=True, capture_output=True)
    subprocess.run(
        [*kefu, "user", "create", "bench", "--role", "admin", "--password", PASSWORD],
        env=env,
        check=True,
        capture_output=True,
    )
    servers = [
        subprocess.Popen(
            [*kefu, "serve", "--port", str(p)],
            env=_env(database_url, data_dir, p),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for p in ports
    ]
    try:
        bases = [f"http://127.0.0.1:{p}" for p in ports]
        for base in bases:
            await _wait_ready(base)
        return await _measure(bases, changes)
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=10)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=30)
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args()
    results: dict[str, object] = {
        "benchmark": "kb_freshness",
        "target_seconds": 1.0,
        "poll_seconds": float(os.environ.get("KEFU_KB_INDEX_POLL_SECONDS", 0.5)),
    }
    for backend in args.backends.split(","):
        data_dir = Path(tempfile.mkdtemp(prefix=f"kefu-fresh-{backend}-"))
        try:
            if backend == "sqlite":
                results["sqlite_one_process"] = await _run(
                    f"sqlite+aiosqlite:///{data_dir / 'kefu.db'}", data_dir, 1, args.changes
                )
            else:
                name = f"kefu_bench_{uuid.uuid4().hex[:8]}"
                await _pg_admin(f'CREATE DATABASE "{name}"')
                try:
                    url = PG_SERVER.rsplit("/", 1)[0] + f"/{name}"
                    results["postgresql_two_processes"] = await _run(url, data_dir, 2, args.changes)
                finally:
                    await _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            shutil.rmtree(data_dir, ignore_errors=True)
    json.dump(results, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    asyncio.run(main())
