"""The chat's sockets against ``kefu serve`` in another process, with a real WebSocket client: the visitor
drops the socket mid-stream and resumes without gaps or duplicates, a re-sent message is stored once, typing
goes both ways, and bad tokens, foreign origins and strangers are refused."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from tests.channels.chat.chat_support import agent_for, chat_queue

from conftest import TEST_PASSWORD, Factory, LiveServer, start_server

websockets = pytest.importorskip("websockets")
from websockets.asyncio.client import connect  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402

WAIT = 20.0  # generous: a sign-in hashes a password, slow on a loaded 2-core machine


@dataclass
class Scene:
    queue_code: str
    agent_username: str


@pytest.fixture(scope="module")
async def scene(app) -> Scene:  # noqa: ANN001
    queue = await chat_queue(app)
    agent = await agent_for(app, Factory(app), queue)
    return Scene(queue.code, agent.username)


@pytest.fixture(scope="module")
def server(scene: Scene, settings) -> Iterator[LiveServer]:  # noqa: ANN001
    live = start_server(
        settings,
        env={
            "KEFU_CHAT_WIDGETS": json.dumps({"default": scene.queue_code}),
            "KEFU_CHAT_POLL_SECONDS": "0.5",
            "KEFU_CHAT_POSITION_SECONDS": "0.5",
        },
    )
    yield live
    live.stop()


def ws_url(server: LiveServer, path: str) -> str:
    return server.url.replace("http://", "ws://") + path


async def start_chat(server: LiveServer, question: str = "订单查询") -> dict:
    async with httpx.AsyncClient(base_url=server.url, timeout=WAIT) as client:
        response = await client.post(
            "/api/v1/chat/visitor/conversations",
            json={"name": "王五", "phone": "13700137000", "question": question},
            headers={"Origin": server.url},
        )
    assert response.status_code == 201, response.text
    return response.json()


async def signed_in(server: LiveServer, username: str) -> httpx.AsyncClient:
    client = httpx.AsyncClient(base_url=server.url, timeout=WAIT)
    response = await client.post("/api/v1/auth/login", json={"login": username, "password": TEST_PASSWORD})
    assert response.status_code == 200, response.text
    client.headers["X-CSRF-Token"] = response.json()["csrf_token"]
    return client


async def accept_all(agent: httpx.AsyncClient) -> list[int]:
    """Accepts the chat offers ringing for the agent (waits for at least one)."""
    for _ in range(100):
        offers = (await agent.get("/api/v1/routing/offers/mine")).json()
        if offers:
            for offer in offers:
                assert (await agent.post(f"/api/v1/routing/offers/{offer['interaction_id']}/accept")).status_code < 300
            return [o["interaction_id"] for o in offers]
        await asyncio.sleep(0.1)
    raise AssertionError("no offer rang for the agent")


async def frames_until(socket, done, seen: list[dict]) -> None:  # noqa: ANN001
    """Reads frames into ``seen`` until ``done(seen)``."""
    async with asyncio.timeout(WAIT):
        while not done(seen):
            seen.append(json.loads(await socket.recv()))


def messages_in(frames: list[dict]) -> list[dict]:
    return [f for f in frames if f["type"] == "message"]


async def conversation_id(agent: httpx.AsyncClient, public_id: str) -> int:
    for _ in range(100):
        mine = (await agent.get("/api/v1/chat/conversations")).json()
        found = [c for c in mine if c["public_id"] == public_id and c["status"] == "active"]
        if found:
            return found[0]["id"]
        await asyncio.sleep(0.1)
    raise AssertionError("the chat never became the agent's")


async def test_a_dropped_visitor_socket_resumes_without_gaps_or_duplicates(server: LiveServer, scene: Scene) -> None:
    agent = await signed_in(server, scene.agent_username)
    try:
        await agent.put("/api/v1/routing/presence/me", json={"presence": "available"})
        chat = await start_chat(server)
        visitor_path = f"{chat['socket_path']}?token={chat['token']}"
        await accept_all(agent)
        conv_id = await conversation_id(agent, chat["public_id"])

        async def agent_sends(first: int, count: int) -> None:
            for i in range(first, first + count):
                sent = await agent.post(
                    f"/api/v1/chat/conversations/{conv_id}/messages",
                    json={"text": f"第{i}条", "client_msg_id": f"a{i}"},
                )
                assert sent.status_code == 201, sent.text

        got: list[dict] = []
        async with connect(ws_url(server, visitor_path), origin=server.url) as visitor:
            await visitor.send(json.dumps({"type": "resume", "after_seq": 0}))
            await agent_sends(0, 10)
            await frames_until(
                visitor, lambda s: sum(m.get("text", "").startswith("第") for m in messages_in(s)) >= 4, got
            )
        # Dropped mid-stream; the agent keeps writing meanwhile.
        await agent_sends(10, 15)
        last = max(m["seq"] for m in messages_in(got))
        async with connect(ws_url(server, visitor_path), origin=server.url) as visitor:
            await visitor.send(json.dumps({"type": "resume", "after_seq": last}))
            await frames_until(visitor, lambda s: any(m.get("text") == "第24条" for m in messages_in(s)), got)
            # A message the visitor re-sends after the reconnect (no ack seen) is stored once.
            for _ in range(2):
                await visitor.send(json.dumps({"type": "message", "client_msg_id": "v-1", "text": "收到，谢谢"}))
            acks: list[dict] = []
            await frames_until(visitor, lambda s: len([f for f in s if f["type"] == "ack"]) >= 2, acks)
        seqs = [m["seq"] for m in messages_in(got)]
        assert seqs == list(range(1, seqs[-1] + 1)), "every number once, in order, none missing"
        texts = [m["text"] for m in messages_in(got)]
        assert [t for t in texts if t.startswith("第")] == [f"第{i}条" for i in range(25)]
        ack_seqs = {f["seq"] for f in acks if f["type"] == "ack"}
        assert len(ack_seqs) == 1 and [f["created"] for f in acks if f["type"] == "ack"] == [True, False]
        history = (await agent.get(f"/api/v1/chat/conversations/{conv_id}/messages")).json()
        assert [m["text"] for m in history].count("收到，谢谢") == 1
    finally:
        await agent.aclose()


async def test_typing_goes_both_ways_and_the_agent_socket_streams_the_chat(server: LiveServer, scene: Scene) -> None:
    agent = await signed_in(server, scene.agent_username)
    try:
        await agent.put("/api/v1/routing/presence/me", json={"presence": "available"})
        chat = await start_chat(server, "能开发票吗")
        await accept_all(agent)
        await conversation_id(agent, chat["public_id"])
        cookie = f"kefu_session={agent.cookies.get('kefu_session')}"
        async with (
            connect(ws_url(server, "/chat/agent/ws"), origin=server.url, additional_headers={"Cookie": cookie}) as desk,
            connect(ws_url(server, f"{chat['socket_path']}?token={chat['token']}"), origin=server.url) as visitor,
        ):
            desk_frames: list[dict] = []
            await frames_until(
                desk,
                lambda s: any(
                    f["type"] == "conversations" and any(i["public_id"] == chat["public_id"] for i in f["items"])
                    for f in s
                ),
                desk_frames,
            )
            await desk.send(json.dumps({"type": "resume", "after": {chat["public_id"]: 0}}))
            await frames_until(
                desk, lambda s: any(f["type"] == "message" and f.get("text") == "能开发票吗" for f in s), desk_frames
            )
            await visitor.send(json.dumps({"type": "resume", "after_seq": 0}))
            await visitor.send(json.dumps({"type": "typing", "on": True}))
            await frames_until(
                desk,
                lambda s: any(f["type"] == "typing" and f["from"] == "visitor" and f["on"] for f in s),
                desk_frames,
            )
            await desk.send(json.dumps({"type": "typing", "conversation": chat["public_id"], "on": True}))
            visitor_frames: list[dict] = []
            await frames_until(
                visitor, lambda s: any(f["type"] == "typing" and f["from"] == "agent" for f in s), visitor_frames
            )
            await visitor.send(
                json.dumps({"type": "message", "client_msg_id": "t-1", "text": "请看 https://example.com"})
            )
            await frames_until(
                desk, lambda s: any(f["type"] == "message" and f.get("client_msg_id") == "t-1" for f in s), desk_frames
            )
            # Bad frames get an error frame, the socket stays open.
            await visitor.send("{not json")
            await visitor.send(json.dumps({"type": "message", "client_msg_id": "t-2", "text": "长" * 5000}))
            errors: list[dict] = []
            await frames_until(visitor, lambda s: len([f for f in s if f["type"] == "error"]) >= 2, errors)
            codes = [f["code"] for f in errors if f["type"] == "error"]
            assert codes == ["malformed_json", "invalid"]
    finally:
        await agent.aclose()


async def _close_code(url: str, **kw: object) -> int | None:
    try:
        async with connect(url, **kw) as socket:  # type: ignore[arg-type]
            await asyncio.wait_for(socket.recv(), timeout=WAIT)
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else None
    return None


async def test_bad_token_foreign_origin_and_strangers_are_refused(server: LiveServer, scene: Scene) -> None:
    chat = await start_chat(server, "拒绝测试")
    good = f"{chat['socket_path']}?token={chat['token']}"
    assert await _close_code(ws_url(server, f"{chat['socket_path']}?token=wrong"), origin=server.url) == 4401
    assert await _close_code(ws_url(server, "/chat/ws/nosuchchat?token=x"), origin=server.url) == 4401
    assert await _close_code(ws_url(server, good), origin="https://evil.example") == 4403
    assert await _close_code(ws_url(server, "/chat/agent/ws"), origin=server.url) == 4401
    async with httpx.AsyncClient(base_url=server.url, timeout=WAIT) as client:
        foreign = await client.post(
            "/api/v1/chat/visitor/conversations",
            json={"name": "x", "phone": "13700137000", "question": "?"},
            headers={"Origin": "https://evil.example"},
        )
        assert foreign.status_code == 403
        assert "access-control-allow-origin" not in foreign.headers
        preflight = await client.options(
            "/api/v1/chat/visitor/conversations",
            headers={"Origin": server.url, "Access-Control-Request-Method": "POST"},
        )
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == server.url
