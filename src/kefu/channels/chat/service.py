"""Web chat: the rules, and the only place that writes chat tables.

A conversation starts from the widget's pre-chat form and goes through ``channels.intake`` like every
inbound contact (customer by identity, interaction, open case, queue). Routing offers it; when an agent
accepts, ``sync`` sees the answered interaction and makes the chat theirs. Messages are numbered per
conversation (see models.py for why the numbers have no gaps and a re-send is stored once).

What ``sync`` keeps true, whoever calls it (a socket woken by an event, the periodic sweep):
- waiting + the interaction answered       -> active, the agent named, the visitor told
- waiting + queue closed / nobody signed in / waited too long / routing ended the entry
                                            -> closed on its work order, the visitor told we will reply
- active + the interaction ended (wrap-up, end chat) -> closed
An active chat whose agent's connection is gone longer than the grace period goes back to the head of
its queue (``requeue_stale``); the visitor is told.

Every function takes the caller's session and writes in the caller's transaction. Events go out on
commit; a message event names the chat and the number stored (a short message rides along whole), and
the sockets deliver by sequence number: the next number from the event, anything else read from the
database (socket.py).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from kefu.channels import intake
from kefu.channels.chat.models import ChatAttachment, ChatConversation, ChatMessage, ConversationStatus, Sender
from kefu.channels.chat.schemas import ConversationCreate
from kefu.core import files, jobs, mail
from kefu.core.errors import ApiError, Conflict, Forbidden, Invalid, NotFound
from kefu.core.events import Event, publish_on_commit
from kefu.core.i18n import Translator
from kefu.core.policy import Principal
from kefu.core.security import constant_time_equal, hash_token, new_token
from kefu.db.base import utcnow
from kefu.interactions.models import Interaction
from kefu.settings import Settings

log = logging.getLogger(__name__)

MESSAGE_EVENT = "chat.message"  # {conversation, conversation_id, seq, sender[, message]}: a message was stored
STATE_EVENT = "chat.state"  # {conversation, conversation_id, status, reason}: status changed
TYPING_EVENT = "chat.typing"  # {conversation, from, on}: not stored
SUPERVISORS = ("supervisor", "admin")
FORM_FIELDS = ("name", "email", "phone", "contact", "question")
MAX_ATTACHMENTS = 20
READ_BATCH = 500
# Messages up to this many characters travel whole in their event (a NOTIFY payload stays under 8000 bytes).
INLINE_MAX_CHARS = 1000
# Bidirectional-override characters can make a link read as another; they have no place in chat text.
_BIDI_CONTROLS = {chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))}
SYSTEM = Principal(user_id=None, username="chat", roles=frozenset({"admin"}), via="system")


def _(message: str) -> str:
    """Marks a message for the catalogue (``scripts/i18n.sh`` extracts every ``_("...")``); it is translated
    where it is shown, in the visitor's language."""
    return message


# System messages, in the visitor's language (the msgids are in the message catalogue).
SYSTEM_TEXT = {
    "welcome": _("Thank you. Your question is in the queue; an agent will be with you shortly."),
    "agent_joined": _("%(name)s has joined the chat."),
    "requeued": _(
        "Your agent was disconnected. You are back at the front of the queue; the next agent will answer shortly."
    ),
    "work_order_email": _("No agent can take the chat now. We have recorded your question and will reply by email."),
    "work_order_phone": _("No agent can take the chat now. We have recorded your question and will contact you."),
    "work_order": _("No agent can take the chat now. We have recorded your question as a case."),
    "ended": _("The chat has ended. Thank you for contacting us."),
    "visitor_left": _("You ended the chat."),
    "visitor": _("Visitor"),
    "transcript": _("A transcript of this chat will be sent to %(email)s."),
}


# --- configuration ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Widget:
    key: str
    queue_code: str
    required: tuple[str, ...]


def widget(settings: Settings, key: str) -> Widget:
    queue = settings.chat_widgets.get(key)
    if not queue:
        raise NotFound("chat widget")
    required = tuple(f for f in settings.chat_required_fields if f in FORM_FIELDS)
    return Widget(key, queue, required)


def allowed_origins(settings: Settings) -> set[str]:
    return {o.rstrip("/") for o in settings.chat_allowed_origins} or {settings.base_url.rstrip("/")}


def origin_allowed(settings: Settings, origin: str | None) -> bool:
    """A browser always names the page's origin; a page of a site not listed may not use the chat.
    Non-browser clients send none: they still need the conversation's token."""
    if not origin:
        return True
    return origin.rstrip("/") in allowed_origins(settings)


def translate(locale: str, key: str, **values: Any) -> str:
    return Translator(locale).format(SYSTEM_TEXT[key], **values)


# --- text ------------------------------------------------------------------------------------------
def clean_text(text: str, max_chars: int, field: str = "text") -> str:
    """Plain text as the visitor or agent typed it: line ends unified, bidi overrides and trailing space
    removed; empty or longer than ``max_chars`` is refused (422, naming the field)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = "".join(ch for ch in unicodedata.normalize("NFC", text) if ch not in _BIDI_CONTROLS).strip()
    if not text:
        raise Invalid("the message is empty", {"field": field})
    if len(text) > max_chars:
        raise Invalid(f"the message is longer than {max_chars} characters", {"field": field, "max": max_chars})
    return text


# --- conversations ---------------------------------------------------------------------------------
def _event(conv: ChatConversation, kind: str, **data: Any) -> Event:
    return Event(
        kind,
        {"conversation": conv.public_id, "conversation_id": conv.id, **data},
        user_ids=(conv.agent_id,) if conv.agent_id else (),
    )


async def start_conversation(
    db: AsyncSession,
    settings: Settings,
    data: ConversationCreate,
    *,
    origin: str | None = None,
    now: datetime | None = None,
) -> tuple[ChatConversation, str]:
    """The pre-chat form: validate it, take the contact in through intake, open the chat. Returns the
    conversation and the visitor's token (its only copy)."""
    from kefu.customers.identities import normalize_identity

    now = now or utcnow()
    config = widget(settings, data.widget)
    missing = [
        f
        for f in config.required
        if (f == "contact" and not (data.email or data.phone)) or (f != "contact" and not getattr(data, f))
    ]
    if missing:
        raise Invalid("please fill in the required fields", {"field": missing[0], "fields": missing})
    identity_kind = identity_value = None
    email = phone = None
    if data.phone:
        try:
            phone = normalize_identity("phone", data.phone)
        except ApiError:
            raise Invalid("not a phone number", {"field": "phone"}) from None
        identity_kind, identity_value = "phone", phone
    if data.email:
        email = normalize_identity("email", data.email)
        identity_kind, identity_value = "email", email  # the address wins: a transcript and replies go there
    question = clean_text(data.question, settings.chat_message_max_chars, "question") if data.question else ""
    name = (data.name or "").strip() or email or phone or translate(data.locale, "visitor")
    public_id = secrets.token_urlsafe(12)
    token = new_token(24)
    received = await intake.receive_contact(
        db,
        intake.InboundContact(
            channel="chat",
            external_id=public_id,
            identity_kind=identity_kind,
            identity_value=identity_value,
            display_name=name,
            subject=" ".join(question.split())[:200] or None,
            queue=config.queue_code,
            case_description=question,
            arrived_at=now,
            attributes={"widget": config.key, **({"origin": origin[:255]} if origin else {})},
        ),
    )
    conv = ChatConversation(
        public_id=public_id,
        token_hash=hash_token(token),
        widget=config.key,
        queue_code=config.queue_code,
        interaction_id=received.interaction.id,
        segment=1,
        status=ConversationStatus.waiting,
        visitor_name=name[:128],
        visitor_email=email,
        visitor_phone=phone,
        locale=data.locale,
        origin=origin[:255] if origin else None,
        last_seq=0,
        created_at=now,
        updated_at=now,
    )
    db.add(conv)
    await db.flush()
    if question:
        await post_message(
            db, conv.id, sender=Sender.visitor, text=question, client_msg_id="prechat", author_name=name, now=now
        )
    await post_message(
        db, conv.id, sender=Sender.system, text=translate(conv.locale, "welcome"), code="welcome", now=now
    )
    await sync(db, settings, conv.id, now=now)
    return conv, token


async def by_token(db: AsyncSession, public_id: str, token: str) -> ChatConversation:
    """The visitor's conversation; an unknown id and a wrong token look the same (404)."""
    if not public_id or len(public_id) > 32 or not token or len(token) > 128:
        raise NotFound("chat")
    conv = await db.scalar(select(ChatConversation).where(ChatConversation.public_id == public_id))
    if conv is None or not constant_time_equal(conv.token_hash, hash_token(token)):
        raise NotFound("chat")
    return conv


def is_supervisor(principal: Principal) -> bool:
    return principal.has_role(*SUPERVISORS)


async def for_staff(
    db: AsyncSession, principal: Principal, conversation_id: int, settings: Settings | None = None
) -> ChatConversation:
    """A conversation as staff see it: its agent and supervisors always; other staff when they may see the
    contact (the interaction's visibility rules). With ``settings`` (writes), a chat the caller has just
    accepted is synced first, so it is theirs at once."""
    from kefu.interactions import service as interactions

    conv = await db.get(ChatConversation, conversation_id)
    if conv is None:
        raise NotFound("chat")
    if settings is not None and conv.status == ConversationStatus.waiting:
        conv = await sync(db, settings, conv.id) or conv
    if conv.agent_id == principal.user_id or is_supervisor(principal):
        return conv
    visible = await db.scalar(
        select(Interaction.id).where(Interaction.id == conv.interaction_id, interactions.visibility_clause(principal))
    )
    if visible is None:
        raise NotFound("chat")  # linked to a case hidden from the caller
    return conv


def check_may_write(principal: Principal, conv: ChatConversation) -> None:
    """Only the chat's agent, or a supervisor, writes in it."""
    if conv.agent_id != principal.user_id and not is_supervisor(principal):
        raise Forbidden("only the agent who has this chat, or a supervisor, may write in it")


async def settle_for_agent(db: AsyncSession, settings: Settings, agent_id: int) -> None:
    """Chats an agent has just accepted (the interaction is theirs) but nobody synced yet: sync them now, so
    the agent's lists and writes never wait for a socket or the sweep. Call inside a transaction."""
    ids = (
        await db.scalars(
            select(ChatConversation.id)
            .join(Interaction, Interaction.id == ChatConversation.interaction_id)
            .where(
                ChatConversation.status == ConversationStatus.waiting,
                Interaction.agent_id == agent_id,
                Interaction.answered_at.is_not(None),
            )
        )
    ).all()
    for conv_id in ids:
        await sync(db, settings, conv_id)


async def list_for_staff(
    db: AsyncSession, principal: Principal, *, status: str | None = None, limit: int = 100
) -> list[ChatConversation]:
    """An agent's own chats (open ones by default); supervisors see every chat. Run ``settle_for_agent``
    first in the same transaction to include chats accepted a moment ago."""
    stmt = select(ChatConversation).order_by(ChatConversation.id.desc()).limit(limit)
    if status:
        stmt = stmt.where(ChatConversation.status == status)
    else:
        stmt = stmt.where(ChatConversation.status.in_(ConversationStatus.OPEN))
    if not is_supervisor(principal):
        stmt = stmt.where(ChatConversation.agent_id == principal.user_id)
    return list((await db.scalars(stmt)).all())


async def open_for_agent(db: AsyncSession, agent_id: int) -> list[ChatConversation]:
    stmt = (
        select(ChatConversation)
        .where(ChatConversation.agent_id == agent_id, ChatConversation.status == ConversationStatus.active)
        .order_by(ChatConversation.id)
    )
    return list((await db.scalars(stmt)).all())


# --- messages --------------------------------------------------------------------------------------
async def post_message(
    db: AsyncSession,
    conversation_id: int,
    *,
    sender: str,
    text: str,
    client_msg_id: str | None = None,
    author_id: int | None = None,
    author_name: str | None = None,
    code: str | None = None,
    attachment_id: int | None = None,
    now: datetime | None = None,
) -> tuple[ChatMessage, bool]:
    """Store a message with the conversation's next number; returns it and whether it is new. The same
    ``client_msg_id`` again returns the stored message. A closed chat takes no more messages (409).

    Two senders racing with one client id: the loser's INSERT hits the unique constraint and its whole
    transaction rolls back (its number with it); the caller retries once and finds the stored message."""
    now = now or utcnow()
    if client_msg_id is not None:
        existing = await db.scalar(
            select(ChatMessage).where(
                ChatMessage.conversation_id == conversation_id, ChatMessage.client_msg_id == client_msg_id
            )
        )
        if existing is not None:
            return existing, False
    # Takes the conversation's row lock until commit: numbers are handed out (and seen) in order.
    row = (
        await db.execute(
            update(ChatConversation)
            .where(ChatConversation.id == conversation_id, ChatConversation.status != ConversationStatus.closed)
            .values(last_seq=ChatConversation.last_seq + 1, updated_at=now)
            .returning(ChatConversation.last_seq, ChatConversation.public_id, ChatConversation.agent_id)
            .execution_options(synchronize_session=False)
        )
    ).first()
    if row is None:
        raise Conflict("this chat has ended", {"field": "conversation"})
    seq, public_id, agent_id = row
    message = ChatMessage(
        conversation_id=conversation_id,
        seq=seq,
        sender=sender,
        author_id=author_id,
        author_name=author_name[:128] if author_name else None,
        body=text,
        client_msg_id=client_msg_id,
        code=code,
        attachment_id=attachment_id,
        created_at=now,
    )
    db.add(message)
    await db.flush()
    data: dict[str, Any] = {"conversation": public_id, "conversation_id": conversation_id, "seq": seq, "sender": sender}
    if attachment_id is None and len(text) <= INLINE_MAX_CHARS:
        # A short message rides along: a socket whose next number this is sends it without reading it back.
        data["message"] = message_dict(message, None)
    publish_on_commit(db, Event(MESSAGE_EVENT, data, user_ids=(agent_id,) if agent_id else ()))
    return message, True


async def visitor_message(
    db: AsyncSession, settings: Settings, conv: ChatConversation, text: str, client_msg_id: str | None
) -> tuple[ChatMessage, bool]:
    text = clean_text(text, settings.chat_message_max_chars)
    return await post_message(
        db, conv.id, sender=Sender.visitor, text=text, client_msg_id=client_msg_id, author_name=conv.visitor_name
    )


async def agent_message(
    db: AsyncSession,
    settings: Settings,
    principal: Principal,
    conversation_id: int,
    text: str,
    client_msg_id: str | None,
) -> tuple[ChatMessage, bool]:
    conv = await for_staff(db, principal, conversation_id, settings)
    check_may_write(principal, conv)
    if conv.status != ConversationStatus.active:
        raise Conflict("this chat is not open for messages", {"status": conv.status})
    text = clean_text(text, settings.chat_message_max_chars)
    return await post_message(
        db,
        conv.id,
        sender=Sender.agent,
        text=text,
        client_msg_id=client_msg_id,
        author_id=principal.user_id,
        author_name=principal.display_name or principal.username,
    )


async def messages_after(
    db: AsyncSession, conversation_id: int, after_seq: int, *, limit: int = READ_BATCH
) -> list[tuple[ChatMessage, ChatAttachment | None]]:
    rows = await db.execute(
        select(ChatMessage, ChatAttachment)
        .outerjoin(ChatAttachment, ChatAttachment.id == ChatMessage.attachment_id)
        .where(ChatMessage.conversation_id == conversation_id, ChatMessage.seq > after_seq)
        .order_by(ChatMessage.seq)
        .limit(limit)
    )
    return [(m, a) for m, a in rows]


async def messages_after_many(
    db: AsyncSession, after: dict[int, int], *, limit: int = READ_BATCH
) -> list[tuple[ChatMessage, ChatAttachment | None]]:
    """The messages of several chats, each after its own number (``{conversation id: seq}``), in one query;
    ordered by chat, then number."""
    if not after:
        return []
    if len(after) == 1:
        ((conversation_id, after_seq),) = after.items()
        return await messages_after(db, conversation_id, after_seq, limit=limit)
    rows = await db.execute(
        select(ChatMessage, ChatAttachment)
        .outerjoin(ChatAttachment, ChatAttachment.id == ChatMessage.attachment_id)
        .where(or_(*(and_(ChatMessage.conversation_id == c, ChatMessage.seq > s) for c, s in after.items())))
        .order_by(ChatMessage.conversation_id, ChatMessage.seq)
        .limit(limit)
    )
    return [(m, a) for m, a in rows]


async def last_seqs(db: AsyncSession, conversation_ids: list[int]) -> dict[int, tuple[int, str]]:
    """``{conversation id: (last seq, status)}`` of the chats named, in one query."""
    if not conversation_ids:
        return {}
    rows = await db.execute(
        select(ChatConversation.id, ChatConversation.last_seq, ChatConversation.status).where(
            ChatConversation.id.in_(conversation_ids)
        )
    )
    return {conv_id: (last_seq, status) for conv_id, last_seq, status in rows}


def message_dict(message: ChatMessage, attachment: ChatAttachment | None) -> dict[str, Any]:
    return {
        "seq": message.seq,
        "sender": message.sender,
        "author": message.author_name,
        "text": message.body,
        "code": message.code,
        "client_msg_id": message.client_msg_id,
        "attachment": (
            {
                "id": attachment.id,
                "filename": attachment.filename,
                "content_type": attachment.content_type,
                "size": attachment.size,
            }
            if attachment is not None
            else None
        ),
        "at": message.created_at.isoformat(),
    }


# --- attachments -----------------------------------------------------------------------------------
async def add_attachment(
    db: AsyncSession,
    settings: Settings,
    conv: ChatConversation,
    *,
    sender: str,
    filename: str,
    data: bytes,
    author_id: int | None = None,
    author_name: str | None = None,
    client_msg_id: str | None = None,
) -> tuple[ChatMessage, bool]:
    """A file sent in the chat: stored, then announced as a message that refers to it."""
    if conv.status == ConversationStatus.closed:
        raise Conflict("this chat has ended", {"field": "conversation"})
    if client_msg_id is not None:
        existing = await db.scalar(
            select(ChatMessage).where(
                ChatMessage.conversation_id == conv.id, ChatMessage.client_msg_id == client_msg_id
            )
        )
        if existing is not None:
            return existing, False
    files.check_size(data, settings.chat_attachment_max_bytes)
    name = files.clean_filename(filename)
    content_type = files.content_type_for(name)
    if content_type not in files.SAFE_TYPES:
        raise Invalid("this type of file cannot be sent in a chat", {"field": "file", "filename": name})
    count = len((await db.scalars(select(ChatAttachment.id).where(ChatAttachment.conversation_id == conv.id))).all())
    if count >= MAX_ATTACHMENTS:
        raise Invalid(f"a chat may have at most {MAX_ATTACHMENTS} files", {"field": "file"})
    attachment = ChatAttachment(
        conversation_id=conv.id,
        filename=name,
        content_type=content_type,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        content=data,
    )
    db.add(attachment)
    await db.flush()
    return await post_message(
        db,
        conv.id,
        sender=sender,
        text=name,
        client_msg_id=client_msg_id,
        author_id=author_id,
        author_name=author_name,
        attachment_id=attachment.id,
    )


async def attachment_of(db: AsyncSession, conv: ChatConversation, attachment_id: int) -> ChatAttachment:
    from sqlalchemy.orm import undefer

    found = await db.scalar(
        select(ChatAttachment)
        .where(ChatAttachment.id == attachment_id, ChatAttachment.conversation_id == conv.id)
        .options(undefer(ChatAttachment.content))
    )
    if found is None:
        raise NotFound("attachment")
    return found


# --- typing (not stored) ---------------------------------------------------------------------------
def typing_event(conv: ChatConversation, who: str, on: bool) -> Event:
    return _event(conv, TYPING_EVENT, **{"from": who, "on": bool(on)})


# --- state changes ---------------------------------------------------------------------------------
async def _lock(db: AsyncSession, conversation_id: int) -> ChatConversation | None:
    """The conversation, locked until commit: concurrent state changes of one chat go one after the other
    (two sockets syncing the same accepted chat must not both announce the agent)."""
    if db.bind.dialect.name == "sqlite":
        # SQLite has no row locks and pysqlite begins a transaction only before a write: a no-op write
        # takes the database's write lock now, so the read below sees the last committed state and no
        # other writer gets in before this transaction ends (what FOR UPDATE does on PostgreSQL).
        await db.execute(
            update(ChatConversation)
            .where(ChatConversation.id == conversation_id)
            .values(last_seq=ChatConversation.last_seq)
            .execution_options(synchronize_session=False)
        )
    return await db.scalar(
        select(ChatConversation)
        .where(ChatConversation.id == conversation_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )


async def _system(db: AsyncSession, conv: ChatConversation, key: str, now: datetime, **values: Any) -> None:
    await post_message(db, conv.id, sender=Sender.system, text=translate(conv.locale, key, **values), code=key, now=now)


async def _close(db: AsyncSession, conv: ChatConversation, reason: str, now: datetime, message_key: str) -> None:
    await _system(db, conv, message_key, now)
    conv.status = ConversationStatus.closed
    conv.closed_reason = reason
    conv.closed_at = now
    conv.updated_at = now
    await db.flush()
    publish_on_commit(db, _event(conv, STATE_EVENT, status=conv.status, reason=reason))
    await _note_on_case(db, conv)


async def _note_on_case(db: AsyncSession, conv: ChatConversation) -> None:
    """The chat's transcript as an internal note on its case, so whoever picks the case up has it."""
    from kefu.tickets import service as tickets

    work_order_id = await db.scalar(select(Interaction.work_order_id).where(Interaction.id == conv.interaction_id))
    if work_order_id is None:
        return
    body = await transcript_text(db, conv)
    try:
        await tickets.add_comment(db, SYSTEM, work_order_id, body[:100_000], internal=True)
    except ApiError:
        log.info("chat transcript not added to its case", extra={"work_order_id": work_order_id})


def _work_order_key(conv: ChatConversation) -> str:
    if conv.visitor_email:
        return "work_order_email"
    if conv.visitor_phone:
        return "work_order_phone"
    return "work_order"


async def sync(
    db: AsyncSession, settings: Settings, conversation_id: int, *, now: datetime | None = None
) -> ChatConversation | None:
    """Bring the chat in line with its contact (see the module docstring). Idempotent; any process may call
    it at any time."""
    from kefu.identity.models import User
    from kefu.routing import requeue
    from kefu.routing.models import EntryState, RoutingEntry

    now = now or utcnow()
    conv = await _lock(db, conversation_id)
    if conv is None or conv.status == ConversationStatus.closed:
        return conv
    interaction = await db.get(Interaction, conv.interaction_id, populate_existing=True)
    assert interaction is not None
    if interaction.ended_at is not None or interaction.abandoned_at is not None:
        await _close(db, conv, "ended", now, "ended")
        return conv
    if conv.status == ConversationStatus.active:
        return conv
    if interaction.answered_at is not None and interaction.agent_id is not None:
        conv.status = ConversationStatus.active
        conv.agent_id = interaction.agent_id
        conv.agent_seen_at = now
        conv.answered_at = conv.answered_at or now
        conv.updated_at = now
        await db.flush()
        name = await db.scalar(select(User.display_name).where(User.id == interaction.agent_id))
        await _system(db, conv, "agent_joined", now, name=name or "")
        publish_on_commit(db, _event(conv, STATE_EVENT, status=conv.status, reason="answered"))
        return conv
    entry = await db.get(RoutingEntry, conv.interaction_id, populate_existing=True)
    if entry is None:
        await _close(db, conv, "work_order", now, _work_order_key(conv))
        return conv
    if entry.state == EntryState.ended:
        # Routing's own closed-queue or maximum-wait action took it out of the queue.
        await _close(db, conv, "work_order", now, _work_order_key(conv))
        return conv
    if entry.state != EntryState.waiting:
        return conv  # ringing for an agent now
    why = None
    if not await requeue.queue_open(db, entry.queue_id, now):
        why = "closed"
    elif await requeue.staffed_agents(db, entry.queue_id) == 0:
        why = "no_agent"
    elif settings.chat_max_wait_seconds > 0 and now - entry.waiting_since >= timedelta(
        seconds=settings.chat_max_wait_seconds
    ):
        why = "max_wait"
    if why is not None and await requeue.divert_waiting(db, conv.interaction_id, why=why, now=now):
        await _close(db, conv, "work_order", now, _work_order_key(conv))
    return conv


async def end_by_visitor(db: AsyncSession, settings: Settings, conv: ChatConversation) -> ChatConversation:
    """The visitor closes the chat: a waiting contact is abandoned, an answered one ends (the agent wraps up)."""
    from kefu.interactions import service as interactions

    now = utcnow()
    locked = await _lock(db, conv.id)
    assert locked is not None
    if locked.status == ConversationStatus.closed:
        return locked
    interaction = await db.get(Interaction, locked.interaction_id, populate_existing=True)
    assert interaction is not None
    if interaction.ended_at is None and interaction.abandoned_at is None:
        event = "ended" if interaction.answered_at is not None else "abandoned"
        await interactions.record_event(db, SYSTEM, interaction.id, event, at=now)
    await _close(db, locked, "visitor_left", now, "visitor_left")
    return locked


async def end_by_agent(
    db: AsyncSession, settings: Settings, principal: Principal, conversation_id: int
) -> ChatConversation:
    """The agent ends the chat; the contact moves to wrap-up on their desk (the usual wrap-up form)."""
    from kefu.interactions import service as interactions

    conv = await for_staff(db, principal, conversation_id, settings)
    check_may_write(principal, conv)
    now = utcnow()
    locked = await _lock(db, conv.id)
    assert locked is not None
    if locked.status == ConversationStatus.closed:
        return locked
    interaction = await db.get(Interaction, locked.interaction_id, populate_existing=True)
    assert interaction is not None
    if interaction.ended_at is None and interaction.abandoned_at is None:
        event = "ended" if interaction.answered_at is not None else "abandoned"
        await interactions.record_event(db, SYSTEM, interaction.id, event, at=now)
    await _close(db, locked, "ended", now, "ended")
    return locked


# --- agent presence on the chat --------------------------------------------------------------------
async def touch_agent(db: AsyncSession, agent_id: int, now: datetime | None = None) -> int:
    """The agent's chat connection is alive: every open chat of theirs is seen now."""
    done = await db.execute(
        update(ChatConversation)
        .where(ChatConversation.agent_id == agent_id, ChatConversation.status == ConversationStatus.active)
        .values(agent_seen_at=now or utcnow())
        .execution_options(synchronize_session=False)
    )
    return int(done.rowcount or 0)


async def stale_conversations(db: AsyncSession, settings: Settings, now: datetime, limit: int = 200) -> list[int]:
    cutoff = now - timedelta(seconds=settings.chat_agent_grace_seconds)
    return list(
        (
            await db.scalars(
                select(ChatConversation.id)
                .where(ChatConversation.status == ConversationStatus.active, ChatConversation.agent_seen_at < cutoff)
                .order_by(ChatConversation.agent_seen_at)
                .limit(limit)
            )
        ).all()
    )


async def requeue_stale(
    db: AsyncSession, settings: Settings, conversation_id: int, *, now: datetime | None = None
) -> bool:
    """The chat's agent is gone longer than the grace period: back to the head of its queue, visitor told."""
    from kefu.routing import requeue

    now = now or utcnow()
    conv = await _lock(db, conversation_id)
    if conv is None or conv.status != ConversationStatus.active:
        return False
    cutoff = now - timedelta(seconds=settings.chat_agent_grace_seconds)
    if conv.agent_seen_at is not None and conv.agent_seen_at >= cutoff:
        return False  # seen again meanwhile
    gone = conv.agent_id
    new_id = await requeue.requeue_at_head(
        db,
        conv.interaction_id,
        external_id=f"{conv.public_id}/{conv.segment + 1}",
        now=now,
        attributes={"widget": conv.widget, "segment": conv.segment + 1},
    )
    if new_id is None:
        return False
    # Tell the agent who left (their desk closes the chat) before the chat stops naming them.
    publish_on_commit(db, _event(conv, STATE_EVENT, status=ConversationStatus.waiting, reason="requeued"))
    conv.interaction_id = new_id
    conv.segment += 1
    conv.status = ConversationStatus.waiting
    conv.agent_id = None
    conv.agent_seen_at = None
    conv.updated_at = now
    await db.flush()
    await _system(db, conv, "requeued", now)
    log.info("chat sent back to its queue", extra={"conversation_id": conv.id, "agent_id": gone})
    # The next agent may have been offered it at once; if they accepted already, sync makes it theirs.
    await sync(db, settings, conv.id, now=now)
    return True


async def needing_sync(db: AsyncSession, limit: int = 500) -> list[int]:
    """Open chats whose contact has moved on (answered, ended, left the queue) and waiting chats (each is
    checked for a closed or unstaffed queue and its maximum wait)."""
    rows = await db.execute(
        select(
            ChatConversation.id,
            ChatConversation.status,
            Interaction.ended_at,
            Interaction.abandoned_at,
        )
        .join(Interaction, Interaction.id == ChatConversation.interaction_id)
        .where(ChatConversation.status.in_(ConversationStatus.OPEN))
        .order_by(ChatConversation.id)
        .limit(limit)
    )
    return [
        conv_id
        for conv_id, status, ended, abandoned in rows
        if status == ConversationStatus.waiting or ended is not None or abandoned is not None
    ]


# --- queue position --------------------------------------------------------------------------------
async def position(db: AsyncSession, conv: ChatConversation) -> dict[str, Any] | None:
    """Where a waiting chat stands: its place in the queue and the expected wait (None when not waiting)."""
    from kefu.routing import service as routing

    if conv.status != ConversationStatus.waiting:
        return None
    try:
        found = await routing.position_of(db, conv.interaction_id)
    except NotFound:
        return None
    return {
        "position": found.position,
        "waited_seconds": found.waited_seconds,
        "expected_wait_seconds": found.expected_wait_seconds,
        "ringing": found.state == "offered",
    }


# --- transcript ------------------------------------------------------------------------------------
async def transcript_text(db: AsyncSession, conv: ChatConversation) -> str:
    lines = []
    after = 0
    while True:
        batch = await messages_after(db, conv.id, after)
        if not batch:
            break
        for message, attachment in batch:
            who = {"visitor": conv.visitor_name, "system": "kefu"}.get(message.sender, message.author_name or "")
            text = message.body
            if attachment is not None:
                text = f"[{attachment.filename}, {attachment.size} B]"
            lines.append(f"[{message.created_at:%Y-%m-%d %H:%M:%S} UTC] {who}: {text}")
            after = message.seq
    return "\n".join(lines)


async def request_transcript(
    db: AsyncSession, conv: ChatConversation, *, email: str | None, request_id: str
) -> tuple[jobs.Job, bool]:
    """Queue the transcript mail; the same request id again queues nothing more (one mail per request)."""
    to = email or conv.visitor_email
    if not to:
        raise Invalid("give an email address for the transcript", {"field": "email"})
    key = f"chat.transcript:{conv.id}:{request_id}"
    existing = await db.scalar(select(jobs.Job).where(jobs.Job.idempotency_key == key))
    if existing is not None:
        return existing, False
    job = await jobs.enqueue(
        db, "chat.transcript", {"conversation_id": conv.id, "to": to}, idempotency_key=key, max_attempts=8
    )
    if conv.status != ConversationStatus.closed:
        await _system(db, conv, "transcript", utcnow(), email=to)
    return job, True


TRANSCRIPT_SUBJECT = _("Your chat transcript")


@jobs.job_handler("chat.transcript")
async def send_transcript(db: AsyncSession, job: jobs.Job, settings: Settings) -> None:
    conv = await db.get(ChatConversation, int(job.payload["conversation_id"]))
    if conv is None:
        return  # deleted meanwhile: nothing to send
    translator = Translator(conv.locale)
    body = (
        translator.gettext("Here is the transcript of your chat with us.")
        + "\n\n"
        + await transcript_text(db, conv)
        + "\n"
    )
    msg = mail.build_message(
        settings,
        to=str(job.payload["to"]),
        subject=translator.gettext(TRANSCRIPT_SUBJECT),
        body=body,
        message_id=mail.job_message_id(job, settings),
    )
    await mail.send_mail(settings, msg)


def conversation_dict(conv: ChatConversation) -> dict[str, Any]:
    return {
        "id": conv.id,
        "public_id": conv.public_id,
        "status": conv.status,
        "closed_reason": conv.closed_reason,
        "queue": conv.queue_code,
        "interaction_id": conv.interaction_id,
        "agent_id": conv.agent_id,
        "visitor_name": conv.visitor_name,
        "visitor_email": conv.visitor_email,
        "visitor_phone": conv.visitor_phone,
        "last_seq": conv.last_seq,
        "created_at": conv.created_at,
        "answered_at": conv.answered_at,
        "closed_at": conv.closed_at,
    }
