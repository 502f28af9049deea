"""Access-matrix examples for the web chat routes (see tests/core/test_access_matrix.py).

Visitor routes are open to everybody who holds the chat's token (passed as ``token``); the chats made here
wait in a queue whose only member is on a break, so nothing is offered to anyone. Staff writes need the
chat to be the caller's: each agent cell gets a chat it has accepted."""

from __future__ import annotations

from typing import Any

from kefu.channels.chat import service
from kefu.channels.chat.schemas import ConversationCreate
from kefu.core.events import bind_bus
from kefu.core.policy import Principal
from kefu.routing import service as routing
from kefu.routing.models import QueueMember, RoutingQueue

V = "/api/v1/chat/visitor"
C = "/api/v1/chat/conversations"
_state: dict[str, Any] = {}


def _principal(user: Any, role: str) -> Principal:
    return Principal(user_id=user.id, username=user.username, roles=frozenset({role}), via="session")


async def _chat(app: Any, *, email: str | None = None) -> tuple[int, str, str]:
    settings = _state["settings"]
    async with app.state.session_factory() as db:
        bind_bus(db, app.state.event_bus)
        async with db.begin():
            conv, token = await service.start_conversation(
                db, settings, ConversationCreate(name="矩阵访客", phone="13600136000", email=email, question="矩阵")
            )
    return conv.id, conv.public_id, token


async def prepare(app: Any, world: dict[str, Any]) -> dict[str, Any]:
    import uuid

    holder = await world["make"].user("agent")
    async with app.state.session_factory() as db, db.begin():
        queue = RoutingQueue(code=f"mchat{uuid.uuid4().hex[:10]}", name="矩阵聊天", channel="chat")
        db.add(queue)
        await db.flush()
        db.add(QueueMember(queue_id=queue.id, user_id=holder.id))
    routing.invalidate_queues()
    async with app.state.session_factory() as db, db.begin():
        await routing.set_presence(db, _principal(holder, "agent"), holder.id, "break", reason="meal")
    _state["settings"] = app.state.settings.model_copy(update={"chat_widgets": {"default": queue.code}})
    _state["queue"] = queue
    conv_id, public_id, token = await _chat(app, email="matrix@example.test")
    _state["public_id"], _state["token"] = public_id, token
    async with app.state.session_factory() as db, db.begin():
        from kefu.channels.chat.models import ChatConversation

        conv = await db.get(ChatConversation, conv_id)
        message, _ = await service.add_attachment(
            db, _state["settings"], conv, sender="visitor", filename="说明.txt", data=b"hello"
        )
    return {"chat_conversation_id": conv_id, "chat_attachment_id": message.attachment_id}


async def _own_chat(app: Any, world: dict[str, Any], role: str) -> dict[str, int]:
    """A chat held by the calling agent (other roles get any chat: supervisors may write in every chat, the
    others are refused before the chat matters). Routing's accept path is tested in test_chat_service; here
    the chat is simply given to the agent."""
    from sqlalchemy import update

    from kefu.channels.chat.models import ChatConversation

    user = world["users"].get(role)
    conv_id, _, _ = await _chat(app)
    if role == "agent" and user is not None:
        async with app.state.session_factory() as db, db.begin():
            await db.execute(
                update(ChatConversation).where(ChatConversation.id == conv_id).values(status="active", agent_id=user.id)
            )
    return {"own_chat_id": conv_id}


async def _fresh_visitor_chat(app: Any, world: dict[str, Any], role: str) -> dict[str, Any]:
    _, public_id, token = await _chat(app)
    _state["cell_public_id"], _state["cell_token"] = public_id, token
    return {}


def _visitor(extra: dict[str, Any] | None = None, *, fresh: bool = False) -> dict[str, Any]:
    public_id = _state["cell_public_id"] if fresh else _state["public_id"]
    token = _state["cell_token"] if fresh else _state["token"]
    return {"path": {"public_id": public_id}, "params": {"token": token}, **(extra or {})}


EXAMPLES = {
    ("OPTIONS", V + "/{first}"): lambda c: {"path": {"first": "conversations"}},
    ("OPTIONS", V + "/{first}/{second}"): lambda c: {"path": {"first": "widgets", "second": "default"}},
    ("OPTIONS", V + "/{first}/{second}/{third}"): lambda c: {
        "path": {"first": "p", "second": "attachments", "third": "1"}
    },
    ("GET", V + "/widgets/{key}"): lambda c: {"path": {"key": "default"}, "params": {"lang": "en"}},
    # The app's own widget names the demo queue, absent from the test database: 422 for everybody.
    ("POST", V + "/conversations"): lambda c: {"json": {"name": "矩阵", "phone": "13600136000", "question": "?"}},
    ("GET", V + "/{public_id}/messages"): lambda c: _visitor({"params": {"token": _state["token"], "after_seq": 0}}),
    ("POST", V + "/{public_id}/messages"): lambda c: _visitor({"json": {"text": "你好"}}),
    ("POST", V + "/{public_id}/attachments"): lambda c: _visitor({"files": {"file": ("a.txt", b"hi", "text/plain")}}),
    ("GET", V + "/{public_id}/attachments/{attachment_id}"): lambda c: {
        "path": {"public_id": _state["public_id"], "attachment_id": c.ids["chat_attachment_id"]},
        "params": {"token": _state["token"]},
    },
    ("POST", V + "/{public_id}/transcript"): lambda c: _visitor({"json": {"request_id": "matrix-1"}}),
    ("POST", V + "/{public_id}/end"): lambda c: _visitor(fresh=True),
    ("GET", C): lambda c: {},
    ("GET", C + "/{conversation_id}"): lambda c: {"path": {"conversation_id": c.ids["chat_conversation_id"]}},
    ("GET", C + "/{conversation_id}/messages"): lambda c: {"path": {"conversation_id": c.ids["chat_conversation_id"]}},
    ("POST", C + "/{conversation_id}/messages"): lambda c: {
        "path": {"conversation_id": c.ids["own_chat_id"]},
        "json": {"text": "您好", "client_msg_id": "m1"},
    },
    ("POST", C + "/{conversation_id}/attachments"): lambda c: {
        "path": {"conversation_id": c.ids["own_chat_id"]},
        "files": {"file": ("b.txt", b"hi", "text/plain")},
    },
    ("GET", C + "/{conversation_id}/attachments/{attachment_id}"): lambda c: {
        "path": {"conversation_id": c.ids["chat_conversation_id"], "attachment_id": c.ids["chat_attachment_id"]}
    },
    ("POST", C + "/{conversation_id}/end"): lambda c: {"path": {"conversation_id": c.ids["own_chat_id"]}},
    ("GET", "/chat/demo"): lambda c: {},
}

PER_CELL = {
    ("POST", C + "/{conversation_id}/messages"): _own_chat,
    ("POST", C + "/{conversation_id}/attachments"): _own_chat,
    ("POST", C + "/{conversation_id}/end"): _own_chat,
    ("POST", V + "/{public_id}/end"): _fresh_visitor_chat,
}
