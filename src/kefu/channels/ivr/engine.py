"""The IVR engine: walks a published flow one step at a time for a call.

Contract used by the CTI channel (provider-neutral; text-to-speech is left to the PBX)::

    call = CallContext(call_id="pbx-42", caller="+8613812345678", called="4008001234", now=utcnow())
    step = await start(db, settings, None, call)     # the flow bound to the DNIS, else the default flow
    ... the PBX plays / collects what step.instruction says ...
    step = await advance(db, settings, call, step.state, digits)   # digits None = timeout / nothing typed

``start`` raises ``kefu.core.errors.NotFound`` when no active published flow fits (unknown code, no flow
bound to the number and no default flow). ``IvrStep.state`` is a small JSON-serializable dict (flow and
version id, node id, what the node waits for, retries, collected variables, a step count); store it (on
the call row) and pass it back unchanged. A call keeps the flow version it started with, even when the
flow is republished mid-call. Advancing twice with the same state gives the same answer; the one side
effect, a callback work order, is keyed on (call_id, node) and made once.

Instruction shapes (``IvrStep.instruction``); ``language`` is the flow's language (e.g. "zh-CN"):

    {"action": "play", "text": str, "language": str, "then": "advance"}
        say the text, then call advance(..., digits=None) at once.
    {"action": "collect", "text": str, "language": str, "min_digits": int, "max_digits": int,
     "timeout_seconds": int, "terminator": "#" | "*" | ""}
        say the text and collect DTMF digits; call advance with them (None on timeout). The terminator,
        if typed, may be passed on or stripped.
    {"action": "queue", "queue": code, "priority": int, "text": str | None, "language": str,
     "variables": {name: value}}
        say the optional announcement, then put the call in routing queue ``code`` (also
        ``step.queue``; ``step.done``). ``variables`` (customer_id, collected digits...) are for the
        contact's attributes / screen pop.
    {"action": "transfer", "extension": str} or {"action": "transfer", "number": str}, with "text" and
     "language": blind transfer (``step.done``).
    {"action": "callback", "text": str, "language": str, "work_order_id": int | None,
     "work_order_number": str | None}
        a callback request was recorded as a work order for the caller's customer; say the text and hang
        up (``step.callback``, ``step.done``).
    {"action": "hangup", "text": str | None, "language": str}
        say the text (if any) and hang up (``step.done``).

The simulator runs the same code with ``simulate=True``: lookups read, but nothing is written (a
callback reports the work order it would make).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from kefu.core.errors import ApiError, Invalid, NotFound
from kefu.core.i18n import Translator
from kefu.core.policy import Principal
from kefu.db.base import utcnow

from .flows import fill
from .models import IvrCallback, IvrFlow, IvrFlowNumber, IvrFlowVersion

log = logging.getLogger(__name__)

# The knowledge base as the public sees it: published, public, in-force articles only.
PUBLIC_READER = Principal(user_id=None, username="ivr", roles=frozenset({"customer"}), via="system")
DEFAULT_MAX_STEPS = 200
DEFAULT_ANSWER_CHARS = 500
MAX_VARIABLE_CHARS = 200
DTMF = re.compile(r"^[0-9*#]{0,64}$")
SENTENCE_END = re.compile(r"[。！？!?；;.]")


def _(message: str) -> str:
    """Marks a msgid for the catalogue; translated in the flow's language when spoken."""
    return message


SPOKEN_STATUS = {
    "new": _("received"),
    "open": _("being handled"),
    "pending": _("waiting for more information"),
    "escalated": _("with a specialist team"),
    "resolved": _("resolved"),
    "closed": _("closed"),
    "reopened": _("reopened"),
}
DEFAULT_INVALID = _("Sorry, that is not a valid choice.")
DEFAULT_TIMEOUT = _("Sorry, we did not receive your input.")
TOO_MANY_STEPS = _("Sorry, we cannot continue this call. Goodbye.")
CALLBACK_TITLE = _("Callback request from %(caller)s")


@dataclass
class CallContext:
    call_id: str
    caller: str | None
    called: str | None
    language: str = "zh_CN"
    now: datetime = field(default_factory=utcnow)


@dataclass
class IvrStep:
    instruction: dict[str, Any]
    state: dict[str, Any] = field(default_factory=dict)
    queue: str | None = None
    done: bool = False
    callback: bool = False


# --- the knowledge index (search queries) ----------------------------------------------------------
_knowledge_index: Any = None


def use_knowledge_index(index: Any) -> None:
    """The app's ``KnowledgeIndex`` for ``answer`` nodes with a search query (set once at start-up).
    Without it, a query matches article titles through the knowledge service."""
    global _knowledge_index  # noqa: PLW0603 - one index per process, like the app's
    _knowledge_index = index


# --- choosing the flow -----------------------------------------------------------------------------
def normalize_number(number: str | None) -> str:
    """A called/caller number as bound to flows: digits, a leading + kept, everything else dropped."""
    if not number:
        return ""
    text = number.strip()
    digits = re.sub(r"[^0-9]", "", text)
    return ("+" + digits if text.startswith("+") else digits)[:32]


async def flow_for_call(db: AsyncSession, flow_code: str | None, called: str | None) -> IvrFlow:
    live = (IvrFlow.active.is_(True), IvrFlow.live_version_id.is_not(None))
    if flow_code is not None:
        found = await db.scalar(select(IvrFlow).where(IvrFlow.code == flow_code, *live))
    else:
        found = None
        number = normalize_number(called)
        if number:
            found = await db.scalar(
                select(IvrFlow)
                .join(IvrFlowNumber, IvrFlowNumber.flow_id == IvrFlow.id)
                .where(IvrFlowNumber.number == number, *live)
            )
        if found is None:
            found = await db.scalar(select(IvrFlow).where(IvrFlow.is_default.is_(True), *live).limit(1))
    if found is None:
        raise NotFound("ivr flow")
    return found


# --- the walk --------------------------------------------------------------------------------------
def _locale(language: str | None) -> str:
    return "en" if (language or "").lower().startswith("en") else "zh_CN"


def _cut(text: str, limit: int) -> str:
    """At most ``limit`` characters, ending at a sentence end when one is in the second half."""
    if len(text) <= limit:
        return text
    head = text[:limit]
    ends = [m.end() for m in SENTENCE_END.finditer(head)]
    if ends and ends[-1] >= limit // 2:
        return head[: ends[-1]]
    return head


class _Walk:
    def __init__(
        self,
        db: AsyncSession,
        settings: Any,
        call: CallContext,
        version: IvrFlowVersion,
        state: dict[str, Any],
        *,
        simulate: bool,
        flow_code: str,
    ) -> None:
        self.db = db
        self.call = call
        self.version = version
        self.definition = version.definition
        self.nodes: dict[str, dict[str, Any]] = self.definition["nodes"]
        self.state = state
        self.simulate = simulate
        self.flow_code = flow_code
        self.flow_language = self.definition.get("language") or call.language.replace("_", "-")
        self.language = self.flow_language
        self.t = Translator(_locale(self.language))
        self.max_steps = int(getattr(settings, "ivr_max_steps_per_call", DEFAULT_MAX_STEPS))
        self.answer_chars = int(getattr(settings, "ivr_answer_max_chars", DEFAULT_ANSWER_CHARS))

    def _speak_as(self, node: dict[str, Any]) -> None:
        """The node's own language, else the flow's: prompts and default texts follow it."""
        self.language = node.get("language") or self.flow_language
        self.t = Translator(_locale(self.language))

    @property
    def vars(self) -> dict[str, Any]:
        return self.state["vars"]

    def text(self, template: str | None) -> str | None:
        return fill(template, self.vars) if template else None

    def _step(self, instruction: dict[str, Any], wait: str, node_id: str, **flags: Any) -> IvrStep:
        self.state["node"] = node_id
        self.state["wait"] = wait
        return IvrStep(instruction=instruction, state=self.state, **flags)

    def _end(self, node_id: str, text: str | None) -> IvrStep:
        instruction = {"action": "hangup", "text": text, "language": self.language}
        return self._step(instruction, "done", node_id, done=True)

    async def enter(self, node_id: str) -> IvrStep:
        """Run nodes from ``node_id`` until one needs the PBX (a prompt, a collection or an ending)."""
        while True:
            self.state["steps"] = int(self.state.get("steps", 0)) + 1
            if self.state["steps"] > self.max_steps:
                log.warning("ivr call took too many steps", extra={"call_id": self.call.call_id, "node": node_id})
                return self._end(node_id, self.t.gettext(TOO_MANY_STEPS))
            node = self.nodes[node_id]
            kind = node["type"]
            self._speak_as(node)
            self.state["retries"] = 0
            if kind in ("menu", "collect"):
                return self._ask(node_id, node, node["prompt"])
            if kind == "play":
                return self._play(node_id, node["text"])
            if kind == "lookup":
                node_id = node["found"] if await self._lookup(node) else node["not_found"]
                continue
            if kind == "hours":
                node_id = node["open"] if await self._open(node) else node["closed"]
                continue
            if kind == "answer":
                answer = await self._answer(node)
                if answer is None:
                    node_id = node["not_found"]
                    continue
                intro = self.text(node.get("intro"))
                return self._play(node_id, f"{intro} {answer}" if intro else answer, filled=True)
            return await self._terminal(node_id, node)

    def _play(self, node_id: str, text: str, *, filled: bool = False) -> IvrStep:
        spoken = text if filled else self.text(text)
        return self._step(
            {"action": "play", "text": spoken, "language": self.language, "then": "advance"}, "play", node_id
        )

    def _ask(self, node_id: str, node: dict[str, Any], prompt: str, before: str | None = None) -> IvrStep:
        text = self.text(prompt) or ""
        if before:
            text = f"{before} {text}"
        if node["type"] == "menu":
            width = max(len(k) for k in node["options"])
            shape = {"min_digits": 1, "max_digits": width, "timeout_seconds": node["timeout_seconds"], "terminator": ""}
        else:
            shape = {
                "min_digits": node["min_digits"],
                "max_digits": node["max_digits"],
                "timeout_seconds": node["timeout_seconds"],
                "terminator": node["terminator"],
            }
        return self._step({"action": "collect", "text": text, "language": self.language, **shape}, "input", node_id)

    async def advance(self, digits: str | None) -> IvrStep:
        node_id = self.state["node"]
        node = self.nodes[node_id]
        self._speak_as(node)
        wait = self.state.get("wait")
        if wait == "play":
            return await self.enter(node["next"])
        if wait == "done":
            # Asked again after the end (a retried request): the same ending, made once.
            return await self.enter(node_id)
        if digits is not None and not DTMF.match(digits):
            digits = "?"  # not DTMF at all: an invalid answer, never stored
        if node["type"] == "menu":
            if digits is not None and digits in node["options"]:
                return await self.enter(node["options"][digits])
            return await self._retry(node_id, node, timed_out=digits is None or digits == "")
        # collect
        if digits:
            typed = digits[:-1] if node["terminator"] and digits.endswith(node["terminator"]) else digits
            if self._valid(node, typed):
                self.vars[node["into"]] = typed[:MAX_VARIABLE_CHARS]
                return await self.enter(node["next"])
        return await self._retry(node_id, node, timed_out=not digits)

    @staticmethod
    def _valid(node: dict[str, Any], typed: str) -> bool:
        if not node["min_digits"] <= len(typed) <= node["max_digits"]:
            return False
        if not typed.isdigit() and not node.get("pattern"):
            return False
        return node.get("pattern") is None or re.fullmatch(node["pattern"], typed) is not None

    async def _retry(self, node_id: str, node: dict[str, Any], *, timed_out: bool) -> IvrStep:
        retries = int(self.state.get("retries", 0)) + 1
        if retries > node["max_retries"]:
            return await self.enter(node["fallback"])
        if timed_out:
            before = self.text(node.get("timeout_prompt")) or self.t.gettext(DEFAULT_TIMEOUT)
        else:
            before = self.text(node.get("invalid_prompt")) or self.t.gettext(DEFAULT_INVALID)
        step = self._ask(node_id, node, node["prompt"], before)
        self.state["retries"] = retries
        return step

    # --- lookups ---------------------------------------------------------------------------------
    async def _caller_customer(self) -> Any:
        from kefu.customers import service as customers

        if not self.call.caller:
            return None
        try:
            return await customers.find_by_identity(self.db, "phone", self.call.caller)
        except Invalid:
            return None

    async def _lookup(self, node: dict[str, Any]) -> bool:
        if node["kind"] == "customer_by_caller":
            customer = await self._caller_customer()
            if customer is None:
                return False
            self.vars["customer_id"] = customer.id
            self.vars["customer_name"] = customer.display_name[:MAX_VARIABLE_CHARS]
            return True
        return await self._work_order_status(node)

    async def _work_order_status(self, node: dict[str, Any]) -> bool:
        from kefu.channels.intake import CHANNEL_PRINCIPAL
        from kefu.tickets import service as tickets

        typed = re.sub(r"[^0-9]", "", str(self.vars.get(node["number"]) or ""))
        if not typed or len(typed) > 18 or int(typed) == 0:
            return False
        try:
            work_order = await tickets.get_work_order(self.db, CHANNEL_PRINCIPAL, int(typed))
        except NotFound:
            return False
        seen: set[int] = set()
        while work_order.merged_into_id is not None and work_order.id not in seen:
            seen.add(work_order.id)
            try:
                work_order = await tickets.get_work_order(self.db, CHANNEL_PRINCIPAL, work_order.merged_into_id)
            except NotFound:
                return False
        if work_order.restricted:
            return False  # never read out on an open line
        if node["match_caller"]:
            customer = await self._caller_customer()
            if customer is None or work_order.customer_id != customer.id:
                return False
        self.vars["work_order_number"] = work_order.number
        self.vars["work_order_status"] = self.t.gettext(SPOKEN_STATUS.get(work_order.status, work_order.status))
        return True

    async def _open(self, node: dict[str, Any]) -> bool:
        from kefu.tickets.calendar import is_business_time, load_calendar

        calendar_id = node.get("calendar_id")
        calendar = await load_calendar(self.db, calendar_id) if calendar_id else None
        if calendar is None:
            log.warning("ivr hours node without a calendar: treated as open", extra={"flow": self.flow_code})
        return is_business_time(calendar, self.call.now)

    async def _answer(self, node: dict[str, Any]) -> str | None:
        from kefu.knowledge import service as knowledge
        from kefu.knowledge.content import plain_text

        article_id = node.get("article")
        if article_id is None:
            article_id = await self._search(node["query"])
        if article_id is None:
            return None
        try:
            view = await knowledge.get_article(self.db, PUBLIC_READER, article_id)
        except ApiError:
            return None
        if view.live is None:
            return None
        text = plain_text(view.live.body_html)
        if not text:
            return None
        self.vars["article_title"] = view.live.title[:MAX_VARIABLE_CHARS]
        return _cut(text, min(node.get("max_chars") or self.answer_chars, self.answer_chars))

    async def _search(self, query: str) -> int | None:
        from kefu.knowledge import service as knowledge

        if _knowledge_index is not None:
            hits = _knowledge_index.search(PUBLIC_READER, query, limit=1)
            return int(hits[0].id) if hits else None
        found = await knowledge.list_articles(self.db, PUBLIC_READER, knowledge.ArticleFilter(title=query), limit=1)
        return found[0].article.id if found else None

    # --- endings ---------------------------------------------------------------------------------
    async def _terminal(self, node_id: str, node: dict[str, Any]) -> IvrStep:
        kind = node["type"]
        text = self.text(node.get("text"))
        if kind == "queue":
            variables = {k: v for k, v in self.vars.items() if k != "caller"}
            instruction = {
                "action": "queue",
                "queue": node["queue"],
                "priority": node["priority"],
                "text": text,
                "language": self.language,
                "variables": variables,
            }
            return self._step(instruction, "done", node_id, queue=node["queue"], done=True)
        if kind == "transfer":
            target = {"extension": node["extension"]} if node.get("extension") else {"number": node["number"]}
            instruction = {"action": "transfer", **target, "text": text, "language": self.language}
            return self._step(instruction, "done", node_id, done=True)
        if kind == "callback":
            work_order = await self._callback(node_id, node)
            instruction = {
                "action": "callback",
                "text": text,
                "language": self.language,
                "work_order_id": work_order.id if work_order is not None else None,
                "work_order_number": work_order.number if work_order is not None else None,
            }
            if self.simulate:
                instruction["simulated"] = True
            return self._step(instruction, "done", node_id, done=True, callback=True)
        return self._end(node_id, text)

    async def _callback(self, node_id: str, node: dict[str, Any]) -> Any:
        """The work order asking to call the caller back: made once per (call, node)."""
        from sqlalchemy.dialects import postgresql, sqlite

        from kefu.tickets.models import WorkOrder

        if self.simulate:
            return None
        db = self.db
        insert = postgresql.insert if db.bind.dialect.name == "postgresql" else sqlite.insert
        made = await db.scalar(
            insert(IvrCallback)
            .values(
                call_id=self.call.call_id[:128],
                node_id=node_id,
                flow_version_id=self.version.id,
                caller=(self.call.caller or "")[:64] or None,
                created_at=utcnow(),
            )
            .on_conflict_do_nothing(index_elements=["call_id", "node_id"])
            .returning(IvrCallback.id)
        )
        if made is None:
            existing = await db.scalar(
                select(IvrCallback).where(
                    IvrCallback.call_id == self.call.call_id[:128], IvrCallback.node_id == node_id
                )
            )
            if existing is None or existing.work_order_id is None:
                return None
            return await db.get(WorkOrder, existing.work_order_id)
        work_order = await self._make_callback_work_order(node)
        row = await db.get(IvrCallback, made)
        assert row is not None
        row.work_order_id = work_order.id
        await db.flush()
        return work_order

    async def _make_callback_work_order(self, node: dict[str, Any]) -> Any:
        from kefu.channels.intake import CHANNEL_PRINCIPAL
        from kefu.customers import service as customers
        from kefu.tickets import service as tickets
        from kefu.tickets.schemas import WorkOrderCreate

        caller = normalize_number(self.call.caller)
        customer_id = None
        if caller:
            try:
                customer, _created = await customers.resolve_or_create(self.db, CHANNEL_PRINCIPAL, "phone", caller)
                customer_id = customer.id
            except Invalid:
                customer_id = None
        details = [
            f"call: {self.call.call_id}",
            f"caller: {caller or '-'}",
            f"called: {normalize_number(self.call.called) or '-'}",
            f"flow: {self.flow_code} v{self.version.number}",
        ]
        details += [f"{k}: {v}" for k, v in sorted(self.vars.items()) if k not in ("caller", "called")]
        title = self.t.gettext(CALLBACK_TITLE) % {"caller": caller or self.t.gettext("an unknown number")}
        data = WorkOrderCreate(
            type=node["work_order_type"],
            priority="normal",
            title=title[:200],
            description="\n".join(details),
            customer_id=customer_id,
            tags=["channel:phone", "ivr:callback"],
        )
        return await tickets.create_work_order(self.db, CHANNEL_PRINCIPAL, data)


# --- the contract ----------------------------------------------------------------------------------
def _new_state(flow: IvrFlow, version: IvrFlowVersion, call: CallContext) -> dict[str, Any]:
    variables: dict[str, Any] = {}
    if call.caller:
        variables["caller"] = normalize_number(call.caller)
    if call.called:
        variables["called"] = normalize_number(call.called)
    return {
        "flow_id": flow.id,
        "version_id": version.id,
        "node": version.definition["start"],
        "wait": None,
        "retries": 0,
        "steps": 0,
        "vars": variables,
    }


async def start_version(
    db: AsyncSession,
    settings: Any,
    flow: IvrFlow,
    version: IvrFlowVersion,
    call: CallContext,
    *,
    simulate: bool = False,
) -> IvrStep:
    """Begin ``call`` on a given version (the simulator runs drafts this way)."""
    state = _new_state(flow, version, call)
    walk = _Walk(db, settings, call, version, state, simulate=simulate, flow_code=flow.code)
    return await walk.enter(version.definition["start"])


async def start(db: AsyncSession, settings: Any, flow_code: str | None, call: CallContext) -> IvrStep:
    """Begin the flow ``flow_code`` (None: the flow bound to ``call.called``, else the default flow)."""
    flow = await flow_for_call(db, flow_code, call.called)
    version = await db.get(IvrFlowVersion, flow.live_version_id)
    if version is None:  # pragma: no cover - the service keeps live_version_id valid
        raise NotFound("ivr flow version")
    return await start_version(db, settings, flow, version, call)


def _checked_state(state: Any) -> dict[str, Any]:
    if not isinstance(state, dict):
        raise Invalid("the IVR state is not an object", {"field": "state"})
    version_id = state.get("version_id")
    if not isinstance(version_id, int) or isinstance(version_id, bool):
        raise Invalid("the IVR state has no flow version", {"field": "state.version_id"})
    if not isinstance(state.get("node"), str) or not isinstance(state.get("vars", {}), dict):
        raise Invalid("the IVR state is damaged", {"field": "state"})
    copy = dict(state)
    copy["vars"] = dict(state.get("vars") or {})
    return copy


async def advance(
    db: AsyncSession,
    settings: Any,
    call: CallContext,
    state: dict[str, Any],
    digits: str | None,
    *,
    simulate: bool = False,
) -> IvrStep:
    """Continue the call from ``state`` with the digits typed (None = timeout). The state passed in is
    not changed; the step carries the next one."""
    state = _checked_state(state)
    version = await db.get(IvrFlowVersion, state["version_id"])
    if version is None:
        raise NotFound("ivr flow version")
    if state["node"] not in version.definition.get("nodes", {}):
        raise Invalid("the IVR state names a node the flow version does not have", {"field": "state.node"})
    flow = await db.get(IvrFlow, version.flow_id)
    walk = _Walk(db, settings, call, version, state, simulate=simulate, flow_code=flow.code if flow else "")
    if state.get("wait") is None:
        return await walk.enter(state["node"])
    return await walk.advance(digits)
