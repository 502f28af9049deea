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
import statistics
import sys
import time
import uuid
from contextlib import AsyncExitStack
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_support import fresh_database, kefu_server, percentile, token_for  # noqa: E402


async def _measure(bases: list[str], changes: int) -> dict[str, dict[str, float]]:
    token = await token_for(bases[0], "bench")
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
            "p95_seconds": round(percentile(values, 0.95), 3),
            "max_seconds": round(values[-1], 3),
        }
    return out


async def _run(database_url: str, data_dir: Path, processes: int, changes: int) -> dict:
    async with AsyncExitStack() as stack:
        # The first process prepares the database (migrations, admin); the others share it.
        bases = [
            await stack.enter_async_context(kefu_server(database_url, data_dir, prepare=i == 0))
            for i in range(processes)
        ]
        return await _measure(bases, changes)


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
        async with fresh_database(backend) as (url, data_dir):
            if backend == "sqlite":
                results["sqlite_one_process"] = await _run(url, data_dir, 1, args.changes)
            else:
                results["postgresql_two_processes"] = await _run(url, data_dir, 2, args.changes)
    json.dump(results, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    asyncio.run(main())
