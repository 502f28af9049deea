"""REST routes of the web chat.

Visitor routes (``/api/v1/chat/visitor/...``) are anonymous: the widget proves which chat is its own with
the conversation's token (``X-Chat-Token`` header, or ``token`` query parameter for links and sockets).
They answer CORS requests from the allowed widget origins (``chat_allowed_origins``), errors included, and
never use cookies. Staff routes (``/api/v1/chat/conversations/...``) are the agent's side: the chat's
agent or a supervisor writes, staff who may see the contact read.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from kefu.channels.chat import service
from kefu.channels.chat.models import ChatConversation, Sender
from kefu.channels.chat.schemas import (
    Accepted,
    ConversationCreate,
    ConversationOut,
    ConversationStarted,
    MessageIn,
    MessageOut,
    TranscriptIn,
    WidgetKey,
    WidgetOut,
)
from kefu.channels.chat.service import _
from kefu.core import files
from kefu.core.errors import ApiError, Invalid
from kefu.core.events import bind_bus
from kefu.core.i18n import Translator
from kefu.core.policy import Principal, authorize
from kefu.core.schemas import IdParam
from kefu.db.session import get_db

T = TypeVar("T")
Db = Annotated[AsyncSession, Depends(get_db)]
PublicId = Annotated[str, Path(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_-]+$")]
V = "/api/v1/chat/visitor"
C = "/api/v1/chat/conversations"
CLIENT_ID = r"^[A-Za-z0-9_.:-]{1,64}$"

# The widget's words, translated on the server from the message catalogue (the widget has no catalogue).
WIDGET_LABELS = {
    "launcher": _("Chat with us"),
    "title": _("Online service"),
    "name": _("Your name"),
    "email": _("Email"),
    "phone": _("Phone"),
    "question": _("Your question"),
    "start": _("Start chat"),
    "send": _("Send"),
    "placeholder": _("Type a message"),
    "attach": _("Send a file"),
    "typing": _("Typing…"),
    "position": _("You are number %(position)s in the queue."),
    "expected": _("Expected wait: about %(minutes)s min."),
    "ringing": _("An agent is about to answer."),
    "transcript": _("Email me the transcript"),
    "transcript_sent": _("The transcript is on its way."),
    "end": _("End chat"),
    "closed": _("This chat has ended."),
    "reconnecting": _("Reconnecting…"),
    "required": _("Please fill in the required fields."),
    "contact": _("Email or phone"),
    "failed": _("Not sent. Try again."),
    "close": _("Close"),
    "you": _("You"),
    "new_chat": _("Start a new chat"),
}


def _cors_headers(request: Request) -> dict[str, str]:
    origin = request.headers.get("origin")
    if not origin or not service.origin_allowed(request.app.state.settings, origin):
        return {"Vary": "Origin"}
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Methods": "GET, POST",
        "Access-Control-Allow-Headers": "Content-Type, X-Chat-Token",
        "Access-Control-Max-Age": "600",
        "Vary": "Origin",
    }


class VisitorRoute(APIRoute):
    """Adds the CORS answer to every visitor response, refusals included (the widget must read those)."""

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        handler = super().get_route_handler()

        async def with_cors(request: Request) -> Response:
            try:
                response = await handler(request)
            except (ApiError, RequestValidationError) as exc:
                kind = RequestValidationError if isinstance(exc, RequestValidationError) else ApiError
                answer = request.app.exception_handlers[kind]
                response = await answer(request, exc)
            response.headers.update(_cors_headers(request))
            return response

        return with_cors


visitor = APIRouter(route_class=VisitorRoute, tags=["chat"])
staff = APIRouter(tags=["chat"])


async def write(request: Request, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """``work`` in one transaction, retried once when a concurrent duplicate lost on a unique constraint
    (the retry finds the stored row)."""
    factory = request.app.state.session_factory
    for attempt in (1, 2):
        try:
            async with factory() as db:
                bind_bus(db, request.app.state.event_bus)
                async with db.begin():
                    return await work(db)
        except IntegrityError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _token(header: str | None, query: str | None) -> str:
    return header or query or ""


async def _visitor_conv(db: AsyncSession, public_id: str, token: str) -> ChatConversation:
    return await service.by_token(db, public_id, token)


Token = Annotated[str | None, Header(alias="X-Chat-Token", max_length=128)]
TokenQuery = Annotated[str | None, Query(alias="token", max_length=128)]


# --- visitor ---------------------------------------------------------------------------------------
@visitor.options(V + "/{first}", include_in_schema=False)
@visitor.options(V + "/{first}/{second}", include_in_schema=False)
@visitor.options(V + "/{first}/{second}/{third}", include_in_schema=False)
async def preflight(request: Request, principal: Principal = authorize("chat_widget", "read")) -> Response:
    """CORS preflight for the widget on an allowed site (every visitor path has one to three parts)."""
    return Response(status_code=204)


@visitor.get(V + "/widgets/{key}")
async def widget_config(
    request: Request,
    key: Annotated[WidgetKey, Path()],
    lang: Annotated[str, Query(max_length=16)] = "zh_CN",
    principal: Principal = authorize("chat_widget", "read"),
) -> WidgetOut:
    """What the widget shows: required pre-chat fields, limits and its words in the page's language."""
    settings = request.app.state.settings
    config = service.widget(settings, key)
    translator = Translator("en" if lang.lower().startswith("en") else "zh_CN")
    return WidgetOut(
        key=config.key,
        required=list(config.required),
        max_chars=settings.chat_message_max_chars,
        max_bytes=settings.chat_attachment_max_bytes,
        labels={name: translator.gettext(text) for name, text in WIDGET_LABELS.items()},
    )


@visitor.post(V + "/conversations", status_code=201)
async def start(
    request: Request, body: ConversationCreate, principal: Principal = authorize("chat_visitor", "create")
) -> ConversationStarted:
    """The pre-chat form: opens the chat (and its contact, case and queue entry); the token is returned once."""
    settings = request.app.state.settings
    origin = request.headers.get("origin")
    if not service.origin_allowed(settings, origin):
        raise ApiError(403, "forbidden", "this site may not use the chat")

    async def work(db: AsyncSession) -> tuple[ChatConversation, str]:
        return await service.start_conversation(db, settings, body, origin=origin)

    conv, token = await write(request, work)
    return ConversationStarted(
        public_id=conv.public_id,
        token=token,
        status=conv.status,
        last_seq=conv.last_seq,
        socket_path=f"/chat/ws/{conv.public_id}",
    )


@visitor.get(V + "/{public_id}/messages")
async def visitor_messages(
    public_id: PublicId,
    db: Db,
    token: Token = None,
    token_q: TokenQuery = None,
    after_seq: Annotated[int, Query(ge=0, le=2**31)] = 0,
    principal: Principal = authorize("chat_widget", "read"),
) -> list[MessageOut]:
    """The messages after ``after_seq`` in order (what the socket sends on resume, for clients without one)."""
    conv = await _visitor_conv(db, public_id, _token(token, token_q))
    return [MessageOut(**service.message_dict(m, a)) for m, a in await service.messages_after(db, conv.id, after_seq)]


@visitor.post(V + "/{public_id}/messages", status_code=201)
async def visitor_send(
    request: Request,
    public_id: PublicId,
    body: MessageIn,
    token: Token = None,
    token_q: TokenQuery = None,
    principal: Principal = authorize("chat_visitor", "create"),
) -> Accepted:
    settings = request.app.state.settings

    async def work(db: AsyncSession) -> Accepted:
        conv = await _visitor_conv(db, public_id, _token(token, token_q))
        message, created = await service.visitor_message(db, settings, conv, body.text, body.client_msg_id)
        return Accepted(created=created, seq=message.seq)

    return await write(request, work)


async def _read_upload(file: UploadFile, limit: int) -> bytes:
    data = await file.read(limit + 1)  # one byte more tells "too large" without reading it all
    files.check_size(data, limit)
    return data


@visitor.post(V + "/{public_id}/attachments", status_code=201)
async def visitor_attach(
    request: Request,
    public_id: PublicId,
    file: UploadFile,
    token: Token = None,
    token_q: TokenQuery = None,
    client_msg_id: Annotated[str | None, Query(pattern=CLIENT_ID)] = None,
    principal: Principal = authorize("chat_visitor", "create"),
) -> Accepted:
    settings = request.app.state.settings
    data = await _read_upload(file, settings.chat_attachment_max_bytes)

    async def work(db: AsyncSession) -> Accepted:
        conv = await _visitor_conv(db, public_id, _token(token, token_q))
        message, created = await service.add_attachment(
            db,
            settings,
            conv,
            sender=Sender.visitor,
            filename=file.filename or "attachment",
            data=data,
            author_name=conv.visitor_name,
            client_msg_id=client_msg_id,
        )
        return Accepted(created=created, seq=message.seq)

    return await write(request, work)


@visitor.get(V + "/{public_id}/attachments/{attachment_id}")
async def visitor_download(
    public_id: PublicId,
    attachment_id: IdParam,
    db: Db,
    token: Token = None,
    token_q: TokenQuery = None,
    principal: Principal = authorize("chat_widget", "read"),
) -> Response:
    conv = await _visitor_conv(db, public_id, _token(token, token_q))
    found = await service.attachment_of(db, conv, attachment_id)
    return Response(found.content, media_type=found.content_type, headers=files.download_headers(found.filename))


@visitor.post(V + "/{public_id}/transcript", status_code=202)
async def visitor_transcript(
    request: Request,
    public_id: PublicId,
    body: TranscriptIn,
    token: Token = None,
    token_q: TokenQuery = None,
    principal: Principal = authorize("chat_visitor", "create"),
) -> Accepted:
    """Mail the transcript (once per ``request_id``)."""

    async def work(db: AsyncSession) -> Accepted:
        conv = await _visitor_conv(db, public_id, _token(token, token_q))
        _job, created = await service.request_transcript(db, conv, email=body.email, request_id=body.request_id)
        return Accepted(created=created)

    accepted = await write(request, work)
    worker = getattr(request.app.state, "worker", None)
    if worker is not None and accepted.created:
        worker.wake()
    return accepted


@visitor.post(V + "/{public_id}/end")
async def visitor_end(
    request: Request,
    public_id: PublicId,
    token: Token = None,
    token_q: TokenQuery = None,
    principal: Principal = authorize("chat_visitor", "create"),
) -> dict[str, Any]:
    settings = request.app.state.settings

    async def work(db: AsyncSession) -> dict[str, Any]:
        conv = await _visitor_conv(db, public_id, _token(token, token_q))
        ended = await service.end_by_visitor(db, settings, conv)
        return {"status": ended.status, "closed_reason": ended.closed_reason}

    return await write(request, work)


# --- staff -----------------------------------------------------------------------------------------
@staff.get(C)
async def list_conversations(
    request: Request,
    status: Annotated[str | None, Query(pattern=r"^(waiting|active|closed)$")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    principal: Principal = authorize("chat_conversation", "list"),
) -> list[ConversationOut]:
    """The caller's open chats (``status`` to choose); supervisors see everyone's."""

    async def work(db: AsyncSession) -> list[ConversationOut]:
        if principal.user_id is not None:
            await service.settle_for_agent(db, request.app.state.settings, principal.user_id)
        found = await service.list_for_staff(db, principal, status=status, limit=limit)
        return [ConversationOut(**service.conversation_dict(c)) for c in found]

    return await write(request, work)


@staff.get(C + "/{conversation_id}")
async def get_conversation(
    conversation_id: IdParam, db: Db, principal: Principal = authorize("chat_conversation", "read", by_id=True)
) -> ConversationOut:
    return ConversationOut(**service.conversation_dict(await service.for_staff(db, principal, conversation_id)))


@staff.get(C + "/{conversation_id}/messages")
async def staff_messages(
    conversation_id: IdParam,
    db: Db,
    after_seq: Annotated[int, Query(ge=0, le=2**31)] = 0,
    principal: Principal = authorize("chat_conversation", "read", by_id=True),
) -> list[MessageOut]:
    conv = await service.for_staff(db, principal, conversation_id)
    return [MessageOut(**service.message_dict(m, a)) for m, a in await service.messages_after(db, conv.id, after_seq)]


@staff.post(C + "/{conversation_id}/messages", status_code=201)
async def staff_send(
    request: Request,
    conversation_id: IdParam,
    body: MessageIn,
    principal: Principal = authorize("chat_conversation", "update", by_id=True),
) -> Accepted:
    """An agent's message (only the chat's agent or a supervisor)."""
    settings = request.app.state.settings

    async def work(db: AsyncSession) -> Accepted:
        message, created = await service.agent_message(
            db, settings, principal, conversation_id, body.text, body.client_msg_id
        )
        return Accepted(created=created, seq=message.seq)

    return await write(request, work)


@staff.post(C + "/{conversation_id}/attachments", status_code=201)
async def staff_attach(
    request: Request,
    conversation_id: IdParam,
    file: UploadFile,
    client_msg_id: Annotated[str | None, Query(pattern=CLIENT_ID)] = None,
    principal: Principal = authorize("chat_conversation", "update", by_id=True),
) -> Accepted:
    settings = request.app.state.settings
    data = await _read_upload(file, settings.chat_attachment_max_bytes)

    async def work(db: AsyncSession) -> Accepted:
        conv = await service.for_staff(db, principal, conversation_id, settings)
        service.check_may_write(principal, conv)
        if conv.status != "active":
            raise Invalid("this chat is not open for messages", {"status": conv.status})
        message, created = await service.add_attachment(
            db,
            settings,
            conv,
            sender=Sender.agent,
            filename=file.filename or "attachment",
            data=data,
            author_id=principal.user_id,
            author_name=principal.display_name or principal.username,
            client_msg_id=client_msg_id,
        )
        return Accepted(created=created, seq=message.seq)

    return await write(request, work)


@staff.get(C + "/{conversation_id}/attachments/{attachment_id}")
async def staff_download(
    conversation_id: IdParam,
    attachment_id: IdParam,
    db: Db,
    principal: Principal = authorize("chat_conversation", "read", by_id=True),
) -> Response:
    conv = await service.for_staff(db, principal, conversation_id)
    found = await service.attachment_of(db, conv, attachment_id)
    return Response(found.content, media_type=found.content_type, headers=files.download_headers(found.filename))


@staff.post(C + "/{conversation_id}/end")
async def staff_end(
    request: Request,
    conversation_id: IdParam,
    principal: Principal = authorize("chat_conversation", "update", by_id=True),
) -> ConversationOut:
    """End the chat; the contact moves to wrap-up on the agent's desk."""
    settings = request.app.state.settings

    async def work(db: AsyncSession) -> ConversationOut:
        conv = await service.end_by_agent(db, settings, principal, conversation_id)
        return ConversationOut(**service.conversation_dict(conv))

    return await write(request, work)


router = APIRouter()
router.include_router(visitor)
router.include_router(staff)
