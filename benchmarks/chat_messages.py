"""Web chat messages per second end to end, with 200 open chats.

    .venv/bin/python benchmarks/chat_messages.py [--database auto|sqlite|postgresql] [--chats 200]
                                                 [--agents 10] [--rounds 5]

Starts ``kefu serve`` (one process) on a fresh database: PostgreSQL when reachable (``auto``), else SQLite.
Set-up (not timed): a chat queue with ``--agents`` agents (each may hold 20 chats), ``--chats`` chats opened
through the widget's API, every offer accepted through the routing API, a visitor WebSocket per chat and a
desk WebSocket per agent (``/chat/agent/ws``), each resumed after the last message it has.

Measured: ``--rounds`` rounds; in each, every visitor sends one message on its socket and, as soon as the
agent's socket has it, the agent answers through ``POST /api/v1/chat/conversations/{id}/messages``; the
round ends when every visitor has its answer. Latency is sent -> received by the other side's socket (both
directions, wall clock, one machine). Prints one JSON document: messages/s (both directions together),
p50/p95/max latency per direction, the machine's load average when the rounds began, and the set-up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_support import PASSWORD, fresh_database, kefu_server, percentile, postgres_reachable  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402

QUEUE = "bench-chat"


async def _setup_database(database_url: str, agents: int) -> list[str]:
    """The chat queue and its agents (made with the services, in this process)."""
    import kefu.db.models  # noqa: F401 - every table, for the foreign keys
    from kefu.core.audit import Actor
    from kefu.db.engine import make_engine, make_session_factory
    from kefu.identity import service as identity
    from kefu.routing.models import QueueMember, RoutingQueue

    engine = make_engine(database_url)
    factory = make_session_factory(engine)
    names = []
    try:
        async with factory() as db, db.begin():
            queue = RoutingQueue(code=QUEUE, name="Bench chat", channel="chat", offer_timeout_seconds=600)
            db.add(queue)
            await db.flush()
            for i in range(agents):
                name = f"chatagent{i}"
                user = await identity.create_user(
                    db,
                    Actor.system("bench"),
                    username=name,
                    display_name=f"坐席{i}",
                    roles=("agent",),
                    password=PASSWORD,
                )
                db.add(QueueMember(queue_id=queue.id, user_id=user.id))
                names.append(name)
    finally:
        await engine.dispose()
    return names


async def _set_capacity(database_url: str, per_agent: int) -> None:
    from sqlalchemy import update

    from kefu.db.engine import make_engine, make_session_factory
    from kefu.routing.models import AgentState

    engine = make_engine(database_url)
    try:
        async with make_session_factory(engine)() as db, db.begin():
            await db.execute(update(AgentState).values(cap_chat=per_agent))
    finally:
        await engine.dispose()


# ``kefu serve`` (uvicorn) closes a connection idle for 5 s. httpx keeps idle connections 5 s too, so a
# request sent on one just as the server closes it fails with a ReadError (nothing was answered, and perhaps
# nothing stored). Idle connections are dropped well before the server's limit, and a message that still
# fails is sent again with the same ``client_msg_id`` (stored once however often it is sent).
KEEPALIVE_SECONDS = 2.0
SEND_ATTEMPTS = 5


def _limits(max_connections: int) -> httpx.Limits:
    return httpx.Limits(max_connections=max_connections, keepalive_expiry=KEEPALIVE_SECONDS)


async def post_message(
    client: httpx.AsyncClient, url: str, body: dict[str, Any], retried: list[str] | None = None
) -> dict[str, Any]:
    """POST a chat message until the server answers it: a lost connection or a busy server (503) is retried
    with the same body (its ``client_msg_id`` makes the retry harmless); any other refusal raises."""
    for attempt in range(1, SEND_ATTEMPTS + 1):
        try:
            response = await client.post(url, json=body)
        except httpx.TransportError as exc:
            if attempt == SEND_ATTEMPTS:
                raise
            why = type(exc).__name__
        else:
            if response.status_code != 503 or attempt == SEND_ATTEMPTS:
                response.raise_for_status()
                return response.json()
            why = "503"
        if retried is not None:
            retried.append(why)
        await asyncio.sleep(0.05 * attempt)
    raise AssertionError("unreachable")


async def _agent_client(base: str, username: str) -> httpx.AsyncClient:
    client = httpx.AsyncClient(base_url=base, timeout=60, limits=_limits(50))
    login = (await client.post("/api/v1/auth/login", json={"login": username, "password": PASSWORD})).json()
    client.headers["X-CSRF-Token"] = login["csrf_token"]
    return client


async def run(database_url: str, data_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    env = {"KEFU_CHAT_WIDGETS": json.dumps({"default": QUEUE}), "KEFU_CHAT_MAX_WAIT_SECONDS": "0"}
    async with kefu_server(database_url, data_dir, extra_env=env) as base:
        names = await _setup_database(database_url, args.agents)
        agents = [await _agent_client(base, n) for n in names]
        ws_base = base.replace("http://", "ws://")
        try:
            for agent in agents:
                (await agent.put("/api/v1/routing/presence/me", json={"presence": "available"})).raise_for_status()
            await _set_capacity(database_url, 20)
            # --- the chats, accepted ---------------------------------------------------------------
            visitor_http = httpx.AsyncClient(base_url=base, timeout=60, limits=_limits(20))
            gate = asyncio.Semaphore(20)

            async def open_chat(i: int) -> dict[str, Any]:
                async with gate:
                    r = await visitor_http.post(
                        "/api/v1/chat/visitor/conversations",
                        json={"name": f"访客{i}", "phone": f"1380000{i:04d}", "question": f"问题 {i}"},
                        headers={"Origin": base},
                    )
                    r.raise_for_status()
                    return r.json()

            chats = await asyncio.gather(*(open_chat(i) for i in range(args.chats)))
            await visitor_http.aclose()
            held: dict[str, tuple[int, int]] = {}  # public id -> (agent index, conversation id)
            deadline = time.monotonic() + 120
            while len(held) < len(chats) and time.monotonic() < deadline:
                for index, agent in enumerate(agents):
                    for offer in (await agent.get("/api/v1/routing/offers/mine")).json():
                        await agent.post(f"/api/v1/routing/offers/{offer['interaction_id']}/accept")
                    for conv in (await agent.get("/api/v1/chat/conversations")).json():
                        held[conv["public_id"]] = (index, conv["id"])
                await asyncio.sleep(0.2)
            if len(held) < len(chats):
                raise RuntimeError(f"only {len(held)} of {len(chats)} chats were accepted")

            # --- sockets -----------------------------------------------------------------------------
            sent_at: dict[str, float] = {}
            to_agent_ms: list[float] = []
            to_visitor_ms: list[float] = []
            answered: dict[str, asyncio.Event] = {c["public_id"]: asyncio.Event() for c in chats}
            replies: asyncio.Queue[tuple[int, int, str]] = asyncio.Queue()

            async def agent_reader(index: int, socket: Any) -> None:
                seen: dict[str, int] = {}  # what this desk has: a re-sent list must not skip past it
                async for raw in socket:
                    frame = json.loads(raw)
                    if frame["type"] == "conversations":
                        after = {i["public_id"]: seen.setdefault(i["public_id"], i["last_seq"]) for i in frame["items"]}
                        await socket.send(json.dumps({"type": "resume", "after": after}))
                        continue
                    if frame["type"] == "message":
                        seen[frame["conversation"]] = frame["seq"]
                    if frame["type"] == "message" and frame["sender"] == "visitor":
                        key = frame.get("client_msg_id") or ""
                        if key in sent_at:
                            to_agent_ms.append((time.perf_counter() - sent_at.pop(key)) * 1000)
                            replies.put_nowait((index, held[frame["conversation"]][1], key))

            retried: list[str] = []  # why a reply was sent again (a lost connection, a busy server)
            failed: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()
            sending: set[asyncio.Task[Any]] = set()

            def reply_done(task: asyncio.Task[Any]) -> None:
                sending.discard(task)
                if not task.cancelled() and task.exception() is not None and not failed.done():
                    failed.set_result(task.exception())  # ends the round at once, with the reason

            async def responder() -> None:
                while True:
                    index, conv_id, key = await replies.get()
                    reply = "r" + key
                    sent_at[reply] = time.perf_counter()
                    task = asyncio.get_running_loop().create_task(
                        post_message(
                            agents[index],
                            f"/api/v1/chat/conversations/{conv_id}/messages",
                            {"text": "好的", "client_msg_id": reply},
                            retried,
                        )
                    )
                    sending.add(task)
                    task.add_done_callback(reply_done)

            async def visitor_reader(public_id: str, socket: Any) -> None:
                async for raw in socket:
                    frame = json.loads(raw)
                    if frame["type"] == "message" and frame["sender"] == "agent":
                        key = frame.get("client_msg_id") or ""
                        if key in sent_at:
                            to_visitor_ms.append((time.perf_counter() - sent_at.pop(key)) * 1000)
                            answered[public_id].set()

            cookies = [f"kefu_session={a.cookies.get('kefu_session')}" for a in agents]
            agent_sockets = [
                await connect(ws_base + "/chat/agent/ws", origin=base, additional_headers={"Cookie": c}, max_queue=None)
                for c in cookies
            ]
            visitor_sockets = {}
            for chat in chats:
                socket = await connect(
                    ws_base + f"{chat['socket_path']}?token={chat['token']}", origin=base, max_queue=None
                )
                hello = json.loads(await socket.recv())
                # From the last message on: the history is not measured.
                await socket.send(json.dumps({"type": "resume", "after_seq": hello["last_seq"]}))
                visitor_sockets[chat["public_id"]] = socket
            tasks = [asyncio.create_task(agent_reader(i, s)) for i, s in enumerate(agent_sockets)]
            tasks += [asyncio.create_task(visitor_reader(p, s)) for p, s in visitor_sockets.items()]
            tasks.append(asyncio.create_task(responder()))
            await asyncio.sleep(1.0)  # every socket has resumed

            # --- the measured rounds -----------------------------------------------------------------
            load = os.getloadavg()[0]  # the machine may be shared: a busy one stretches every latency
            started = time.perf_counter()
            for _ in range(args.rounds):
                for event in answered.values():
                    event.clear()
                for socket in visitor_sockets.values():
                    key = "v" + uuid.uuid4().hex[:16]
                    sent_at[key] = time.perf_counter()
                    await socket.send(json.dumps({"type": "message", "client_msg_id": key, "text": "你好，请问"}))
                everyone = asyncio.ensure_future(asyncio.gather(*(e.wait() for e in answered.values())))
                done, _ = await asyncio.wait(
                    {everyone, failed}, timeout=args.timeout, return_when=asyncio.FIRST_COMPLETED
                )
                if everyone not in done:
                    everyone.cancel()
                    if failed.done():
                        raise RuntimeError(f"an agent's reply was not accepted: {failed.result()!r}")
                    raise RuntimeError(
                        f"round timed out: {len(to_agent_ms)} reached agents, {len(to_visitor_ms)} reached visitors"
                    )
            elapsed = time.perf_counter() - started
            for task in tasks:
                task.cancel()
            for socket in [*agent_sockets, *visitor_sockets.values()]:
                await socket.close()
        finally:
            for agent in agents:
                await agent.aclose()

    def stats(values: list[float]) -> dict[str, float]:
        ordered = sorted(values)
        return {
            "count": len(ordered),
            "p50_ms": round(percentile(ordered, 0.50), 1),
            "p95_ms": round(percentile(ordered, 0.95), 1),
            "max_ms": round(ordered[-1], 1),
        }

    messages = len(to_agent_ms) + len(to_visitor_ms)
    return {
        "messages": messages,
        "seconds": round(elapsed, 2),
        "messages_per_second": round(messages / elapsed, 1),
        "load_average_1m_before": round(load, 2),
        "visitor_to_agent": stats(to_agent_ms),
        "agent_to_visitor": stats(to_visitor_ms),
        # Replies sent again after a lost connection or a busy server (each still stored and shown once).
        "reply_retries": len(retried),
        "reply_retry_reasons": {why: retried.count(why) for why in sorted(set(retried))},
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", choices=("auto", "sqlite", "postgresql"), default="auto")
    parser.add_argument("--chats", type=int, default=200)
    parser.add_argument("--agents", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=120, help="seconds a round may take")
    args = parser.parse_args()
    if args.chats > args.agents * 20:
        parser.error("each agent holds at most 20 chats: add agents")
    backend = args.database
    if backend == "auto":
        backend = "postgresql" if await postgres_reachable() else "sqlite"
    async with fresh_database(backend) as (database_url, data_dir):
        result = await run(database_url, data_dir, args)
    print(
        json.dumps(
            {
                "benchmark": "chat_messages",
                "database": backend,
                "chats": args.chats,
                "agents": args.agents,
                "rounds": args.rounds,
                "python": platform.python_version(),
                **result,
            },
            ensure_ascii=False,
            indent=2,
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
