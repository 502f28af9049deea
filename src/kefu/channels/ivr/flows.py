"""IVR flow sources: parsing (YAML with ``safe_load`` semantics, or JSON), the schema, and every check.

A flow source (YAML shown; the same structure in JSON)::

    language: zh-CN            # language of the prompts (the PBX does the text-to-speech)
    start: main                # the first node
    nodes:
      main:
        type: menu
        prompt: "账单请按1，人工服务请按3。"
        options: {"1": billing, "3": agent}   # quote "*" and "#" in YAML
        invalid_prompt: "输入有误。"          # optional (a default in the flow's language)
        timeout_prompt: "没有收到您的输入。"  # optional
        max_retries: 2                       # invalid/timeout answers before the fallback
        timeout_seconds: 5
        fallback: agent
      billing: {type: answer, article: 12, next: main, not_found: agent}
      agent: {type: queue, queue: cn-phone, text: "正在为您转接人工服务。"}

Node types and their fields (``*`` required):

- ``menu``: prompt*, options* (digit -> node), fallback*, invalid_prompt, timeout_prompt, max_retries,
  timeout_seconds
- ``play``: text*, next*
- ``collect``: prompt*, into* (variable), next*, fallback*, min_digits, max_digits, pattern (a regular
  expression the whole input must match), terminator ("#", "*" or ""), invalid_prompt, timeout_prompt,
  max_retries, timeout_seconds
- ``lookup``: kind* (``customer_by_caller`` | ``work_order_status``), found*, not_found*, number (the
  variable holding the typed work-order number, default ``work_order_input``), match_caller (default true:
  a work order's status is told only to a caller whose number belongs to its customer)
- ``answer``: article (id) or query (search words), next*, not_found*, intro, max_chars
- ``hours``: calendar* (business calendar name or id), open*, closed*
- ``queue``: queue* (routing queue code), priority, text
- ``callback``: text*, work_order_type
- ``transfer``: extension or number (exactly one), text
- ``hangup``: text

Every node may also have ``note`` (for the editor) and ``language`` (its prompts' language when it
differs from the flow's, e.g. an English branch of a Chinese menu).

Prompts may use variables as ``{name}`` (``{{`` and ``}}`` for braces): caller, called, customer_name,
work_order_number, work_order_status, article_title and every ``collect`` node's ``into``. Filling them is
plain substitution: no attribute access, no format specifications.

Every problem names its path (``nodes.main.options.1: unknown node "billing"``) and, for YAML, its line.
Checks: the schema, unknown node references, nodes not reachable from the start (warnings), nodes from
which the call can never end, loops that never ask the caller for input, size limits, and (with a
database) that referenced routing queues, business calendars and public knowledge articles exist.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import yaml
from sqlalchemy.ext.asyncio import AsyncSession

MAX_SOURCE_BYTES = 64 * 1024
MAX_NODES = 500
MAX_TEXT = 2000
MAX_OPTIONS = 12
MAX_RETRIES = 10
MAX_DIGITS = 32
MAX_PATTERN = 200
MAX_ANSWER_CHARS = 2000
NODE_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
VARIABLE = re.compile(r"^[a-z_][a-z0-9_]{0,63}$")
LANGUAGE = re.compile(r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*$")
DIAL = re.compile(r"^\+?[0-9*#]{1,32}$")
PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")
QUEUE_CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
OPTION_KEY = re.compile(r"^[0-9*#]$")

BUILTIN_VARIABLES = frozenset(
    {"caller", "called", "customer_name", "customer_id", "work_order_number", "work_order_status", "article_title"}
)
TERMINAL = frozenset({"queue", "callback", "transfer", "hangup"})
ASKS_CALLER = frozenset({"menu", "collect"})
LOOKUP_KINDS = ("customer_by_caller", "work_order_status")
WORK_ORDER_TYPES = ("inquiry", "complaint", "suggestion", "fault", "request")
COMMON_FIELDS = frozenset({"type", "note", "language"})

# field -> (kind, required); kinds checked by _Checker._value
NODE_FIELDS: dict[str, dict[str, tuple[str, bool]]] = {
    "menu": {
        "prompt": ("text", True),
        "options": ("options", True),
        "fallback": ("node", True),
        "invalid_prompt": ("text", False),
        "timeout_prompt": ("text", False),
        "max_retries": ("retries", False),
        "timeout_seconds": ("timeout", False),
    },
    "play": {"text": ("text", True), "next": ("node", True)},
    "collect": {
        "prompt": ("text", True),
        "into": ("variable", True),
        "next": ("node", True),
        "fallback": ("node", True),
        "min_digits": ("digits", False),
        "max_digits": ("digits", False),
        "pattern": ("pattern", False),
        "terminator": ("terminator", False),
        "invalid_prompt": ("text", False),
        "timeout_prompt": ("text", False),
        "max_retries": ("retries", False),
        "timeout_seconds": ("timeout", False),
    },
    "lookup": {
        "kind": ("lookup_kind", True),
        "found": ("node", True),
        "not_found": ("node", True),
        "number": ("variable", False),
        "match_caller": ("bool", False),
    },
    "answer": {
        "article": ("id", False),
        "query": ("short_text", False),
        "next": ("node", True),
        "not_found": ("node", True),
        "intro": ("text", False),
        "max_chars": ("answer_chars", False),
    },
    "hours": {"calendar": ("calendar", True), "open": ("node", True), "closed": ("node", True)},
    "queue": {"queue": ("queue", True), "priority": ("priority", False), "text": ("text", False)},
    "callback": {"text": ("text", True), "work_order_type": ("work_order_type", False)},
    "transfer": {"extension": ("dial", False), "number": ("dial", False), "text": ("text", False)},
    "hangup": {"text": ("text", False)},
}
DEFAULTS: dict[str, dict[str, Any]] = {
    "menu": {"invalid_prompt": None, "timeout_prompt": None, "max_retries": 2, "timeout_seconds": 5},
    "collect": {
        "min_digits": 1,
        "max_digits": 20,
        "pattern": None,
        "terminator": "#",
        "invalid_prompt": None,
        "timeout_prompt": None,
        "max_retries": 2,
        "timeout_seconds": 8,
    },
    "lookup": {"number": "work_order_input", "match_caller": True},
    "answer": {"article": None, "query": None, "intro": None, "max_chars": None},
    "queue": {"priority": 0, "text": None},
    "callback": {"work_order_type": "request"},
    "transfer": {"extension": None, "number": None, "text": None},
    "hangup": {"text": None},
}


@dataclass
class Problem:
    path: str
    message: str
    line: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "message": self.message, "line": self.line}

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{where}{self.message}" + (f" (line {self.line})" if self.line else "")


@dataclass
class Checked:
    """The result of checking a source: the normalised definition (defaults filled in) when there are no
    errors, every error and every warning."""

    definition: dict[str, Any] | None
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    lines: dict[str, int] = field(default_factory=dict)
    # Objects in other domains the flow names: path -> value (checked against the database separately).
    queues: dict[str, str] = field(default_factory=dict)
    calendars: dict[str, Any] = field(default_factory=dict)
    articles: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors

    def error(self, path: str, message: str) -> None:
        self.errors.append(Problem(path, message, self._line(path)))

    def warn(self, path: str, message: str) -> None:
        self.warnings.append(Problem(path, message, self._line(path)))

    def _line(self, path: str) -> int | None:
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path.rpartition(".")[0]
        return None


# --- parsing -------------------------------------------------------------------------------------
_BaseLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _StrictLoader(_BaseLoader):  # type: ignore[misc, valid-type]
    """``yaml.safe_load`` semantics, except that a key given twice is an error, not silently the last."""


def _mapping_without_duplicates(loader: Any, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "a key must be plain text or a number", key_node.start_mark
            ) from None
        if duplicate:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def _yaml_lines(source: str) -> dict[str, int]:
    """path -> line of its key, from the YAML node tree (JSON is YAML enough for this)."""
    try:
        root = yaml.compose(source, Loader=_BaseLoader)
    except yaml.YAMLError:
        return {}
    lines: dict[str, int] = {}
    stack: list[tuple[Any, str, int]] = [(root, "", 0)]
    while stack:
        node, path, depth = stack.pop()
        if not isinstance(node, yaml.MappingNode) or depth > 4:
            continue
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue
            child = f"{path}.{key_node.value}" if path else str(key_node.value)
            lines.setdefault(child, key_node.start_mark.line + 1)
            stack.append((value_node, child, depth + 1))
    return lines


def detect_format(source: str) -> str:
    return "json" if source.lstrip().startswith(("{", "[")) else "yaml"


def parse_source(source: str, fmt: str = "auto") -> tuple[Any, list[Problem]]:
    """The data structure in ``source``, or the parse error with its line."""
    if fmt == "auto":
        fmt = detect_format(source)
    if fmt == "json":

        def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
            keys = [k for k, _ in pairs]
            dupes = sorted({k for k in keys if keys.count(k) > 1})
            if dupes:
                raise ValueError(f"duplicate key {dupes[0]!r}")
            return dict(pairs)

        try:
            return json.loads(source, object_pairs_hook=no_duplicates), []
        except json.JSONDecodeError as exc:
            return None, [Problem("", f"not valid JSON: {exc.msg}", exc.lineno)]
        except (ValueError, RecursionError) as exc:
            return None, [Problem("", f"not valid JSON: {exc}")]
    if fmt != "yaml":
        return None, [Problem("format", f"unknown format {fmt!r}: use yaml or json")]
    try:
        return yaml.load(source, Loader=_StrictLoader), []  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        message = exc.problem or exc.context or "syntax error"
        return None, [Problem("", f"not valid YAML: {message}", line)]
    except (yaml.YAMLError, RecursionError) as exc:
        return None, [Problem("", f"not valid YAML: {exc}")]


# --- the schema ----------------------------------------------------------------------------------
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def variables_in(text: str) -> list[str]:
    return [m.group(1).strip() for m in PLACEHOLDER.finditer(text) if m.group(1) is not None]


def fill(text: str, values: dict[str, Any]) -> str:
    """``{name}`` -> the variable's text ('' when unset); ``{{``/``}}`` -> braces. Nothing else is
    interpreted: no attribute access, no indexing, no format specifications."""

    def one(match: re.Match[str]) -> str:
        whole = match.group(0)
        if whole == "{{":
            return "{"
        if whole == "}}":
            return "}"
        name = (match.group(1) or "").strip()
        if not VARIABLE.match(name):
            return whole
        value = values.get(name)
        return "" if value is None else str(value)

    return PLACEHOLDER.sub(one, text)


class _Checker:
    def __init__(self, checked: Checked, *, max_nodes: int) -> None:
        self.c = checked
        self.max_nodes = max_nodes
        self.node_ids: set[str] = set()
        self.variables: set[str] = set(BUILTIN_VARIABLES)
        self.texts: list[tuple[str, str]] = []  # (path, text) checked for unknown variables at the end
        self.edges: dict[str, list[tuple[str, str]]] = {}  # node -> [(path, target)]

    def run(self, data: Any) -> dict[str, Any] | None:
        c = self.c
        if not isinstance(data, dict):
            c.error("", "a flow is a mapping with start, nodes and optionally language")
            return None
        for key in sorted(set(map(str, data)) - {"start", "nodes", "language", "description"}):
            c.error(key, "unknown field (expected start, nodes, language, description)")
        language = data.get("language")
        if language is not None and not (isinstance(language, str) and LANGUAGE.match(language)):
            c.error("language", "must be a language tag such as zh-CN or en")
            language = None
        nodes = data.get("nodes")
        if not isinstance(nodes, dict) or not nodes:
            c.error("nodes", "must be a mapping of node id to node, with at least one node")
            return None
        if len(nodes) > self.max_nodes:
            c.error("nodes", f"too many nodes: {len(nodes)} (at most {self.max_nodes})")
            return None
        for node_id in nodes:
            if not isinstance(node_id, str) or not NODE_ID.match(node_id):
                c.error(f"nodes.{node_id}", "a node id is a letter then letters, digits, _ or - (at most 64)")
            else:
                self.node_ids.add(node_id)
        for node_id, node in nodes.items():
            if node_id in self.node_ids:
                self._collect_variables(node)
        normalised: dict[str, Any] = {}
        for node_id, node in nodes.items():
            if node_id in self.node_ids:
                result = self._node(node_id, node)
                if result is not None:
                    normalised[node_id] = result
        start = data.get("start")
        if not isinstance(start, str) or not start:
            c.error("start", "must name the first node")
        elif start not in self.node_ids:
            c.error("start", f'unknown node "{start}"')
        for path, text in self.texts:
            for name in variables_in(text):
                if not VARIABLE.match(name):
                    c.error(path, f"{{{name}}} is not a variable name (lower-case letters, digits and _)")
                elif name not in self.variables:
                    c.warn(path, f"{{{name}}} is not set anywhere in this flow (it will be read as nothing)")
        if c.errors:
            return None
        self._graph(start, normalised)
        if c.errors:
            return None
        return {"language": language, "start": start, "nodes": normalised, "description": data.get("description")}

    def _collect_variables(self, node: Any) -> None:
        if isinstance(node, dict) and node.get("type") == "collect":
            into = node.get("into")
            if isinstance(into, str) and VARIABLE.match(into):
                self.variables.add(into)

    def _node(self, node_id: str, node: Any) -> dict[str, Any] | None:
        c = self.c
        base = f"nodes.{node_id}"
        if not isinstance(node, dict):
            c.error(base, "a node is a mapping with a type")
            return None
        kind = node.get("type")
        if kind not in NODE_FIELDS:
            c.error(f"{base}.type", f"unknown node type {kind!r} (expected one of: {', '.join(NODE_FIELDS)})")
            return None
        spec = NODE_FIELDS[kind]
        unknown = sorted(set(map(str, node)) - set(spec) - COMMON_FIELDS)
        for key in unknown:
            c.error(f"{base}.{key}", f"unknown field for a {kind} node (expected: {', '.join(spec)})")
        result: dict[str, Any] = {"type": kind, **DEFAULTS.get(kind, {})}
        self.edges[node_id] = []
        for name, (value_kind, required) in spec.items():
            path = f"{base}.{name}"
            if node.get(name) is None:
                if required:
                    c.error(path, "required")
                continue
            value = self._value(node_id, path, value_kind, node[name])
            if value is not None:
                result[name] = value
        if node.get("note") is not None and not isinstance(node.get("note"), str):
            c.error(f"{base}.note", "must be text")
        language = node.get("language")
        if language is not None:
            if isinstance(language, str) and LANGUAGE.match(language):
                result["language"] = language
            else:
                c.error(f"{base}.language", "must be a language tag such as zh-CN or en")
        self._node_rules(base, kind, node, result)
        return result

    def _node_rules(self, base: str, kind: str, node: dict[str, Any], result: dict[str, Any]) -> None:
        c = self.c
        digits = (result.get("min_digits"), result.get("max_digits"))
        if kind == "collect" and all(map(_is_int, digits)) and digits[0] > digits[1]:
            c.error(f"{base}.min_digits", "must not be more than max_digits")
        if kind == "answer":
            if _is_int(result.get("article")):
                c.articles[f"{base}.article"] = result["article"]
            given = [k for k in ("article", "query") if node.get(k) is not None]
            if len(given) != 1:
                c.error(base, "an answer node names exactly one of article (an id) or query (search words)")
        if kind == "transfer":
            given = [k for k in ("extension", "number") if node.get(k) is not None]
            if len(given) != 1:
                c.error(base, "a transfer node names exactly one of extension or number")
        if kind == "lookup" and result.get("kind") == "customer_by_caller" and node.get("number") is not None:
            c.warn(f"{base}.number", "a customer lookup uses the caller's number; number is not used")

    def _value(self, node_id: str, path: str, kind: str, value: Any) -> Any:  # noqa: C901, PLR0911, PLR0912
        c = self.c
        if kind in ("text", "short_text"):
            limit = MAX_TEXT if kind == "text" else 200
            if not isinstance(value, str) or not value.strip():
                c.error(path, "must be non-empty text")
                return None
            if len(value) > limit:
                c.error(path, f"too long: {len(value)} characters (at most {limit})")
                return None
            if kind == "text":
                self.texts.append((path, value))
            return value
        if kind == "node":
            if not isinstance(value, str):
                c.error(path, "must name a node")
                return None
            if value not in self.node_ids:
                c.error(path, f'unknown node "{value}"')
                return None
            self.edges[node_id].append((path, value))
            return value
        if kind == "options":
            if not isinstance(value, dict) or not value:
                c.error(path, "must map digits to nodes, e.g. {'1': billing}")
                return None
            if len(value) > MAX_OPTIONS:
                c.error(path, f"too many options: {len(value)} (at most {MAX_OPTIONS})")
                return None
            options: dict[str, str] = {}
            for key, target in value.items():
                digit = str(key) if _is_int(key) or isinstance(key, str) else None
                if digit is None or not OPTION_KEY.match(digit):
                    c.error(f"{path}.{key}", "an option is one key: 0-9, * or # (quote * and # in YAML)")
                    continue
                if digit in options:
                    c.error(f"{path}.{key}", "the same key is given twice")
                    continue
                found = self._value(node_id, f"{path}.{digit}", "node", target)
                if found is not None:
                    options[digit] = found
            return options
        if kind == "variable":
            if not isinstance(value, str) or not VARIABLE.match(value):
                c.error(path, "must be a variable name (lower-case letters, digits and _)")
                return None
            if value in BUILTIN_VARIABLES and path.endswith(".into"):
                c.error(path, f"{value} is set by the system; choose another name")
                return None
            return value
        if kind in ("retries", "timeout", "digits", "priority", "answer_chars", "id"):
            low, high = {
                "retries": (0, MAX_RETRIES),
                "timeout": (1, 60),
                "digits": (1, MAX_DIGITS),
                "priority": (-100, 100),
                "answer_chars": (20, MAX_ANSWER_CHARS),
                "id": (1, 2**63 - 1),
            }[kind]
            if not _is_int(value) or not low <= value <= high:
                c.error(path, f"must be a whole number from {low} to {high}")
                return None
            return value
        if kind == "bool":
            if not isinstance(value, bool):
                c.error(path, "must be true or false")
                return None
            return value
        if kind == "pattern":
            if not isinstance(value, str) or not value or len(value) > MAX_PATTERN:
                c.error(path, f"must be a regular expression of at most {MAX_PATTERN} characters")
                return None
            try:
                re.compile(value)
            except re.error as exc:
                c.error(path, f"not a valid regular expression: {exc}")
                return None
            return value
        if kind == "terminator":
            if value not in ("#", "*", ""):
                c.error(path, 'must be "#", "*" or "" (no terminator)')
                return None
            return value
        if kind == "lookup_kind":
            if value not in LOOKUP_KINDS:
                c.error(path, f"unknown lookup {value!r} (expected one of: {', '.join(LOOKUP_KINDS)})")
                return None
            return value
        if kind == "work_order_type":
            if value not in WORK_ORDER_TYPES:
                c.error(path, f"unknown work-order type {value!r} (expected one of: {', '.join(WORK_ORDER_TYPES)})")
                return None
            return value
        if kind == "dial":
            text = str(value) if _is_int(value) else value
            if not isinstance(text, str) or not DIAL.match(text):
                c.error(path, "must be digits (optionally a leading +, * and #), at most 32")
                return None
            return text
        if kind == "queue":
            if not isinstance(value, str) or not QUEUE_CODE.match(value):
                c.error(path, "must be a routing queue code")
                return None
            c.queues[path] = value
            return value
        if kind == "calendar":
            if not (_is_int(value) and value > 0) and not (isinstance(value, str) and value.strip()):
                c.error(path, "must be a business calendar's name or id")
                return None
            c.calendars[path] = value
            return value
        raise AssertionError(kind)  # pragma: no cover

    def _graph(self, start: str, nodes: dict[str, Any]) -> None:
        c = self.c
        edges = {n: [t for _, t in self.edges.get(n, [])] for n in nodes}
        reachable: set[str] = set()
        todo = [start]
        while todo:
            current = todo.pop()
            if current in reachable:
                continue
            reachable.add(current)
            todo.extend(edges[current])
        for node_id in nodes:
            if node_id not in reachable:
                c.warn(f"nodes.{node_id}", "not reachable from the start node")
        # Nodes from which the call can end: terminal nodes and everything leading to one.
        incoming: dict[str, list[str]] = {n: [] for n in nodes}
        for source, targets in edges.items():
            for target in targets:
                incoming[target].append(source)
        ends = {n for n, node in nodes.items() if node["type"] in TERMINAL}
        todo = list(ends)
        while todo:
            for source in incoming[todo.pop()]:
                if source not in ends:
                    ends.add(source)
                    todo.append(source)
        for node_id in nodes:
            if node_id in reachable and node_id not in ends:
                c.error(f"nodes.{node_id}", "no way out: every path from here loops without ending the call")
        # Loops that never ask the caller for anything would play or look up forever.
        quiet = {n for n, node in nodes.items() if node["type"] not in ASKS_CALLER and node["type"] not in TERMINAL}
        state: dict[str, int] = {}
        reported: set[frozenset[str]] = set()
        for root in sorted(quiet):
            if state.get(root):
                continue
            path: list[str] = []
            stack: list[tuple[str, int]] = [(root, 0)]
            while stack:
                current, index = stack.pop()
                if index == 0:
                    state[current] = 1
                    path.append(current)
                targets = [t for t in edges[current] if t in quiet]
                if index < len(targets):
                    stack.append((current, index + 1))
                    target = targets[index]
                    if state.get(target) == 1:
                        cycle = path[path.index(target) :]
                        key = frozenset(cycle)
                        if key not in reported:
                            reported.add(key)
                            loop = " -> ".join([*cycle, target])
                            c.error(f"nodes.{target}", f"loops without asking the caller for input ({loop})")
                    elif not state.get(target):
                        stack.append((target, 0))
                else:
                    state[current] = 2
                    path.pop()


def check_source(
    source: str, fmt: str = "auto", *, max_bytes: int = MAX_SOURCE_BYTES, max_nodes: int = MAX_NODES
) -> Checked:
    """Parse and check a source without a database (references to other domains are only collected)."""
    if not isinstance(source, str) or not source.strip():
        return Checked(None, [Problem("source", "the flow source is empty")])
    size = len(source.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        return Checked(None, [Problem("source", f"too large: {size} bytes (at most {max_bytes})")])
    data, errors = parse_source(source, fmt)
    if errors:
        return Checked(None, errors)
    checked = Checked(None, lines=_yaml_lines(source))
    checked.definition = _Checker(checked, max_nodes=max_nodes).run(data)
    return checked


# --- references to other domains -----------------------------------------------------------------
async def check_references(db: AsyncSession, checked: Checked) -> None:
    """Routing queues, business calendars and public knowledge articles the flow names must exist.
    Calendars named by name are resolved to their id in the definition (``calendar_id``)."""
    from kefu.core.errors import ApiError
    from kefu.knowledge import service as knowledge
    from kefu.routing import service as routing
    from kefu.tickets import sla

    from .engine import PUBLIC_READER

    for path, code in checked.queues.items():
        try:
            queue = await routing.queue_by_code(db, code)
        except ApiError:
            checked.error(path, f'unknown routing queue "{code}"')
            continue
        if not queue.active:
            checked.warn(path, f'routing queue "{code}" is inactive')
    if checked.calendars:
        calendars = [c.calendar for c in await sla.list_calendars(db)]
        by_name = {c.name: c.id for c in calendars}
        ids = {c.id for c in calendars}
        for path, ref in checked.calendars.items():
            found = ref if _is_int(ref) and ref in ids else by_name.get(ref) if isinstance(ref, str) else None
            if found is None:
                checked.error(path, f"unknown business calendar {ref!r}")
            elif checked.definition is not None:
                node_id = path.split(".")[1]
                checked.definition["nodes"][node_id]["calendar_id"] = found
    for path, article_id in checked.articles.items():
        try:
            view = await knowledge.get_article(db, PUBLIC_READER, article_id)
        except ApiError:
            view = None
        if view is None or view.live is None:
            checked.error(path, f"article {article_id} is not a published public knowledge article")
    if checked.errors:
        checked.definition = None


async def check(
    db: AsyncSession, source: str, fmt: str = "auto", *, max_bytes: int = MAX_SOURCE_BYTES, max_nodes: int = MAX_NODES
) -> Checked:
    checked = check_source(source, fmt, max_bytes=max_bytes, max_nodes=max_nodes)
    if checked.definition is not None or checked.queues or checked.calendars or checked.articles:
        # Also beside schema errors: every problem is reported at once.
        await check_references(db, checked)
    return checked
