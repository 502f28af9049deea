"""Knowledge import and export: JSONL files and folders of Markdown files, idempotent by external id.

Record (JSONL: one JSON object a line; Markdown: one ``.md`` file, fields in a front-matter block)::

    external_id        required; the article's stable id in the source (re-imports update, never duplicate)
    title              the standard question (<= 300 characters)
    body_markdown      the answer (<= 200,000 characters); "text" or "body" are accepted instead
    similar_questions  list; tags  list; case_fields  {problem, analysis, resolution, lessons} (kind "case")
    kind               faq | case | experience            audience  internal | public
    language           e.g. zh-CN                         category  a path such as "银行卡/挂失" (made if missing)
    owner              a staff username                   status    published (default) | draft
    effective_from, expires_at (ISO 8601 with a zone), verify_interval_days

A Markdown file holds ``key: value`` lines between ``---`` lines, then the body. Values are bare text,
``null``, a 'single-quoted' or JSON string, a list (``[a, b]`` or JSON) or a JSON object (case fields).
Its path in the folder is the default external id, its subfolders the default category.

The evaluation KB format ``{"article_id", "title"?, "text", "similar_questions"?}`` is accepted too
(``article_id`` is the external id; without a title, the first sentence of the text becomes one).

Content (title, body, lists, case fields) is a whole version: a missing list means an empty one.
Placement fields (kind, audience, language, category, owner, dates, interval) that a record leaves out
keep their current value on an existing article; ``null`` clears the nullable ones.

An export writes the same records (the live version of each article). An article made in the app,
without an external id, is exported as ``kefu:<id>:<creation time>``, which a re-import into the same
database recognises as that article and which can never match an article of another database.

Every record is validated before anything is written, and every problem is reported with its line
(or file), field and reason; the valid records are then applied, each in its own savepoint, through
the article service (which audits, versions and feeds the search index). An unchanged record writes
nothing, so importing the same file twice creates no versions.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Annotated, Any, Literal

from pydantic import AfterValidator, AwareDatetime, Field, StringConstraints, ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from kefu.core import audit
from kefu.core.errors import ApiError, Invalid
from kefu.core.policy import Principal, allows
from kefu.core.schemas import LanguageTag, Username, single_line
from kefu.identity.models import STAFF_ROLES, User, UserRole
from kefu.identity.service import actor_of, find_user_by_login
from kefu.knowledge import service
from kefu.knowledge.models import Article, ArticleVersion, Category, VersionStatus
from kefu.knowledge.schemas import AudienceName, ContentIn, ExternalId, Kind
from kefu.knowledge.service import CASE_FIELDS, WORKING, Content, Placement
from kefu.settings import Settings

MAX_RECORDS = 100_000
# Far above the largest valid record (a 200k-character body written as \uXXXX escapes, plus lists and
# case fields), so only a runaway line is cut off unread.
MAX_RECORD_BYTES = 16 * 1024 * 1024
MAX_ERRORS_PER_RECORD = 20
CATEGORY_NAME_CHARS = 128
_LOOKUP_CHUNK = 500
_DERIVED_TITLE_CHARS = 60
_BODY_KEYS = ("body_markdown", "text", "body")
_PLACEMENT_FIELDS = ("kind", "audience", "language", "verify_interval_days", "effective_from", "expires_at")


# --- the record --------------------------------------------------------------------------------
def split_category_path(path: str) -> list[str]:
    r"""``"银行卡/挂失"`` -> ``["银行卡", "挂失"]``; ``\/`` and ``\\`` stand for a slash or backslash in a name."""
    parts: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(path):
        ch = path[i]
        if ch == "\\" and i + 1 < len(path) and path[i + 1] in "/\\":
            current.append(path[i + 1])
            i += 2
            continue
        if ch == "/":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    parts.append("".join(current))
    names = [part.strip() for part in parts]
    if any(not name for name in names):
        raise ValueError("a category path has an empty part")
    if any(len(name) > CATEGORY_NAME_CHARS for name in names):
        raise ValueError(f"a category name is longer than {CATEGORY_NAME_CHARS} characters")
    return names


def join_category_path(names: Iterable[str]) -> str:
    return "/".join(name.replace("\\", "\\\\").replace("/", "\\/") for name in names)


def _category_path(value: str) -> str:
    split_category_path(value)
    return value


CategoryPath = Annotated[
    str, StringConstraints(min_length=1, max_length=2000), AfterValidator(single_line), AfterValidator(_category_path)
]


class ImportRecord(ContentIn):
    """One imported article: the API's content types, plus where it lives and whether to publish it."""

    external_id: ExternalId
    kind: Kind = "faq"
    audience: AudienceName = "internal"
    language: LanguageTag = "zh-CN"
    category: CategoryPath | None = None
    owner: Username | None = None
    status: Literal["published", "draft"] = "published"
    effective_from: AwareDatetime | None = None
    expires_at: AwareDatetime | None = None
    verify_interval_days: int | None = Field(default=None, ge=1, le=3650)


# --- reports -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Source:
    """Where a record came from: a JSONL line number or a Markdown file's path inside the folder."""

    line: int | None = None
    file: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.line} if self.file is None else {"file": self.file}


@dataclass(frozen=True)
class RecordError:
    source: Source
    field: str | None
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {**self.source.as_dict(), "field": self.field, "message": self.message}


@dataclass
class ImportReport:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    errors: list[RecordError] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "created": self.created,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "errors": [e.as_dict() for e in self.errors],
        }


@dataclass
class RawRecord:
    """A record as read: its fields, or why it could not be read at all."""

    source: Source
    data: dict[str, Any] | None
    problem: tuple[str | None, str] | None = None  # (field, message)


# --- reading JSONL -----------------------------------------------------------------------------
def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _parse_json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc.msg} (column {exc.colno})") from None
    if not isinstance(value, dict):
        raise ValueError("a record must be a JSON object")
    return value


def iter_jsonl(stream: IO[bytes]) -> Iterator[RawRecord]:
    """Records of a JSONL byte stream, one a line; blank lines are skipped, line numbers count them."""
    number = 0
    while True:
        line = stream.readline(MAX_RECORD_BYTES + 1)
        if not line:
            return
        number += 1
        source = Source(line=number)
        if len(line) > MAX_RECORD_BYTES and not line.endswith(b"\n"):
            # Skip the rest of the runaway line without holding it in memory.
            while (rest := stream.readline(1024 * 1024)) and not rest.endswith(b"\n"):
                pass
            yield RawRecord(source, None, (None, f"the line is longer than {MAX_RECORD_BYTES} bytes"))
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield RawRecord(source, None, (None, f"not UTF-8 text (byte {exc.start + 1})"))
            continue
        if number == 1:
            text = text.removeprefix("\ufeff")
        if not text.strip():
            continue
        try:
            yield RawRecord(source, _parse_json_object(text))
        except ValueError as exc:
            yield RawRecord(source, None, (None, str(exc)))


def read_jsonl(path: Path) -> Iterator[RawRecord]:
    with path.open("rb") as stream:
        yield from iter_jsonl(stream)


# --- reading Markdown --------------------------------------------------------------------------
_FRONT_MATTER_KEY = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*:(.*)$")


def _parse_bare_list(raw: str) -> list[Any]:
    """``[a, b c, "d, e"]``: items are bare text (no comma, quote or bracket) or JSON strings."""
    inner = raw[1:-1]
    if not inner.strip():
        return []
    items: list[Any] = []
    decoder = json.JSONDecoder()
    i, n = 0, len(inner)
    while True:
        while i < n and inner[i] == " ":
            i += 1
        if i < n and inner[i] == '"':
            item, i = decoder.raw_decode(inner, i)
            while i < n and inner[i] == " ":
                i += 1
            if i < n and inner[i] != ",":
                raise ValueError("list items must be separated by commas")
        else:
            end = inner.find(",", i)
            end = n if end == -1 else end
            item = inner[i:end].strip()
            if any(ch in item for ch in '"[]{}'):
                raise ValueError("write list items holding quotes or brackets as JSON strings")
            i = end
        if item == "":
            raise ValueError("an empty list item")
        items.append(item)
        if i >= n:
            return items
        i += 1  # past the comma


def _parse_front_matter_value(raw: str) -> Any:
    """Bare text is a string; ``null``/empty is null; ``'...'`` is a YAML single-quoted string;
    ``"..."``, ``[...]`` and ``{...}`` are JSON (lists may also be written bare, ``[a, b]``)."""
    raw = raw.strip()
    if raw in ("", "null", "~"):
        return None
    if raw[0] == "'":
        # A YAML single-quoted string, for those who write front matter by hand ('' is a quote).
        if len(raw) < 2 or not raw.endswith("'") or "'" in raw[1:-1].replace("''", ""):
            raise ValueError("a single-quoted value must end with ' (write a quote inside as '')")
        return raw[1:-1].replace("''", "'")
    if raw[0] in '"{':
        try:
            return json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON: {exc.msg}") from None
    if raw[0] == "[":
        if not raw.endswith("]"):
            raise ValueError("a list must end with ]")
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            try:
                return _parse_bare_list(raw)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not valid JSON: {exc.msg}") from None
    return raw


def parse_markdown(text: str) -> tuple[dict[str, Any], str]:
    """Split a Markdown file into its front-matter fields and its body. Raises ValueError((field, msg))."""
    text = text.removeprefix("\ufeff")
    lines = text.split("\n")
    if lines[0].rstrip("\r") != "---":
        return {}, text
    try:
        close = next(i for i in range(1, len(lines)) if lines[i].rstrip("\r") in ("---", "..."))
    except StopIteration:
        raise ValueError((None, "the front matter has no closing --- line")) from None
    fields: dict[str, Any] = {}
    for number, line in enumerate(lines[1:close], start=2):
        line = line.rstrip("\r")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _FRONT_MATTER_KEY.match(line)
        if match is None:
            raise ValueError((None, f"front matter line {number} is not `key: value`"))
        key, raw = match.group(1), match.group(2)
        if key in fields:
            raise ValueError((key, f"given twice in the front matter (line {number})"))
        try:
            fields[key] = _parse_front_matter_value(raw)
        except ValueError as exc:
            raise ValueError((key, f"front matter line {number}: {exc}")) from None
    return fields, "\n".join(lines[close + 1 :])


def _markdown_files(folder: Path) -> list[Path]:
    found: list[Path] = []
    for root, dirs, files in os.walk(folder):
        # Hidden folders (.git, editor state) are not content; symlinked folders are not followed.
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(Path(root, f) for f in files if f.lower().endswith(".md") and not f.startswith("."))
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def read_markdown_folder(folder: Path) -> Iterator[RawRecord]:
    """One record per ``.md`` file (sorted by path). Its relative path is the default external id and
    its folders the default category."""
    for path in _markdown_files(folder):
        relative = path.relative_to(folder)
        source = Source(file=relative.as_posix())
        try:
            if path.stat().st_size > MAX_RECORD_BYTES:
                yield RawRecord(source, None, (None, f"the file is larger than {MAX_RECORD_BYTES} bytes"))
                continue
            raw = path.read_bytes()
        except OSError as exc:
            yield RawRecord(source, None, (None, f"cannot read: {exc.strerror or exc}"))
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield RawRecord(source, None, (None, f"not UTF-8 text (byte {exc.start + 1})"))
            continue
        try:
            fields, body = parse_markdown(text)
        except ValueError as exc:
            field_name, message = exc.args[0]
            yield RawRecord(source, None, (field_name, message))
            continue
        present = [key for key in _BODY_KEYS if key in fields]
        if present:
            yield RawRecord(source, None, (present[0], "the body goes after the front matter, not in it"))
            continue
        fields["body_markdown"] = body
        if "external_id" not in fields and "article_id" not in fields:
            fields["external_id"] = relative.as_posix()
        if "category" not in fields and len(relative.parts) > 1:
            fields["category"] = join_category_path(relative.parts[:-1])
        yield RawRecord(source, fields)


def read_source(path: Path) -> Iterator[RawRecord]:
    """A folder is read as Markdown files, anything else as JSONL."""
    return read_markdown_folder(path) if path.is_dir() else read_jsonl(path)


# --- validation --------------------------------------------------------------------------------
def title_from_text(text: str) -> str:
    """A title for a record that has none (evaluation data): the text's first sentence, shortened."""
    first = next((" ".join(line.split()) for line in text.splitlines() if line.strip()), "")
    sentence = re.match(r".*?[。！？!?；;]", first)
    if sentence and len(sentence.group(0)) <= _DERIVED_TITLE_CHARS:
        return sentence.group(0)
    return first if len(first) <= _DERIVED_TITLE_CHARS else first[: _DERIVED_TITLE_CHARS - 1] + "…"


@dataclass
class _Valid:
    source: Source
    record: ImportRecord
    content: Content
    given: frozenset[str]  # the fields the record states (the others keep their current value)


def _normalize_keys(data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Apply the accepted aliases; returns the record and {field: the key the source used}."""
    data = dict(data)
    used: dict[str, str] = {}
    for key in ("similar_questions", "tags", "case_fields"):
        if key in data and data[key] is None:
            del data[key]  # content lists: null is the same as none
    if "article_id" in data:
        if "external_id" in data:
            raise ValueError(("article_id", "give external_id or article_id, not both"))
        data["external_id"] = data.pop("article_id")
        used["external_id"] = "article_id"
    bodies = [key for key in _BODY_KEYS if key in data]
    if len(bodies) > 1:
        raise ValueError((bodies[1], f"give the body once ({' or '.join(bodies)})"))
    if bodies and bodies[0] != "body_markdown":
        data["body_markdown"] = data.pop(bodies[0])
        used["body_markdown"] = bodies[0]
    if used.get("external_id") == "article_id" and "title" not in data and isinstance(data.get("body_markdown"), str):
        derived = title_from_text(data["body_markdown"])
        if derived:
            data["title"] = derived
    return data, used


def _field_name(loc: tuple[Any, ...], used: dict[str, str]) -> str | None:
    if not loc:
        return None
    head = used.get(str(loc[0]), str(loc[0]))
    return ".".join([head, *(str(part) for part in loc[1:])])


def _validate_one(raw: RawRecord) -> tuple[_Valid | None, list[RecordError], str | None]:
    """The record (or its errors) and, whenever it can be read, its external id."""
    source = raw.source
    if raw.data is None:
        field_name, message = raw.problem or (None, "unreadable")
        return None, [RecordError(source, field_name, message)], None
    try:
        data, used = _normalize_keys(raw.data)
    except ValueError as exc:
        field_name, message = exc.args[0]
        return None, [RecordError(source, field_name, message)], None
    # Compared as the model will store it (stripped), so " a" and "a" are caught as the same id.
    external_id = data["external_id"].strip() if isinstance(data.get("external_id"), str) else None
    try:
        record = ImportRecord.model_validate(data)
    except ValidationError as exc:
        errors = [
            RecordError(source, _field_name(tuple(e["loc"]), used), e["msg"])
            for e in exc.errors(include_url=False, include_input=False)[:MAX_ERRORS_PER_RECORD]
        ]
        return None, errors, external_id
    content = record.content()
    if not record.change_note:
        content.change_note = "导入 / imported"
    errors = []
    try:
        service._validate_content(record.kind, content)
    except Invalid as exc:
        errors.append(RecordError(source, "case_fields", exc.message))
    if record.effective_from and record.expires_at and record.expires_at <= record.effective_from:
        errors.append(RecordError(source, "expires_at", "must be after effective_from"))
    if errors:
        return None, errors, record.external_id
    return _Valid(source, record, content, frozenset(record.model_fields_set)), [], record.external_id


# --- applying ----------------------------------------------------------------------------------
_SYNTHETIC_ID = re.compile(r"^kefu:(\d{1,19}):(\d{8}T\d{12}Z)$")


def synthetic_external_id(article: Article) -> str:
    """The id exported for an article that has none: its id and creation time, so a re-import into the
    same database finds it again and an import anywhere else can never mistake another article for it."""
    return f"kefu:{article.id}:{article.created_at.astimezone(UTC):%Y%m%dT%H%M%S%fZ}"


def _same_content(version: ArticleVersion, content: Content) -> bool:
    # Compared the way the service stores content, so an unchanged record is recognised as such. Trailing
    # whitespace of a Markdown body means nothing (and a Markdown file's body loses its final newline).
    return (
        version.title == " ".join(content.title.split())
        and version.body_markdown.rstrip() == content.body_markdown.rstrip()
        and list(version.similar_questions) == service._normalized_list(content.similar_questions, 200)
        and list(version.tags) == service._normalized_list(content.tags, 50)
        and dict(version.case_fields) == {k: v for k, v in content.case_fields.items() if v}
    )


@dataclass
class _Existing:
    article: Article
    visible: bool
    live: ArticleVersion | None = None
    working: ArticleVersion | None = None


class _Importer:
    def __init__(self, db: AsyncSession, principal: Principal, settings: Settings, *, draft: bool) -> None:
        self.db = db
        self.principal = principal
        self.settings = settings
        self.draft = draft
        self.may_publish = allows(principal, "article", "publish")
        self.may_make_categories = allows(principal, "category", "manage")
        self.categories: dict[tuple[int | None, str], int] = {}
        self.owners: dict[str, int | None] = {}
        self.report = ImportReport()

    def fail(self, source: Source, field_name: str | None, message: str) -> None:
        self.report.errors.append(RecordError(source, field_name, message))

    # .. lookups ..
    async def load_categories(self) -> None:
        rows = await self.db.execute(select(Category.id, Category.parent_id, Category.name))
        self.categories = {(parent_id, name): cid for cid, parent_id, name in rows}

    def find_category(self, path: str) -> int | None | Literal[False]:
        """The category's id, or False when some part of the path does not exist yet."""
        parent: int | None = None
        for name in split_category_path(path):
            found = self.categories.get((parent, name))
            if found is None:
                return False
            parent = found
        return parent

    async def ensure_category(self, path: str, made: list[tuple[int | None, str]]) -> int:
        parent: int | None = None
        for name in split_category_path(path):
            found = self.categories.get((parent, name))
            if found is None:
                category = await service.create_category(self.db, self.principal, name=name, parent_id=parent)
                found = self.categories[(parent, name)] = category.id
                made.append((parent, name))
            parent = found
        assert parent is not None
        return parent

    async def owner_id(self, username: str) -> int | None:
        if username not in self.owners:
            user = await find_user_by_login(self.db, username)
            ok = user is not None and user.is_active and bool(user.role_names & STAFF_ROLES)
            self.owners[username] = user.id if ok and user is not None else None
        return self.owners[username]

    async def existing(self, external_ids: list[str]) -> dict[str, _Existing]:
        found: dict[str, _Existing] = {}
        for start in range(0, len(external_ids), _LOOKUP_CHUNK):
            chunk = external_ids[start : start + _LOOKUP_CHUNK]
            for article in (await self.db.scalars(select(Article).where(Article.external_id.in_(chunk)))).all():
                found[article.external_id or ""] = _Existing(article, visible=False)
        for external_id in external_ids:
            match = _SYNTHETIC_ID.match(external_id)
            if match and external_id not in found:
                article = await self.db.scalar(
                    select(Article).where(Article.id == int(match.group(1)), Article.external_id.is_(None))
                )
                if article is not None and synthetic_external_id(article) == external_id:
                    found[external_id] = _Existing(article, visible=False)
        articles = {e.article.id: e for e in found.values()}
        ids = list(articles)
        for start in range(0, len(ids), _LOOKUP_CHUNK):
            chunk = ids[start : start + _LOOKUP_CHUNK]
            visible = await self.db.scalars(
                select(Article.id).where(Article.id.in_(chunk), service.visibility_clause(self.principal))
            )
            for article_id in visible.all():
                articles[article_id].visible = True
            live_ids = [
                articles[i].article.published_version_id for i in chunk if articles[i].article.published_version_id
            ]
            for version in (await self.db.scalars(select(ArticleVersion).where(ArticleVersion.id.in_(live_ids)))).all():
                articles[version.article_id].live = version
            working = await self.db.scalars(
                select(ArticleVersion).where(ArticleVersion.article_id.in_(chunk), ArticleVersion.status.in_(WORKING))
            )
            for version in working.all():
                articles[version.article_id].working = version
        return found

    # .. checks that need the database, before anything is written ..
    async def check(self, item: _Valid) -> bool:
        record, ok = item.record, True
        if self.wants_publish(record) and not self.may_publish:
            self.fail(item.source, "status", "you may not publish; import as drafts (--draft) or as a publisher")
            ok = False
        if record.owner is not None and await self.owner_id(record.owner) is None:
            self.fail(item.source, "owner", f"no active staff member {record.owner!r}")
            ok = False
        if (
            record.category is not None
            and not self.may_make_categories
            and self.find_category(record.category) is False
        ):
            self.fail(item.source, "category", "the category does not exist and you may not create categories")
            ok = False
        return ok

    def check_existing(self, item: _Valid, found: _Existing) -> bool:
        article = found.article
        if not found.visible:
            self.fail(item.source, "external_id", "an article with this external id exists that you may not change")
            return False
        if article.archived_at is not None:
            self.fail(item.source, "external_id", f"article {article.id} is archived; restore it first")
            return False
        return True

    # .. writing ..
    async def apply(self, item: _Valid, found: _Existing | None) -> None:
        made: list[tuple[int | None, str]] = []
        try:
            async with self.db.begin_nested():
                if found is None:
                    await self.create(item, made)
                    outcome = "created"
                else:
                    outcome = "updated" if await self.update(item, found, made) else "unchanged"
        except ApiError as exc:
            self.forget(made)
            self.fail(item.source, None, exc.message)
            return
        except IntegrityError as exc:
            self.forget(made)
            self.fail(item.source, None, f"refused by the database: {exc.orig}")
            return
        setattr(self.report, outcome, getattr(self.report, outcome) + 1)

    def forget(self, made: list[tuple[int | None, str]]) -> None:
        for key in made:  # rolled back with the record's savepoint
            self.categories.pop(key, None)

    def wants_publish(self, record: ImportRecord) -> bool:
        return record.status == "published" and not self.draft

    async def create(self, item: _Valid, made: list[tuple[int | None, str]]) -> None:
        record = item.record
        placement = Placement(
            kind=record.kind,
            audience=record.audience,
            language=record.language,
            category_id=await self.ensure_category(record.category, made) if record.category else None,
            owner_id=await self.owner_id(record.owner) if record.owner else None,
            verify_interval_days=record.verify_interval_days,
            effective_from=record.effective_from,
            expires_at=record.expires_at,
        )
        view = await service.create_article(
            self.db, self.principal, item.content, placement, external_id=record.external_id
        )
        if "owner" in item.given and record.owner is None:
            # An explicit null owner (an export of an article whose owner was deleted) stays ownerless.
            await service.update_placement(self.db, self.principal, view.article.id, owner_id=None)
        if self.wants_publish(record):
            await service.publish(self.db, self.principal, self.settings, view.article.id)

    async def update(self, item: _Valid, found: _Existing, made: list[tuple[int | None, str]]) -> bool:
        record, article = item.record, found.article
        changes: dict[str, Any] = {}
        for name in _PLACEMENT_FIELDS:
            if name in item.given and getattr(article, name) != getattr(record, name):
                changes[name] = getattr(record, name)
        if "category" in item.given:
            if record.category is None:
                category_id = None
            else:
                known = self.find_category(record.category)
                category_id = known if known is not False else await self.ensure_category(record.category, made)
            if article.category_id != category_id:
                changes["category_id"] = category_id
        if "owner" in item.given:
            owner_id = await self.owner_id(record.owner) if record.owner else None
            if article.owner_id != owner_id:
                changes["owner_id"] = owner_id
        save, publish = self.content_steps(item, found)
        if changes:
            if not self.may_publish:
                raise ApiError(403, "forbidden", f"only publishers may change {', '.join(sorted(changes))}")
            await service.update_placement(self.db, self.principal, article.id, **changes)
        if save:
            await service.save_draft(self.db, self.principal, article.id, item.content)
        if publish:
            await service.publish(self.db, self.principal, self.settings, article.id)
        return bool(changes or save or publish)

    def content_steps(self, item: _Valid, found: _Existing) -> tuple[bool, bool]:
        """(save a draft?, publish?) to bring the article to the record's content and status."""
        live, working = found.live, found.working
        own_draft = (
            working is not None
            and working.status == VersionStatus.draft
            and working.author_id == self.principal.user_id
        )
        if self.wants_publish(item.record):
            if live is not None and _same_content(live, item.content):
                return False, False
            if working is None:
                return True, True
            if own_draft:
                return not _same_content(working, item.content), True
        else:
            current = working or live
            if current is not None and _same_content(current, item.content):
                return False, False
            if working is None or own_draft:
                return True, False
        assert working is not None
        # Someone else's work in progress is never overwritten by a file.
        raise ApiError(
            409,
            "conflict",
            f"version {working.number} is work in progress ({working.status}, not your draft); "
            "publish or withdraw it first",
        )


async def import_records(
    db: AsyncSession,
    principal: Principal,
    settings: Settings,
    records: Iterable[RawRecord],
    *,
    draft: bool = False,
) -> ImportReport:
    """Validate every record, then create or update the valid ones in the caller's transaction.

    ``draft`` imports every record as a draft (nothing is published). A record that fails is reported
    and leaves no trace; every other record is applied.
    """
    if not allows(principal, "article", "create"):
        raise ApiError(403, "forbidden", "not allowed to create articles")
    importer = _Importer(db, principal, settings, draft=draft)
    report = importer.report
    valid: list[_Valid] = []
    first_seen: dict[str, Source] = {}
    for count, raw in enumerate(records, start=1):
        if count > MAX_RECORDS:
            # A file this size is a mistake as a whole: nothing is applied, rather than an arbitrary part.
            return ImportReport(
                errors=[RecordError(raw.source, None, f"more than {MAX_RECORDS} records in one import; split it")]
            )
        item, errors, external_id = _validate_one(raw)
        if external_id is not None:
            earlier = first_seen.setdefault(external_id, raw.source)
            if earlier is not raw.source:
                where = f"line {earlier.line}" if earlier.file is None else earlier.file
                errors.append(RecordError(raw.source, "external_id", f"duplicate external id (first at {where})"))
                item = None
        report.errors.extend(errors)
        if item is not None:
            valid.append(item)

    await importer.load_categories()
    checked = [item for item in valid if await importer.check(item)]
    found = await importer.existing([item.record.external_id for item in checked])
    for item in checked:
        existing = found.get(item.record.external_id)
        if existing is not None and not importer.check_existing(item, existing):
            continue
        await importer.apply(item, existing)

    report.errors.sort(key=lambda e: (e.source.line or 0, e.source.file or ""))
    await audit.record(
        db,
        actor_of(principal),
        "article.import",
        object_type="article",
        details={
            "created": report.created,
            "updated": report.updated,
            "unchanged": report.unchanged,
            "errors": len(report.errors),
            "draft": draft,
        },
    )
    return report


async def import_path(
    db: AsyncSession, principal: Principal, settings: Settings, path: Path, *, draft: bool = False
) -> ImportReport:
    """Import a JSONL file or a folder of Markdown files."""
    return await import_records(db, principal, settings, read_source(path), draft=draft)


# --- export ------------------------------------------------------------------------------------
def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value is not None else None


async def export_records(db: AsyncSession, principal: Principal) -> list[dict[str, Any]]:
    """The live version of every non-archived article ``principal`` may see, as import records,
    sorted by external id (so two databases holding the same articles export the same bytes)."""
    if not allows(principal, "article", "list"):
        raise ApiError(403, "forbidden", "not allowed to list articles")
    articles = (
        await db.scalars(
            select(Article).where(
                service.visibility_clause(principal),
                Article.archived_at.is_(None),
                Article.published_version_id.is_not(None),
            )
        )
    ).all()
    keyed = sorted(((a.external_id or synthetic_external_id(a), a) for a in articles), key=lambda pair: pair[0])
    categories = {c.id: c for c in (await db.scalars(select(Category))).all()}
    owner_ids = {a.owner_id for a in articles if a.owner_id is not None}
    owners = dict((await db.execute(select(User.id, User.username).where(User.id.in_(owner_ids)))).all())
    staff = service.is_staff(principal)

    def category_path(category_id: int | None) -> str | None:
        names: list[str] = []
        seen: set[int] = set()
        while category_id is not None and category_id in categories and category_id not in seen:
            seen.add(category_id)
            names.append(categories[category_id].name)
            category_id = categories[category_id].parent_id
        return join_category_path(reversed(names)) if names else None

    records: list[dict[str, Any]] = []
    for start in range(0, len(keyed), _LOOKUP_CHUNK):
        chunk = keyed[start : start + _LOOKUP_CHUNK]
        version_ids = [a.published_version_id for _, a in chunk]
        lives = {v.id: v for v in (await db.scalars(select(ArticleVersion).where(ArticleVersion.id.in_(version_ids))))}
        for external_id, article in chunk:
            live = lives[article.published_version_id]  # type: ignore[index]
            record: dict[str, Any] = {
                "external_id": external_id,
                "title": live.title,
                "body_markdown": live.body_markdown,
                "similar_questions": list(live.similar_questions),
                "tags": list(live.tags),
                "kind": article.kind,
                "audience": article.audience,
                "language": article.language,
                "category": category_path(article.category_id),
            }
            if staff:  # who owns what is internal
                record["owner"] = owners.get(article.owner_id) if article.owner_id is not None else None
            record["effective_from"] = _iso(article.effective_from)
            record["expires_at"] = _iso(article.expires_at)
            record["verify_interval_days"] = article.verify_interval_days
            if live.case_fields:
                record["case_fields"] = {k: live.case_fields[k] for k in CASE_FIELDS if live.case_fields.get(k)}
            records.append(record)
    return records


async def _audit_export(db: AsyncSession, principal: Principal, fmt: str, count: int) -> None:
    await audit.record(
        db, actor_of(principal), "article.export", object_type="article", details={"format": fmt, "count": count}
    )


async def export_jsonl(db: AsyncSession, principal: Principal, out: IO[str]) -> int:
    """Write one JSON record a line to ``out``; returns the number of articles."""
    records = await export_records(db, principal)
    for record in records:
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
    await _audit_export(db, principal, "jsonl", len(records))
    return len(records)


_UNSAFE_NAME_CHARS = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]')
_YAML_INDICATORS = tuple("-?:,[]{}#&*!|>'\"%@`~")
_MAX_NAME_CHARS = 80  # 80 CJK characters are 240 bytes: inside every file system's 255-byte limit


def _safe_name(name: str) -> str:
    name = _UNSAFE_NAME_CHARS.sub("_", name).strip().lstrip(".")[:_MAX_NAME_CHARS].strip()
    return name or "_"


def _front_matter_value(value: Any) -> str:
    if isinstance(value, str):
        bare = (
            value == value.strip()
            and value not in ("", "null", "~")
            and not value.startswith(_YAML_INDICATORS)
            and ": " not in value
            and " #" not in value
        )
        return value if bare else json.dumps(value, ensure_ascii=False)
    return json.dumps(value, ensure_ascii=False)


def render_markdown_file(record: dict[str, Any]) -> str:
    """A record as a Markdown file: the fields in front matter (JSON values where bare text would be
    ambiguous, so it also reads as YAML), then a blank line and the body."""
    lines = ["---"]
    for key, value in record.items():
        if key != "body_markdown":
            lines.append(f"{key}: {_front_matter_value(value)}")
    lines.append("---")
    body = record["body_markdown"]
    return "\n".join(lines) + "\n\n" + body + ("\n" if body and not body.endswith("\n") else "")


def _check_empty_folder(folder: Path) -> None:
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise Invalid(f"{folder} must be an empty folder (or not exist yet)")


def write_markdown_folder(folder: Path, records: list[dict[str, Any]]) -> None:
    """One ``.md`` file per record, in subfolders named after its category, named after its external id."""
    _check_empty_folder(folder)
    folder.mkdir(parents=True, exist_ok=True)
    used: dict[Path, set[str]] = {}
    for record in records:
        parts = split_category_path(record["category"]) if record["category"] else []
        directory = folder.joinpath(*(_safe_name(part) for part in parts))
        stem = _safe_name(record["external_id"].rsplit("/", 1)[-1].removesuffix(".md"))
        taken = used.setdefault(directory, set())
        name, n = stem, 1
        while name.casefold() in taken:  # case-insensitive file systems too
            n += 1
            name = f"{stem}-{n}"
        taken.add(name.casefold())
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"{name}.md").write_text(render_markdown_file(record), encoding="utf-8", newline="")


async def export_markdown(db: AsyncSession, principal: Principal, folder: Path) -> int:
    """Write the export as Markdown files into ``folder`` (empty or absent); returns the number of articles."""
    await asyncio.to_thread(_check_empty_folder, folder)  # before the work, not after it
    records = await export_records(db, principal)
    await asyncio.to_thread(write_markdown_folder, folder, records)
    await _audit_export(db, principal, "markdown", len(records))
    return len(records)


@contextmanager
def atomic_text_file(path: Path) -> Iterator[IO[str]]:
    """A UTF-8 text file written through a temporary sibling, so a failed export never leaves half a file."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as out:
            yield out
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


# --- who runs a command-line transfer ----------------------------------------------------------
async def principal_for(db: AsyncSession, username: str | None) -> Principal:
    """The named active user, or the first active administrator, as a principal."""
    if username:
        user = await find_user_by_login(db, username)
        if user is None or not user.is_active:
            raise Invalid(f"no active user {username!r}")
    else:
        user = await db.scalar(
            select(User)
            .where(User.is_active.is_(True), User.id.in_(select(UserRole.user_id).where(UserRole.role == "admin")))
            .order_by(User.id)
            .limit(1)
        )
        if user is None:
            raise Invalid("no active administrator; name a user with --as")
    return Principal(
        user_id=user.id,
        username=user.username,
        display_name=user.display_name,
        roles=user.role_names,
        team_ids=user.team_ids,
        locale=user.locale,
        time_zone=user.time_zone,
        via="cli",
    )
