"""Every agent message reaches the visitor exactly once, in order, however the sends race and however the
connection carrying a send fails.

- Many agent messages sent at once to one chat, some of them twice with the same ``client_msg_id`` (a
  retried send racing the first), while the visitor's socket delivers: the numbers have no gaps, each one
  reaches the socket once, in order, and each client id is stored once.
- The benchmark's send (``benchmarks/chat_messages.py``) against ``kefu serve`` behind a proxy that drops a
  connection the way a server closing an idle kept-alive connection does: the request never reaches the
  server, or the server stores it and the answer is lost. A send that gave up there lost the message for
  good (the benchmark waited 120 s for an answer that was never stored); sending again with the same
  ``client_msg_id`` stores it once and the visitor sees it once."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.exc import IntegrityError
from tests.channels.chat.chat_support import (
    accept,
    agent_for,
    chat_queue,
    chat_settings,
    conversation,
    messages,
    principal,
    start_chat,
)

from conftest import TEST_PASSWORD, Factory, LiveServer, start_server
from kefu.channels.chat import service
from kefu.channels.chat.hub import hub_of
from kefu.channels.chat.socket import VisitorSocket
from kefu.core.events import bind_bus

websockets = pytest.importorskip("websockets")
from websockets.asyncio.client import connect  # noqa: E402

WAIT = 20.0
REPO = Path(__file__).resolve().parents[3]


class FrameSink:
    """What a chat socket needs of a WebSocket: the app, and somewhere to send frames."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.frames: list[dict[str, Any]] = []
        self.arrived = asyncio.Event()

    async def send_text(self, text: str) -> None:
        self.frames.append(json.loads(text))
        self.arrived.set()


def seqs(frames: list[dict[str, Any]]) -> list[int]:
    return [f["seq"] for f in frames if f["type"] == "message"]


async def test_racing_agent_sends_reach_the_visitor_socket_once_each_in_order(app, make, settings) -> None:  # noqa: ANN001
    queue = await chat_queue(app)
    agent = await agent_for(app, make, queue)
    cfg = chat_settings(settings, queue, chat_poll_seconds=0.2)
    conv, _token = await start_chat(app, cfg)
    await accept(app, cfg, agent, conv.id)
    conv = await conversation(app, conv.id)  # as stored (the agent's greeting took a number)
    assert conv.status == "active"
    start = conv.last_seq

    hub = hub_of(app)
    sink = FrameSink(app)
    visitor = VisitorSocket(sink, hub, conv)  # type: ignore[arg-type]
    inbox = hub.join(visitor)
    hub.watch(visitor, "conversation", conv.id)
    visitor.cursors[conv.id] = start  # the client resumed after what it had
    tasks = [asyncio.create_task(visitor.listen(inbox)), asyncio.create_task(visitor.pump())]
    who = principal(agent)

    async def send(key: str) -> int:
        for attempt in (1, 2):  # as the API does: a lost race on the client id is retried and finds the row
            try:
                async with app.state.session_factory() as db:
                    bind_bus(db, app.state.event_bus)
                    async with db.begin():
                        message, _created = await service.agent_message(db, cfg, who, conv.id, f"答复 {key}", key)
                        return message.seq
            except IntegrityError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    keys = [f"k{i}" for i in range(30)]
    try:
        # Every fifth message is sent twice at once (a retry racing the first send).
        stored = await asyncio.gather(*(send(k) for k in keys + keys[::5]))
        by_key = dict(zip(keys + keys[::5], stored, strict=True))
        assert all(by_key[k] == s for k, s in zip(keys[::5], stored[len(keys) :], strict=True))
        last = start + len(keys)
        assert sorted(set(stored)) == list(range(start + 1, last + 1))  # no gaps, no number twice

        async with asyncio.timeout(WAIT):
            while not seqs(sink.frames) or seqs(sink.frames)[-1] < last:
                sink.arrived.clear()
                await sink.arrived.wait()
        await asyncio.sleep(0.5)  # more than two quiet polls: nothing else may come
        assert seqs(sink.frames) == list(range(start + 1, last + 1))
        texts = [f["text"] for f in sink.frames if f["type"] == "message"]
        assert sorted(texts) == sorted(f"答复 {k}" for k in keys)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        hub.leave(visitor)
    rows = [m for m in await messages(app, conv.id) if m.seq > start]
    assert [m.seq for m in rows] == list(range(start + 1, last + 1))
    assert sorted(m.client_msg_id for m in rows) == sorted(keys)


# --- the benchmark's send, through a connection that fails ----------------------------------------
def _benchmark() -> Any:
    spec = importlib.util.spec_from_file_location("kefu_bench_chat_messages", REPO / "benchmarks/chat_messages.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FlakyProxy:
    """A TCP proxy to the server that can fail the next request as a closing kept-alive connection does:
    ``refuse`` closes the connection before the request reaches the server; ``lose_answer`` passes the
    request on and closes the connection instead of passing the answer back."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.refuse = 0
        self.lose_answer = 0
        self.server: asyncio.Server | None = None
        self.url = ""

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection(*self.upstream)

        async def to_server() -> None:
            while data := await client_r.read(65536):
                if self.refuse:
                    self.refuse -= 1
                    return  # the request is dropped unanswered
                up_w.write(data)
                await up_w.drain()

        async def to_client() -> None:
            while data := await up_r.read(65536):
                if self.lose_answer:
                    self.lose_answer -= 1
                    return  # stored, but the answer never arrives
                client_w.write(data)
                await client_w.drain()

        pipes = [asyncio.create_task(to_server()), asyncio.create_task(to_client())]
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pipe in pipes:
                pipe.cancel()
            for writer in (client_w, up_w):
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()


@pytest.fixture(scope="module")
async def scene(app) -> tuple[str, str]:  # noqa: ANN001
    queue = await chat_queue(app)
    agent = await agent_for(app, Factory(app), queue)
    return queue.code, agent.username


@pytest.fixture(scope="module")
def server(scene: tuple[str, str], settings) -> Iterator[LiveServer]:  # noqa: ANN001
    live = start_server(
        settings, env={"KEFU_CHAT_WIDGETS": json.dumps({"default": scene[0]}), "KEFU_CHAT_POLL_SECONDS": "0.5"}
    )
    yield live
    live.stop()


async def _open_accepted_chat(server: LiveServer, agent: httpx.AsyncClient) -> tuple[dict[str, Any], int]:
    async with httpx.AsyncClient(base_url=server.url, timeout=WAIT) as visitor:
        response = await visitor.post(
            "/api/v1/chat/visitor/conversations",
            json={"name": "赵六", "phone": "13600136000", "question": "发票"},
            headers={"Origin": server.url},
        )
    assert response.status_code == 201, response.text
    chat = response.json()
    async with asyncio.timeout(WAIT):
        while True:
            for offer in (await agent.get("/api/v1/routing/offers/mine")).json():
                await agent.post(f"/api/v1/routing/offers/{offer['interaction_id']}/accept")
            mine = (await agent.get("/api/v1/chat/conversations")).json()
            found = [c["id"] for c in mine if c["public_id"] == chat["public_id"] and c["status"] == "active"]
            if found:
                return chat, found[0]
            await asyncio.sleep(0.1)


async def test_a_reply_whose_connection_fails_is_sent_again_stored_once_and_shown_once(
    server: LiveServer, scene: tuple[str, str]
) -> None:
    bench = _benchmark()
    proxy = FlakyProxy(server.url)
    await proxy.start()
    agent = httpx.AsyncClient(base_url=proxy.url, timeout=WAIT)
    try:
        login = await agent.post("/api/v1/auth/login", json={"login": scene[1], "password": TEST_PASSWORD})
        assert login.status_code == 200, login.text
        agent.headers["X-CSRF-Token"] = login.json()["csrf_token"]
        chat, conv_id = await _open_accepted_chat(server, agent)
        url = f"/api/v1/chat/conversations/{conv_id}/messages"
        socket_url = server.url.replace("http://", "ws://") + f"{chat['socket_path']}?token={chat['token']}"
        async with connect(socket_url, origin=server.url) as socket:
            hello = json.loads(await socket.recv())
            await socket.send(json.dumps({"type": "resume", "after_seq": hello["last_seq"]}))

            # Without a second attempt each of these sends fails, the first one losing its message for good.
            with pytest.raises(httpx.TransportError):
                proxy.refuse = 1
                await agent.post(url, json={"text": "不会到达", "client_msg_id": "never"})
            retried: list[str] = []
            proxy.refuse = 1
            first = await bench.post_message(agent, url, {"text": "第一条", "client_msg_id": "r-1"}, retried)
            proxy.lose_answer = 1
            second = await bench.post_message(agent, url, {"text": "第二条", "client_msg_id": "r-2"}, retried)
            assert len(retried) == 2, retried
            assert first["created"] is True  # the first attempt never reached the server
            assert second["created"] is False  # the first attempt stored it; the second found it
            assert second["seq"] == first["seq"] + 1

            seen: list[dict[str, Any]] = []
            async with asyncio.timeout(WAIT):
                while not any(f.get("client_msg_id") == "r-2" for f in seen):
                    frame = json.loads(await socket.recv())
                    if frame["type"] == "message" and frame["sender"] == "agent":
                        seen.append(frame)
            with contextlib.suppress(TimeoutError):  # two quiet polls: nothing more may come
                async with asyncio.timeout(1.2):
                    while True:
                        frame = json.loads(await socket.recv())
                        if frame["type"] == "message":
                            seen.append(frame)
        assert [(f["client_msg_id"], f["text"]) for f in seen] == [("r-1", "第一条"), ("r-2", "第二条")]
        stored = (await agent.get(url, params={"after_seq": hello["last_seq"]})).json()
        assert [m["client_msg_id"] for m in stored if m["sender"] == "agent"] == ["r-1", "r-2"]
    finally:
        await agent.aclose()
        await proxy.stop()
