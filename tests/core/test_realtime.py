"""``/ws`` against real ``kefu serve`` processes: sign in over HTTP, connect with the session cookie, get
the hello, receive the events addressed to you (and only those); anonymous and foreign-origin
connections are refused. On PostgreSQL: an event published in one process reaches a WebSocket client
served by another process.

No API publishes events yet, so one server is started with a test-only route,
``POST /test-only/publish``, added to the real app through a ``sitecustomize`` module on its
``PYTHONPATH``. The route publishes with ``publish_on_commit`` on the request's database session, the
path every future domain event takes: request -> ``get_db`` (which binds the process's bus) -> commit
-> bus -> WebSocket. Everything else in that process is plain ``kefu serve``.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from conftest import TEST_PASSWORD, LiveServer, is_postgres, start_server
from kefu.core.events import Event, PostgresBus

WAIT = 15.0
postgres_only = pytest.mark.skipif(not is_postgres(), reason="several app processes need PostgreSQL")

SITECUSTOMIZE = '''
"""Test-only: adds POST /test-only/publish to the kefu app of this process (see tests/core/test_realtime.py)."""
import kefu.app as _kefu_app

_original_create_app = _kefu_app.create_app


def create_app(settings=None):
    from fastapi import Body, Depends

    from kefu.core.events import Event, publish_on_commit
    from kefu.db.session import get_db

    app = _original_create_app(settings)

    @app.post("/test-only/publish")
    async def publish(body: dict = Body(...), db=Depends(get_db)) -> dict:
        event = Event(
            type=body["type"],
            data=body.get("data") or {},
            user_ids=tuple(body.get("user_ids") or ()),
            roles=tuple(body.get("roles") or ()),
        )
        async with db.begin():
            publish_on_commit(db, event)
        return {"id": event.id, "pid": __import__("os").getpid()}

    return app


_kefu_app.create_app = create_app
'''


@pytest.fixture(scope="module")
def publishing_server(settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:  # noqa: ANN001
    """``kefu serve`` plus the test-only publish route; no job worker (it would claim other tests' jobs)."""
    site = Path(tmp_path_factory.mktemp("publishing_site"))
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    pythonpath = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH", "")]))
    server = start_server(settings, env={"PYTHONPATH": pythonpath, "KEFU_RUN_WORKER": "false"})
    yield server
    server.stop()


def ws_url(server: LiveServer) -> str:
    return server.url.replace("http://", "ws://", 1) + "/ws"


async def sign_in(server: LiveServer, user) -> str:  # noqa: ANN001
    """Signs in through the real server's API; returns the ``kefu_session`` cookie value."""
    async with httpx.AsyncClient(base_url=server.url) as http:
        response = await http.post("/api/v1/auth/login", json={"login": user.username, "password": TEST_PASSWORD})
        assert response.status_code == 200, response.text
        cookie = http.cookies.get("kefu_session")
    assert cookie
    return cookie


def open_socket(server: LiveServer, cookie: str | None = None, origin: str | None = "same"):  # noqa: ANN201
    headers = {"Cookie": f"kefu_session={cookie}"} if cookie else {}
    # A browser always sends the page's Origin; "same" is the server's own.
    return connect(
        ws_url(server),
        origin=server.url if origin == "same" else origin,  # type: ignore[arg-type]
        additional_headers=headers,
        open_timeout=WAIT,
    )


async def receive(ws: ClientConnection) -> dict:
    """The next message that is not a keep-alive ping."""
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), timeout=WAIT))
        if message["type"] != "ping":
            return message


async def close_code(ws: ClientConnection) -> int:
    with pytest.raises(ConnectionClosed) as closed:
        await asyncio.wait_for(ws.recv(), timeout=WAIT)
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code


async def publish_via(server: LiveServer, **event: object) -> dict:
    async with httpx.AsyncClient(base_url=server.url) as http:
        response = await http.post("/test-only/publish", json=event)
    assert response.status_code == 200, response.text
    return response.json()


async def test_signed_in_user_gets_hello_and_only_their_events(publishing_server, make) -> None:  # noqa: ANN001
    agent = await make.user("agent")
    other = await make.user("agent")
    cookie = await sign_in(publishing_server, agent)
    async with open_socket(publishing_server, cookie) as ws:
        assert await receive(ws) == {"type": "hello", "data": {"user_id": agent.id}}
        # Published in that order; whatever is not for this user must never show up before its own.
        await publish_via(publishing_server, type="for.someone.else", user_ids=[other.id])
        await publish_via(publishing_server, type="for.supervisors", roles=["supervisor"])
        await publish_via(publishing_server, type="for.nobody")
        mine = await publish_via(publishing_server, type="ticket.assigned", data={"ticket_id": 5}, user_ids=[agent.id])
        by_role = await publish_via(publishing_server, type="queue.changed", roles=["agent"])
        first = await receive(ws)
        assert first["type"] == "ticket.assigned" and first["id"] == mine["id"]
        assert first["data"] == {"ticket_id": 5} and first["user_ids"] == [agent.id]
        second = await receive(ws)
        assert second["type"] == "queue.changed" and second["id"] == by_role["id"]


async def test_anonymous_connection_is_refused(live_server) -> None:  # noqa: ANN001
    # A close code after the handshake, not an HTTP 403 handshake failure (which browser code only
    # sees as 1006): kefu.js stops reconnecting on 4401/4403.
    async with open_socket(live_server) as ws:
        assert await close_code(ws) == 4401
    async with open_socket(live_server, cookie="not-a-real-session") as ws:
        assert await close_code(ws) == 4401


async def test_foreign_origin_is_refused_even_when_signed_in(live_server, make) -> None:  # noqa: ANN001
    agent = await make.user("agent")
    cookie = await sign_in(live_server, agent)
    # Another site's page in the user's browser would send the cookie with a foreign Origin.
    async with open_socket(live_server, cookie, origin="http://evil.example") as ws:
        assert await close_code(ws) == 4403
    # No Origin (not a browser: e.g. a CLI client presenting the cookie itself) is allowed.
    async with open_socket(live_server, cookie, origin=None) as ws:
        assert (await receive(ws))["type"] == "hello"


async def test_signed_out_session_is_refused(live_server, make) -> None:  # noqa: ANN001
    agent = await make.user("agent")
    async with httpx.AsyncClient(base_url=live_server.url) as http:
        login = await http.post("/api/v1/auth/login", json={"login": agent.username, "password": TEST_PASSWORD})
        cookie = http.cookies["kefu_session"]
        logout = await http.post("/api/v1/auth/logout", headers={"X-CSRF-Token": login.json()["csrf_token"]})
        assert logout.status_code == 204
    async with open_socket(live_server, cookie) as ws:
        assert await close_code(ws) == 4401


@postgres_only
async def test_event_from_another_process_reaches_the_websocket(  # noqa: ANN001
    live_server, publishing_server, make, database_url: str
) -> None:
    """Server A (``live_server``) serves the WebSocket. The events come from two other processes:
    this test process (a ``PostgresBus`` of its own) and server B (``publishing_server``, via its
    request -> publish_on_commit -> LISTEN/NOTIFY)."""
    server_a, server_b = live_server, publishing_server
    assert server_a.process.pid != server_b.process.pid
    agent = await make.user("agent")
    other = await make.user("agent")
    cookie = await sign_in(server_a, agent)
    bus = PostgresBus(database_url)
    await bus.start()
    try:
        async with open_socket(server_a, cookie) as ws:
            assert (await receive(ws))["type"] == "hello"  # A is now subscribed to its bus

            # 1. Published by this test process.
            await bus.publish(Event("for.someone.else", user_ids=(other.id,)))
            from_test = Event("ticket.assigned", {"ticket_id": 11}, user_ids=(agent.id,))
            await bus.publish(from_test)
            assert Event.from_json(json.dumps(await receive(ws))) == from_test

            # 2. Published by server B while handling a request.
            await publish_via(server_b, type="for.someone.else", user_ids=[other.id])
            published = await publish_via(server_b, type="chat.offered", data={"chat_id": 3}, user_ids=[agent.id])
            assert published["pid"] == server_b.process.pid  # B's kefu process did the publishing
            received = await receive(ws)
            assert received["id"] == published["id"]
            assert received["type"] == "chat.offered" and received["data"] == {"chat_id": 3}
    finally:
        await bus.stop()
