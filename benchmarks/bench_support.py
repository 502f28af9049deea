"""What every benchmark needs: a fresh database, a real ``kefu serve`` process, signed-in API tokens."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO

import httpx

PG_SERVER = os.environ.get("KEFU_BENCH_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres")
PASSWORD = "benchmark-password"
KEFU = [sys.executable, "-m", "kefu.cli"]


def postgres_cpu_seconds() -> float | None:
    """CPU seconds used so far by every ``postgres`` process of this machine (backends, WAL writer,
    checkpointer) and by those that ended (counted in their parent's children times), read from /proc;
    None where there is no /proc or no local server process."""
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total, seen = 0, False
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # the process ended while we looked
        name_end = text.rfind(")")
        if text[text.find("(") + 1 : name_end] != "postgres":
            continue
        fields = text[name_end + 2 :].split()
        # utime, stime, cutime, cstime: fields 14-17 of proc(5)
        total += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
        seen = True
    return total / ticks if seen else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def pg_admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_SERVER.replace("+asyncpg", ""))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def server_env(database_url: str, data_dir: Path, port: int) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("KEFU_")},
        "KEFU_DATABASE_URL": database_url,
        "KEFU_DATA_DIR": str(data_dir),
        "KEFU_BASE_URL": f"http://127.0.0.1:{port}",
        "KEFU_LOG_LEVEL": "WARNING",
    }


def kefu(env: dict[str, str], *args: str, stdin: str | None = None) -> None:
    """Run a ``kefu`` command (migrations, users) before anything is measured."""
    subprocess.run([*KEFU, *args], env=env, check=True, capture_output=True, input=stdin, text=True)


@asynccontextmanager
async def fresh_database(backend: str, *, name: str = "") -> AsyncIterator[tuple[str, Path]]:
    """(database URL, data directory) of a new, empty database, removed afterwards.
    ``name`` keeps (and reuses) a PostgreSQL database of that name instead."""
    data_dir = Path(tempfile.mkdtemp(prefix=f"kefu-bench-{backend}-"))
    try:
        if backend == "sqlite":
            yield f"sqlite+aiosqlite:///{data_dir / 'kefu.db'}", data_dir
            return
        database = name or f"kefu_bench_{uuid.uuid4().hex[:8]}"
        if not name:
            await pg_admin(f'CREATE DATABASE "{database}"')
        try:
            yield PG_SERVER.rsplit("/", 1)[0] + f"/{database}", data_dir
        finally:
            if not name:
                await pg_admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


async def wait_ready(base: str, seconds: float = 60) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=5) as c:
        for _ in range(int(seconds * 10)):
            try:
                if (await c.get("/readyz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{base} did not start")


async def token_for(base: str, username: str, password: str = PASSWORD) -> str:
    """Sign in as ``username`` and make an API token with every scope."""
    async with httpx.AsyncClient(base_url=base, timeout=30) as c:
        login = (await c.post("/api/v1/auth/login", json={"login": username, "password": password})).json()
        made = await c.post(
            "/api/v1/me/tokens", json={"name": "bench", "scopes": ["*"]}, headers={"X-CSRF-Token": login["csrf_token"]}
        )
        made.raise_for_status()
        return made.json()["token"]


@asynccontextmanager
async def kefu_server(
    database_url: str,
    data_dir: Path,
    *,
    prepare: bool = True,
    log: IO[bytes] | None = None,
    extra_env: dict[str, str] | None = None,
) -> AsyncIterator[str]:
    """A ``kefu serve`` process on ``database_url``; yields its base URL. With ``prepare`` the database is
    migrated and an admin ``bench`` (password ``PASSWORD``) is created first."""
    port = free_port()
    env = server_env(database_url, data_dir, port) | (extra_env or {})
    if prepare:
        kefu(env, "db", "upgrade")
        kefu(env, "user", "create", "bench", "--role", "admin", "--password", PASSWORD)
    out = log if log is not None else subprocess.DEVNULL
    server = subprocess.Popen([*KEFU, "serve", "--port", str(port)], env=env, stdout=out, stderr=out)
    base = f"http://127.0.0.1:{port}"
    try:
        await wait_ready(base)
        yield base
    finally:
        server.terminate()
        server.wait(timeout=10)


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted list (p95 of 20 values is the 19th)."""
    import math

    return sorted_values[max(0, math.ceil(len(sorted_values) * fraction) - 1)]


def latency_ms(sorted_seconds: list[float], points: tuple[str, ...] = ("p50", "p95", "p99", "max")) -> dict[str, float]:
    """Latency figures in milliseconds (one decimal) of an already sorted list of seconds."""
    fractions = {"p50": 0.5, "p95": 0.95, "p99": 0.99}
    return {
        point: round((sorted_seconds[-1] if point == "max" else percentile(sorted_seconds, fractions[point])) * 1000, 1)
        for point in points
    }


async def postgres_reachable() -> bool:
    """Whether the benchmark PostgreSQL server answers (otherwise the benchmark uses SQLite)."""
    try:
        await asyncio.wait_for(pg_admin("SELECT 1"), timeout=3)
    except Exception:  # noqa: BLE001 - any failure means: use SQLite
        return False
    return True


async def session_cookie(base: str, username: str, password: str = PASSWORD) -> str:
    """Signs in over the API; returns the session cookie (what a desk's WebSocket sends)."""
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        response = await client.post("/api/v1/auth/login", json={"login": username, "password": password})
        response.raise_for_status()
        cookie = client.cookies.get("kefu_session")
    assert cookie
    return cookie
