"""/readyz turns false when the database is unreachable and true again when it returns, without a restart.

The database is PostgreSQL reached through a TCP relay that the test cuts and restores (a real outage of
the network path; nothing is mocked). PostgreSQL runs on every development and CI machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

import httpx
import pytest

from kefu.app import create_app

PG_HOST, PG_PORT = "127.0.0.1", 5432


class Relay:
    """Forwards a local port to PostgreSQL; ``cut()`` drops every connection and refuses new ones."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.port = 0
        self.writers: set[asyncio.StreamWriter] = set()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(PG_HOST, PG_PORT)
        self.writers |= {client_w, server_w}
        await asyncio.gather(self._pipe(client_r, server_w), self._pipe(server_r, client_w))

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.transport.abort()
        self.writers.clear()
        await self.server.wait_closed()


async def _pg_available() -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(PG_HOST, PG_PORT), 2)
    except OSError:
        return False
    writer.close()
    return True


async def test_readyz_follows_the_database_and_recovers(settings) -> None:
    if not await _pg_available():
        pytest.skip("PostgreSQL is not running on 127.0.0.1:5432")
    relay = Relay()
    await relay.start()
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{relay.port}/postgres"
    app = create_app(settings.model_copy(update={"database_url": url, "event_backend": "inprocess"}))
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        assert (await c.get("/readyz")).status_code == 200
        await relay.cut()
        down = await c.get("/readyz")
        assert down.status_code == 503
        assert down.json()["database"] == "unreachable"
        assert (await c.get("/healthz")).status_code == 200  # alive, just not ready
        await relay.start()  # the database is back on the same address
        for _ in range(50):
            if (await c.get("/readyz")).status_code == 200:
                break
            await asyncio.sleep(0.1)
        assert (await c.get("/readyz")).status_code == 200
    await relay.cut()


async def test_an_idle_pooled_connection_is_pinged_and_replaced_after_an_outage(monkeypatch) -> None:
    """A connection idle longer than PING_WHEN_IDLE_SECONDS is pinged at checkout: after the database was
    cut and came back, the next query gets a fresh connection instead of failing. One used a moment ago
    is not pinged (the hot paths save that round trip)."""
    if not await _pg_available():
        pytest.skip("PostgreSQL is not running on 127.0.0.1:5432")
    from sqlalchemy import text

    from kefu.db import engine as engine_module

    monkeypatch.setattr(engine_module, "PING_WHEN_IDLE_SECONDS", 0.3)
    relay = Relay()
    await relay.start()
    engine = engine_module.make_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{relay.port}/postgres")
    dialect = engine.sync_engine.dialect
    pings = []
    real_ping = dialect.do_ping

    def counted_ping(dbapi_connection):  # noqa: ANN001, ANN202 - DB-API object
        pings.append(1)
        return real_ping(dbapi_connection)

    dialect.do_ping = counted_ping
    try:
        for _ in range(5):  # back to back: no ping
            async with engine.connect() as conn:
                assert (await conn.execute(text("SELECT 1"))).scalar() == 1
        assert pings == []
        await relay.cut()
        await relay.start()  # back on the same address; the pooled connection is dead
        await asyncio.sleep(0.4)
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT 2"))).scalar() == 2
        assert len(pings) == 1  # the dead one failed its ping and was replaced
    finally:
        await engine.dispose()
        await relay.cut()


@pytest.mark.skipif(
    os.environ.get("KEFU_TEST_DATABASE_URL", "sqlite").startswith("sqlite") is False, reason="SQLite-specific"
)
async def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(app) -> None:
    from sqlalchemy import text

    async with app.state.engine.connect() as conn:
        assert (await conn.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
        assert (await conn.execute(text("PRAGMA busy_timeout"))).scalar() >= 5000
        assert (await conn.execute(text("PRAGMA foreign_keys"))).scalar() == 1
