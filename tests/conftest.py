"""Test fixtures: one fresh, migrated database per test session (SQLite or PostgreSQL), the app, clients
and factories.

``KEFU_TEST_DATABASE_URL`` chooses the database: ``sqlite`` (default) or a PostgreSQL server URL such as
``postgresql+asyncpg://postgres@127.0.0.1:5432/postgres``; a new database is created on that server for
the session and dropped after it.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from kefu.app import create_app
from kefu.core.audit import Actor
from kefu.core.policy import Principal
from kefu.db.migrate import upgrade
from kefu.identity import service
from kefu.identity.models import User
from kefu.settings import Settings

REPO = Path(__file__).resolve().parent.parent
TEST_PASSWORD = "correct-horse-battery"
_counter = itertools.count(1)


def _backend() -> str:
    return os.environ.get("KEFU_TEST_DATABASE_URL", "sqlite") or "sqlite"


def is_postgres() -> bool:
    return _backend().startswith("postgresql")


async def _pg_admin(server_url: str, sql: str) -> None:
    import asyncpg

    from kefu.core.events import asyncpg_dsn

    conn = await asyncpg.connect(asyncpg_dsn(server_url))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    backend = _backend()
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('db') / 'kefu.db'}"
        upgrade(url)
        yield url
        return
    name = f"kefu_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    asyncio.run(_pg_admin(backend, f'CREATE DATABASE "{name}"'))
    url = backend.rsplit("/", 1)[0] + f"/{name}"
    try:
        upgrade(url)
        yield url
    finally:
        asyncio.run(_pg_admin(backend, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def settings(database_url: str, data_dir: Path) -> Settings:
    return Settings(
        database_url=database_url,
        data_dir=data_dir,
        secret_key="test-secret-key-not-for-production",
        base_url="http://testserver",
        run_worker=False,
        log_json=False,
        # Test receivers listen on 127.0.0.1; the refusal itself is tested with its own settings.
        webhooks_refused_networks=[],
    )


@pytest.fixture(scope="session")
async def app(settings: Settings) -> AsyncIterator:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app) -> AsyncIterator[httpx.AsyncClient]:  # noqa: ANN001
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


@pytest.fixture
def db_factory(app):  # noqa: ANN001, ANN201
    return app.state.session_factory


_counting: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("kefu_counting", default=None)


class QueryCounter:
    """Counts the SQL statements the test's own requests run (``with QueryCounter(app) as q: ...; q.count``).
    Used to guard pages and lists against N+1 queries: the count must not grow with the rows shown.
    Only statements run in this task's context count: the knowledge index and other background tasks
    query the database on their own schedule."""

    def __init__(self, app) -> None:  # noqa: ANN001
        self.engine = app.state.engine.sync_engine
        self.statements: list[str] = []

    @staticmethod
    def _seen(conn, cursor, statement, parameters, context, executemany) -> None:  # noqa: ANN001, PLR0913
        counting = _counting.get()
        if counting is not None:
            counting.append(statement)

    @property
    def count(self) -> int:
        return len(self.statements)

    def __enter__(self) -> QueryCounter:
        from sqlalchemy import event

        self._token = _counting.set(self.statements)
        if not event.contains(self.engine, "before_cursor_execute", QueryCounter._seen):
            event.listen(self.engine, "before_cursor_execute", QueryCounter._seen)
        return self

    def __exit__(self, *exc: object) -> None:
        _counting.reset(self._token)


def unique(prefix: str = "u") -> str:
    return f"{prefix}{next(_counter)}x{uuid.uuid4().hex[:6]}"


@dataclass
class Factory:
    app: object

    async def user(
        self,
        *roles: str,
        password: str = TEST_PASSWORD,
        team_ids: tuple[int, ...] = (),
        email: bool = True,
        **kw: object,
    ) -> User:
        username = unique(roles[0] if roles else "user")
        async with self.app.state.session_factory() as db, db.begin():  # type: ignore[attr-defined]
            return await service.create_user(
                db,
                Actor.system("test"),
                username=username,
                display_name=f"Test {username}",
                roles=roles or ("agent",),
                password=password,
                email=f"{username}@example.test" if email else None,
                team_ids=team_ids,
                **kw,
            )

    async def team(self, name: str | None = None) -> int:
        async with self.app.state.session_factory() as db, db.begin():  # type: ignore[attr-defined]
            return (await service.create_team(db, Actor.system("test"), name=name or unique("team"))).id

    async def skill(self, name: str | None = None) -> int:
        async with self.app.state.session_factory() as db, db.begin():  # type: ignore[attr-defined]
            return (await service.create_skill(db, Actor.system("test"), name=name or unique("skill"))).id

    async def token(self, user: User, scopes: tuple[str, ...] = ("*",)) -> str:
        from kefu.core.policy import Principal

        principal = Principal(user_id=user.id, username=user.username, roles=user.role_names, via="session")
        async with self.app.state.session_factory() as db, db.begin():  # type: ignore[attr-defined]
            plain, _ = await service.create_api_token(db, principal, name="test", scopes=scopes, expires_in_days=1)
        return plain


@pytest.fixture
def make(app) -> Factory:  # noqa: ANN001
    return Factory(app)


def principal_of(user: User) -> Principal:
    """The principal a signed-in browser of ``user`` would have, for calling services directly."""
    return Principal(user_id=user.id, username=user.username, roles=user.role_names, via="session")


@asynccontextmanager
async def signed_in_clients(app, users: dict[str, User]) -> AsyncIterator[dict[str, httpx.AsyncClient]]:  # noqa: ANN001
    """One signed-in API client per user (same keys), closed at the end."""
    clients: dict[str, httpx.AsyncClient] = {}
    try:
        for key, user in users.items():
            client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")
            clients[key] = client
            await login(client, user)
        yield clients
    finally:
        for client in clients.values():
            await client.aclose()


async def login(client: httpx.AsyncClient, user: User, password: str = TEST_PASSWORD) -> str:
    """Signs ``client`` in through the API; returns the CSRF token for its writes."""
    response = await client.post("/api/v1/auth/login", json={"login": user.username, "password": password})
    assert response.status_code == 200, response.text
    token = response.json()["csrf_token"]
    client.headers["X-CSRF-Token"] = token
    return token


# --- a real server in another process -------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LiveServer:
    url: str
    process: subprocess.Popen

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start_server(settings: Settings, *, env: dict[str, str] | None = None) -> LiveServer:
    """Runs ``kefu serve`` (migrations included) against the test database; waits for /readyz."""
    port = free_port()
    environment = {
        **os.environ,
        "KEFU_DATABASE_URL": settings.resolved_database_url,
        "KEFU_DATA_DIR": str(settings.data_dir),
        "KEFU_SECRET_KEY": settings.secret_key,
        "KEFU_BASE_URL": f"http://127.0.0.1:{port}",
        "KEFU_LOG_JSON": "true",
        "KEFU_LOG_LEVEL": "WARNING",
        # The test process runs jobs itself when a test needs them; a server's worker would take them.
        "KEFU_RUN_WORKER": "false",
        **(env or {}),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "kefu.cli", "serve", "--port", str(port)],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {process.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return LiveServer(url, process)
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("server did not become ready within 60 s")


@pytest.fixture(scope="session")
def live_server(settings: Settings) -> Iterator[LiveServer]:
    server = start_server(settings)
    yield server
    server.stop()
