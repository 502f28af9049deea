"""Customer import (CSV, JSONL) and export (JSONL), idempotent by external id.

Columns (CSV header, or JSONL keys)::

    external_id         required: the customer's stable id in the source; a re-import updates, never duplicates
    display_name        required for a new customer
    organisation        an organisation's name (made when there is none of that name)
    language            e.g. zh-CN          preferred_channel   phone | email | chat | sms | social | web_form | walk_in
    phone, email, chat, sms, social, crm
                        identities; several separated by ";" (JSONL: a list also works). They are added to
                        the customer (an import never removes one); one owned by another customer is an error.
    attr.<name>         a custom attribute (JSONL: also an "attributes" object); merged into the current ones

CSV files are UTF-8 (with or without BOM) or GB18030 (what Excel writes on Chinese Windows). An empty CSV
cell leaves the field as it is; in JSONL a missing key does, and ``null`` clears language,
preferred_channel or organisation.

Every row is checked, then applied in its own savepoint: a row that fails is reported with its line
number and reason and leaves nothing behind, while the other rows are imported. An unchanged row
writes nothing, so importing a file twice reports it all as unchanged the second time.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any, Literal

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from kefu.core import audit
from kefu.core.errors import ApiError, Conflict, Invalid
from kefu.core.policy import Principal, allows
from kefu.core.schemas import LanguageTag, Name, RequestModel
from kefu.customers import service
from kefu.customers.identities import KINDS, normalize_identity
from kefu.customers.models import Customer, CustomerIdentity, Organisation
from kefu.customers.schemas import Attributes, ChannelName, DisplayName, ExternalId
from kefu.identity.service import actor_of

Format = Literal["csv", "jsonl"]
MAX_ROWS = 100_000
MAX_FILE_BYTES = 50 * 1024 * 1024
MAX_ERRORS = 1000  # past this the report says how many more, rather than growing without bound
EXPORT_CHUNK = 500
ATTR_PREFIX = "attr."
PROFILE_COLUMNS = ("display_name", "organisation", "language", "preferred_channel")
COLUMNS = ("external_id", *PROFILE_COLUMNS, *KINDS)
_SEPARATORS = re.compile(r"[;；]")
_SYNTHETIC_ID = re.compile(r"^kefu:(\d{1,19}):(\d{8}T\d{12}Z)$")


# --- reports -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RowError:
    line: int
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.line, "message": self.message}


@dataclass
class ImportReport:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    errors: list[RowError] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "created": self.created,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "errors": [e.as_dict() for e in self.errors],
        }


@dataclass
class RawRow:
    """A row as read: its fields (the file's own names), or why it could not be read."""

    line: int
    data: dict[str, Any] | None
    problem: str | None = None


# --- reading -------------------------------------------------------------------------------------
def decode(data: bytes) -> str:
    """UTF-8 (a BOM is dropped) or, failing that, GB18030."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("gb18030")
    except UnicodeDecodeError as exc:
        raise Invalid(f"the file is neither UTF-8 nor GB18030 text (byte {exc.start + 1})") from None


def _check_columns(names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise Invalid(f"line 1: column {name!r} appears twice")
        seen.add(name)
        if name not in COLUMNS and not (name.startswith(ATTR_PREFIX) and len(name) > len(ATTR_PREFIX)):
            raise Invalid(f"line 1: unknown column {name[:60]!r}; known: {', '.join(COLUMNS)}, attr.<name>")
    if "external_id" not in seen:
        raise Invalid("line 1: the external_id column is required")


def _header_name(raw: str) -> str:
    name = raw.strip()
    if name.lower().startswith(ATTR_PREFIX):
        return ATTR_PREFIX + name[len(ATTR_PREFIX) :].strip()
    return name.lower()


def iter_csv(text: str) -> Iterator[RawRow]:
    """Rows of a CSV text; line numbers are where a row starts (a quoted cell may span lines)."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise Invalid(f"line 1: not CSV: {exc}") from None
    if header is None:
        raise Invalid("the file is empty")
    columns = [_header_name(h) for h in header]
    _check_columns(columns)
    start = reader.line_num + 1
    while True:
        try:
            cells = next(reader, None)
        except csv.Error as exc:
            # The reader cannot be trusted past a broken row: stop, report, import nothing after it.
            raise Invalid(f"line {start}: not CSV: {exc}") from None
        if cells is None:
            return
        line, start = start, reader.line_num + 1
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) > len(columns):
            yield RawRow(line, None, f"{len(cells)} cells but the header has {len(columns)} columns")
            continue
        # An empty cell says nothing: the field keeps its value.
        yield RawRow(line, {name: cell.strip() for name, cell in zip(columns, cells, strict=False) if cell.strip()})


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def iter_jsonl(text: str) -> Iterator[RawRow]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line, object_pairs_hook=_no_duplicate_keys)
        except json.JSONDecodeError as exc:
            yield RawRow(number, None, f"not valid JSON: {exc.msg} (column {exc.colno})")
            continue
        except ValueError as exc:
            yield RawRow(number, None, str(exc))
            continue
        if not isinstance(value, dict):
            yield RawRow(number, None, "a record must be a JSON object")
            continue
        yield RawRow(number, value)


def read_rows(data: bytes, fmt: Format) -> Iterator[RawRow]:
    if len(data) > MAX_FILE_BYTES:
        raise Invalid(f"the file is larger than {MAX_FILE_BYTES // (1024 * 1024)} MB; split it")
    text = decode(data)
    if fmt == "csv":
        return iter_csv(text)
    if fmt == "jsonl":
        return iter_jsonl(text)
    raise Invalid(f"unknown format {str(fmt)[:20]!r}; csv or jsonl")


def guess_format(filename: str | None) -> Format:
    return "jsonl" if (filename or "").lower().endswith((".jsonl", ".json", ".ndjson")) else "csv"


# --- validation ----------------------------------------------------------------------------------
class ImportRow(RequestModel):
    external_id: ExternalId
    display_name: DisplayName | None = None
    organisation: Name | None = None
    language: LanguageTag | None = None
    preferred_channel: ChannelName | None = None
    attributes: Attributes | None = None


@dataclass
class _Valid:
    line: int
    row: ImportRow
    given: frozenset[str]  # profile fields the row states (others keep their value)
    identities: list[tuple[str, str]]  # (kind, normalized value)


def _identity_values(value: Any, kind: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [part.strip() for part in _SEPARATORS.split(value) if part.strip()]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [v.strip() for v in value if v.strip()]
    raise ValueError(f"{kind}: give text (several separated by ';') or a list of text")


def _messages(exc: ValidationError) -> list[str]:
    """One message per field: an attribute value that fits none of the accepted types is one problem."""
    by_field: dict[str, list[str]] = {}
    for error in exc.errors(include_url=False, include_input=False):
        loc = [str(part) for part in error["loc"]]
        if loc[:1] == ["attributes"]:
            loc = loc[:2]
        by_field.setdefault(".".join(loc) or "row", []).append(error["msg"])
    messages = []
    for where, found in list(by_field.items())[:20]:
        if where.startswith("attributes.") and len(found) > 1:
            messages.append(f"{where}: must be text, a number or true/false")
        else:
            messages.append(f"{where}: {found[0]}")
    return messages


def _validate(raw: RawRow) -> tuple[_Valid | None, list[str], str | None]:
    """The row (or its problems) and, whenever it can be read, its external id."""
    if raw.data is None:
        return None, [raw.problem or "unreadable"], None
    data = dict(raw.data)
    problems: list[str] = []
    fields: dict[str, Any] = {}
    attributes: dict[str, Any] | None = None
    identities: list[tuple[str, str]] = []
    for key, value in data.items():
        if key in KINDS:
            try:
                for item in _identity_values(value, key):
                    try:
                        identities.append((key, normalize_identity(key, item)))
                    except Invalid as exc:
                        problems.append(f"{key}: {exc.message}")
            except ValueError as exc:
                problems.append(str(exc))
        elif key.startswith(ATTR_PREFIX) and len(key) > len(ATTR_PREFIX):
            attributes = attributes if attributes is not None else {}
            attributes[key[len(ATTR_PREFIX) :]] = value
        elif key == "attributes":
            if not isinstance(value, dict):
                problems.append("attributes: must be an object")
                continue
            attributes = {**(attributes or {}), **value}
        else:
            fields[key] = value  # unknown keys are refused by the model
    if attributes is not None:
        fields["attributes"] = attributes
    external_id = fields["external_id"].strip() if isinstance(fields.get("external_id"), str) else None
    try:
        row = ImportRow.model_validate(fields)
    except ValidationError as exc:
        problems.extend(_messages(exc))
        return None, problems, external_id
    if problems:
        return None, problems, row.external_id
    given = frozenset(name for name in row.model_fields_set if name != "external_id")
    unique_identities = list(dict.fromkeys(identities))
    return _Valid(raw.line, row, given, unique_identities), [], row.external_id


# --- applying ------------------------------------------------------------------------------------
def synthetic_external_id(customer: Customer) -> str:
    """The id exported for a customer without one: its id and creation time, so a re-import into the same
    database finds it again and an import elsewhere never mistakes another customer for it."""
    return f"kefu:{customer.id}:{customer.created_at.astimezone(UTC):%Y%m%dT%H%M%S%fZ}"


class _Importer:
    def __init__(self, db: AsyncSession, principal: Principal) -> None:
        self.db = db
        self.principal = principal
        self.organisations: dict[str, int] = {}
        self.report = ImportReport()

    def fail(self, line: int, message: str) -> None:
        self.report.errors.append(RowError(line, message))

    async def find(self, external_id: str) -> Customer | None:
        customer = await self.db.scalar(
            select(Customer).where(Customer.external_id == external_id).execution_options(populate_existing=True)
        )
        if customer is None and (match := _SYNTHETIC_ID.match(external_id)):
            candidate = await self.db.get(Customer, int(match.group(1)))
            if (
                candidate is not None
                and candidate.external_id is None
                and synthetic_external_id(candidate) == external_id
            ):
                customer = candidate
        return customer

    async def organisation_id(self, name: str | None, made: list[str]) -> int | None:
        if name is None:
            return None
        name = " ".join(name.split())
        if name not in self.organisations:
            found = await self.db.scalar(
                select(Organisation.id).where(Organisation.name == name).order_by(Organisation.id).limit(1)
            )
            if found is None:
                found = (await service.create_organisation(self.db, self.principal, name=name)).id
                made.append(name)
            self.organisations[name] = found
        return self.organisations[name]

    async def apply(self, item: _Valid) -> None:
        made: list[str] = []
        try:
            async with self.db.begin_nested():
                existing = await self.find(item.row.external_id)
                if existing is None:
                    await self.create(item, made)
                    outcome = "created"
                else:
                    outcome = "updated" if await self.update(item, existing, made) else "unchanged"
        except ApiError as exc:
            self.forget(made)
            self.fail(item.line, exc.message)
            return
        except IntegrityError as exc:
            self.forget(made)
            self.fail(item.line, f"refused by the database: {str(exc.orig)[:200]}")
            return
        setattr(self.report, outcome, getattr(self.report, outcome) + 1)

    def forget(self, made: list[str]) -> None:
        for name in made:  # rolled back with the row's savepoint
            self.organisations.pop(name, None)

    async def create(self, item: _Valid, made: list[str]) -> None:
        row = item.row
        if row.display_name is None:
            raise Invalid("display_name is required for a new customer")
        await service.create_customer(
            self.db,
            self.principal,
            display_name=row.display_name,
            external_id=row.external_id,
            organisation_id=await self.organisation_id(row.organisation, made),
            language=row.language,
            preferred_channel=row.preferred_channel,
            attributes=row.attributes or {},
            identities=[service.NewIdentity(kind, value) for kind, value in item.identities],
        )

    async def update(self, item: _Valid, customer: Customer, made: list[str]) -> bool:
        if customer.merged_into_id is not None:
            raise Conflict(
                f"customer {customer.id} was merged into customer {customer.merged_into_id}; "
                "give the survivor's external id"
            )
        row, changes = item.row, {}
        if row.display_name is not None and " ".join(row.display_name.split()) != customer.display_name:
            changes["display_name"] = row.display_name
        for name in ("language", "preferred_channel"):
            if name in item.given and getattr(row, name) != getattr(customer, name):
                changes[name] = getattr(row, name)
        if "organisation" in item.given:
            organisation_id = await self.organisation_id(row.organisation, made)
            if organisation_id != customer.organisation_id:
                changes["organisation_id"] = organisation_id
        if row.attributes is not None:
            merged = {**customer.attributes, **row.attributes}
            if merged != customer.attributes:
                changes["attributes"] = merged
        if changes:
            await service.update_customer(self.db, self.principal, customer.id, changes)
        owned = {(i.kind, i.value) for i in customer.identities}
        added = [pair for pair in item.identities if pair not in owned]
        for kind, value in added:
            await service.add_identity(self.db, self.principal, customer.id, kind, value)
        return bool(changes or added)


async def import_rows(db: AsyncSession, principal: Principal, rows: Iterator[RawRow]) -> ImportReport:
    """Check every row, then create or update the valid ones in the caller's transaction; a row that
    fails is reported with its line and leaves no trace, every other row is applied."""
    if not allows(principal, "customer", "import"):
        raise ApiError(403, "forbidden", "not allowed to import customers")
    importer = _Importer(db, principal)
    report = importer.report
    valid: list[_Valid] = []
    first_seen: dict[str, int] = {}
    for count, raw in enumerate(rows, start=1):
        if count > MAX_ROWS:
            # A file this size is a mistake as a whole: nothing is applied, rather than an arbitrary part.
            raise Invalid(f"more than {MAX_ROWS} rows in one import; split the file")
        item, problems, external_id = _validate(raw)
        if external_id is not None:
            earlier = first_seen.setdefault(external_id, raw.line)
            if earlier != raw.line:
                problems.append(f"external_id: duplicate external id (first at line {earlier})")
                item = None
        for problem in problems:
            importer.fail(raw.line, problem)
        if item is not None:
            valid.append(item)
    for item in valid:
        await importer.apply(item)
    report.errors.sort(key=lambda e: e.line)
    if len(report.errors) > MAX_ERRORS:
        extra = len(report.errors) - MAX_ERRORS
        report.errors = [*report.errors[:MAX_ERRORS], RowError(report.errors[MAX_ERRORS].line, f"... {extra} more")]
    await audit.record(
        db,
        actor_of(principal),
        "customer.import",
        object_type="customer",
        details={
            "created": report.created,
            "updated": report.updated,
            "unchanged": report.unchanged,
            "errors": len(report.errors),
        },
    )
    return report


async def import_bytes(db: AsyncSession, principal: Principal, data: bytes, fmt: Format) -> ImportReport:
    return await import_rows(db, principal, read_rows(data, fmt))


# --- export --------------------------------------------------------------------------------------
async def export_chunk(db: AsyncSession, after_id: int | None, limit: int = EXPORT_CHUNK) -> list[dict[str, Any]]:
    """Import records of the next ``limit`` customers (merged ones left out) after ``after_id``, by id;
    each carries ``"_id"`` for the caller's paging (removed before writing)."""
    stmt = select(Customer).where(Customer.merged_into_id.is_(None)).order_by(Customer.id).limit(limit)
    if after_id is not None:
        stmt = stmt.where(Customer.id > after_id)
    customers = list((await db.scalars(stmt)).all())
    org_ids = {c.organisation_id for c in customers if c.organisation_id is not None}
    names = dict(
        (await db.execute(select(Organisation.id, Organisation.name).where(Organisation.id.in_(org_ids)))).all()
    )
    records = []
    for customer in customers:
        record: dict[str, Any] = {
            "_id": customer.id,
            "external_id": customer.external_id or synthetic_external_id(customer),
            "display_name": customer.display_name,
            "organisation": names.get(customer.organisation_id),
            "language": customer.language,
            "preferred_channel": customer.preferred_channel,
        }
        identities: list[CustomerIdentity] = customer.identities
        for kind in KINDS:
            values = [i.value for i in identities if i.kind == kind]
            if values:
                record[kind] = values
        record["attributes"] = dict(customer.attributes)
        records.append(record)
    return records


async def export_lines(db: AsyncSession) -> AsyncIterator[str]:
    """The export, one JSON line per customer, read in chunks by id."""
    after_id: int | None = None
    while True:
        records = await export_chunk(db, after_id)
        for record in records:
            after_id = record.pop("_id")
            yield json.dumps(record, ensure_ascii=False) + "\n"
        if len(records) < EXPORT_CHUNK:
            return


async def stream_export(factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[bytes]:
    """For a streamed HTTP answer: its own session, held while the answer is written."""
    async with factory() as db:
        async for line in export_lines(db):
            yield line.encode("utf-8")


async def audit_export(db: AsyncSession, principal: Principal, where: str) -> None:
    await audit.record(db, actor_of(principal), "customer.export", object_type="customer", details={"to": where})
