"""Customers, organisations, identities, notes and merges: the rules, and the only place that writes them.

Identities are stored normalized (see ``identities``) and ``(kind, value)`` is unique, so one phone
number or address belongs to one customer and finding the customer behind a contact is one indexed
query. Two customers that turn out to be one person are merged: the survivor takes the merged
customer's identities, notes and every row other domains hold for it (``owners.movers()``: work orders,
interactions); the merge record keeps exactly which rows moved, so undoing it moves exactly those back.
A merged customer keeps its row, hidden from lists and search, pointing at the survivor.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from kefu.core import audit
from kefu.core.errors import Conflict, Invalid, NotFound
from kefu.core.events import Event, publish_on_commit
from kefu.core.policy import Principal
from kefu.customers import owners
from kefu.customers.identities import guess_identities, normalize_identity
from kefu.customers.models import Customer, CustomerIdentity, CustomerMerge, CustomerNote, Organisation
from kefu.db.base import dialect_insert, utcnow
from kefu.identity.models import User
from kefu.identity.service import actor_of

STAFF_AUDIENCE = ("agent", "supervisor", "admin")
MAX_MERGE_HOPS = 32
CUSTOMER_FIELDS = ("display_name", "external_id", "organisation_id", "language", "preferred_channel", "attributes")
REQUIRED_FIELDS = frozenset({"display_name"})
# What a merge moves itself; owners' rows are moved by their domains' movers.
OWN_ROWS = ("identities", "notes")


@dataclass(frozen=True)
class NewIdentity:
    kind: str
    value: str  # as given; normalized when added
    label: str | None = None
    verified: bool = False


# --- reading -------------------------------------------------------------------------------------
def _customer_query() -> Any:
    # populate_existing: a customer read again in the same transaction shows its current identities.
    return select(Customer).execution_options(populate_existing=True)


async def _load(db: AsyncSession, customer_id: int, *, for_update: bool = False) -> Customer:
    stmt = _customer_query().where(Customer.id == customer_id)
    if for_update:
        stmt = stmt.with_for_update(of=Customer)
    customer = await db.scalar(stmt)
    if customer is None:
        raise NotFound("customer")
    return customer


async def _live(db: AsyncSession, customer_id: int) -> Customer:
    """The customer, for a change: refused (409) when it was merged into another one."""
    customer = await _load(db, customer_id, for_update=True)
    if customer.merged_into_id is not None:
        raise Conflict(
            f"customer {customer.id} was merged into customer {customer.merged_into_id}; change that one",
            {"merged_into_id": customer.merged_into_id},
        )
    return customer


async def get_customer(db: AsyncSession, principal: Principal, customer_id: int) -> Customer:
    """The customer, merged ones included (``merged_into_id`` says where to go)."""
    return await _load(db, customer_id)


async def survivor_of(db: AsyncSession, customer: Customer) -> Customer:
    """Follow ``merged_into_id`` to the customer that holds everything now."""
    seen = {customer.id}
    while customer.merged_into_id is not None and len(seen) < MAX_MERGE_HOPS:
        nxt = await db.get(Customer, customer.merged_into_id)
        if nxt is None or nxt.id in seen:
            break
        seen.add(nxt.id)
        customer = nxt
    return customer


async def find_by_identity(db: AsyncSession, kind: str, value: str) -> Customer | None:
    """The (surviving) customer an identity belongs to: one query on the unique (kind, value) index.
    ``value`` may be in any accepted format; junk raises ``Invalid``."""
    normalized = normalize_identity(kind, value)
    customer = await db.scalar(
        _customer_query()
        .join(CustomerIdentity, CustomerIdentity.customer_id == Customer.id)
        .where(CustomerIdentity.kind == kind, CustomerIdentity.value == normalized)
    )
    if customer is None:
        return None
    return await survivor_of(db, customer)


async def search_customers(
    db: AsyncSession, principal: Principal, q: str = "", after_id: int | None = None, limit: int = 50
) -> list[Customer]:
    """Customers (merged ones hidden) by id. ``q`` matches a part of the name, the external id exactly,
    or an identity typed in any format ("138-1234-5678" finds +8613812345678)."""
    stmt = _customer_query().where(Customer.merged_into_id.is_(None))
    text = " ".join(q.split())
    if text:
        matches: list[Any] = [
            func.lower(Customer.display_name).contains(text.lower(), autoescape=True),
            Customer.external_id == text,
        ]
        pairs = guess_identities(text)
        if pairs:
            owners_of = select(CustomerIdentity.customer_id).where(
                or_(*(and_(CustomerIdentity.kind == k, CustomerIdentity.value == v) for k, v in pairs))
            )
            matches.append(Customer.id.in_(owners_of))
        stmt = stmt.where(or_(*matches))
    if after_id is not None:
        stmt = stmt.where(Customer.id > after_id)
    return list((await db.scalars(stmt.order_by(Customer.id).limit(limit))).all())


# --- writing customers ---------------------------------------------------------------------------
async def _check_external_id(db: AsyncSession, external_id: str | None, own_id: int | None) -> None:
    if external_id is None:
        return
    other = await db.scalar(select(Customer.id).where(Customer.external_id == external_id))
    if other is not None and other != own_id:
        raise Conflict(f"customer {other} already has external id {external_id!r}", {"customer_id": other})


async def _check_organisation(db: AsyncSession, organisation_id: int | None) -> None:
    if organisation_id is not None and await db.get(Organisation, organisation_id) is None:
        raise Invalid(f"no organisation {organisation_id}")


async def create_customer(
    db: AsyncSession,
    principal: Principal,
    *,
    display_name: str,
    external_id: str | None = None,
    organisation_id: int | None = None,
    language: str | None = None,
    preferred_channel: str | None = None,
    attributes: dict[str, Any] | None = None,
    identities: Iterable[NewIdentity] = (),
) -> Customer:
    display_name = " ".join(display_name.split())
    if not display_name:
        raise Invalid("the display name must not be empty")
    await _check_external_id(db, external_id, None)
    await _check_organisation(db, organisation_id)
    customer = Customer(
        display_name=display_name[:200],
        external_id=external_id,
        organisation_id=organisation_id,
        language=language,
        preferred_channel=preferred_channel,
        attributes=dict(attributes or {}),
    )
    db.add(customer)
    await db.flush()
    for identity in identities:
        await _add_identity(db, customer, identity)
    return await _load(db, customer.id)


async def update_customer(
    db: AsyncSession, principal: Principal, customer_id: int, changes: dict[str, Any]
) -> Customer:
    """Apply ``changes`` (field -> new value; ``None`` clears an optional field)."""
    unknown = set(changes) - set(CUSTOMER_FIELDS)
    if unknown:
        raise Invalid(f"unknown fields: {', '.join(sorted(unknown))}")
    customer = await _live(db, customer_id)
    for name in REQUIRED_FIELDS & set(changes):
        if changes[name] is None:
            raise Invalid(f"{name} cannot be cleared")
    if "display_name" in changes:
        changes["display_name"] = " ".join(changes["display_name"].split())[:200]
        if not changes["display_name"]:
            raise Invalid("the display name must not be empty")
    if "external_id" in changes:
        await _check_external_id(db, changes["external_id"], customer.id)
    if "organisation_id" in changes:
        await _check_organisation(db, changes["organisation_id"])
    if "attributes" in changes:
        changes["attributes"] = dict(changes["attributes"] or {})
    for name, value in changes.items():
        if getattr(customer, name) != value:
            setattr(customer, name, value)
    await db.flush()
    return await _load(db, customer.id)


# --- identities ----------------------------------------------------------------------------------
async def _add_identity(db: AsyncSession, customer: Customer, new: NewIdentity) -> CustomerIdentity:
    value = normalize_identity(new.kind, new.value)
    existing = await db.scalar(
        select(CustomerIdentity).where(CustomerIdentity.kind == new.kind, CustomerIdentity.value == value)
    )
    if existing is not None:
        if existing.customer_id != customer.id:
            raise Conflict(
                f"{new.kind} {value} belongs to customer {existing.customer_id}; merge the two customers instead",
                {"customer_id": existing.customer_id, "kind": new.kind, "value": value},
            )
        return existing  # already this customer's: adding it again changes nothing
    identity = CustomerIdentity(
        customer_id=customer.id, kind=new.kind, value=value, label=new.label, verified=new.verified
    )
    db.add(identity)
    await db.flush()
    return identity


async def add_identity(
    db: AsyncSession,
    principal: Principal,
    customer_id: int,
    kind: str,
    value: str,
    *,
    label: str | None = None,
    verified: bool = False,
) -> CustomerIdentity:
    """Add an identity; 409 naming the other customer when it is someone else's (merge them then)."""
    customer = await _live(db, customer_id)
    return await _add_identity(db, customer, NewIdentity(kind, value, label, verified))


async def remove_identity(db: AsyncSession, principal: Principal, customer_id: int, identity_id: int) -> None:
    customer = await _live(db, customer_id)
    identity = await db.scalar(
        select(CustomerIdentity).where(CustomerIdentity.id == identity_id, CustomerIdentity.customer_id == customer.id)
    )
    if identity is None:
        raise NotFound("identity")
    await audit.record(
        db,
        actor_of(principal),
        "customer.identity_remove",
        object_type="customer",
        object_id=customer.id,
        details={"identity_id": identity.id, "kind": identity.kind, "value": identity.value},
    )
    await db.delete(identity)
    await db.flush()


async def resolve_or_create(
    db: AsyncSession, principal: Principal, kind: str, value: str, display_name: str | None = None
) -> tuple[Customer, bool]:
    """The customer behind a contact's identity; a new customer (named after the identity) when unknown.
    Returns (customer, created). Two contacts from one new number at once still make one customer."""
    normalized = normalize_identity(kind, value)
    found = await find_by_identity(db, kind, normalized)
    if found is not None:
        return found, False
    name = " ".join((display_name or "").split())[:200] or normalized[:200]
    customer = Customer(display_name=name, attributes={})
    db.add(customer)
    await db.flush()
    # ON CONFLICT rather than a savepoint: a SAVEPOINT on SQLite (pysqlite's deferred BEGIN) can commit
    # the caller's transaction early, and a concurrent insert of the same identity must not fail it.
    insert = dialect_insert(db)
    inserted = await db.scalar(
        insert(CustomerIdentity)
        .values(customer_id=customer.id, kind=kind, value=normalized, verified=False, created_at=utcnow())
        .on_conflict_do_nothing(index_elements=["kind", "value"])
        .returning(CustomerIdentity.id)
    )
    if inserted is None:
        # Another transaction registered the identity first: use its customer, drop ours.
        await db.delete(customer)
        await db.flush()
        found = await find_by_identity(db, kind, normalized)
        if found is None:  # pragma: no cover - the winner's row is committed (the conflict proves it)
            raise Conflict("the identity was registered concurrently; retry")
        return found, False
    return await _load(db, customer.id), True


# --- notes ---------------------------------------------------------------------------------------
async def add_note(db: AsyncSession, principal: Principal, customer_id: int, body: str) -> CustomerNote:
    customer = await _live(db, customer_id)
    if not body.strip():
        raise Invalid("a note must not be empty")
    note = CustomerNote(customer_id=customer.id, author_id=principal.user_id, body=body)
    db.add(note)
    await db.flush()
    return note


async def list_notes(
    db: AsyncSession, principal: Principal, customer_id: int, *, before_id: int | None = None, limit: int = 50
) -> tuple[list[CustomerNote], dict[int, str]]:
    """Newest first, with the authors' display names."""
    await _load(db, customer_id)
    stmt = select(CustomerNote).where(CustomerNote.customer_id == customer_id)
    if before_id is not None:
        stmt = stmt.where(CustomerNote.id < before_id)
    notes = list((await db.scalars(stmt.order_by(CustomerNote.id.desc()).limit(limit))).all())
    author_ids = {n.author_id for n in notes if n.author_id is not None}
    names: dict[int, str] = {}
    if author_ids:
        rows = await db.execute(select(User.id, User.display_name).where(User.id.in_(author_ids)))
        names = {int(uid): name for uid, name in rows.all()}
    return notes, names


# --- organisations -------------------------------------------------------------------------------
async def _check_organisation_external_id(db: AsyncSession, external_id: str | None, own_id: int | None) -> None:
    if external_id is None:
        return
    other = await db.scalar(select(Organisation.id).where(Organisation.external_id == external_id))
    if other is not None and other != own_id:
        raise Conflict(f"organisation {other} already has external id {external_id!r}", {"organisation_id": other})


async def create_organisation(
    db: AsyncSession,
    principal: Principal,
    *,
    name: str,
    external_id: str | None = None,
    attributes: dict[str, Any] | None = None,
) -> Organisation:
    name = " ".join(name.split())
    if not name:
        raise Invalid("the organisation name must not be empty")
    await _check_organisation_external_id(db, external_id, None)
    organisation = Organisation(name=name[:200], external_id=external_id, attributes=dict(attributes or {}))
    db.add(organisation)
    await db.flush()
    return organisation


async def update_organisation(
    db: AsyncSession, principal: Principal, organisation_id: int, changes: dict[str, Any]
) -> Organisation:
    organisation = await db.get(Organisation, organisation_id, with_for_update=True)
    if organisation is None:
        raise NotFound("organisation")
    unknown = set(changes) - {"name", "external_id", "attributes"}
    if unknown:
        raise Invalid(f"unknown fields: {', '.join(sorted(unknown))}")
    if "name" in changes:
        name = " ".join((changes["name"] or "").split())
        if not name:
            raise Invalid("the organisation name must not be empty")
        organisation.name = name[:200]
    if "external_id" in changes:
        await _check_organisation_external_id(db, changes["external_id"], organisation.id)
        organisation.external_id = changes["external_id"]
    if "attributes" in changes:
        organisation.attributes = dict(changes["attributes"] or {})
    await db.flush()
    return organisation


async def list_organisations(
    db: AsyncSession, principal: Principal, q: str = "", after_id: int | None = None, limit: int = 50
) -> list[Organisation]:
    stmt = select(Organisation)
    text = " ".join(q.split())
    if text:
        stmt = stmt.where(
            or_(
                func.lower(Organisation.name).contains(text.lower(), autoescape=True),
                Organisation.external_id == text,
            )
        )
    if after_id is not None:
        stmt = stmt.where(Organisation.id > after_id)
    return list((await db.scalars(stmt.order_by(Organisation.id).limit(limit))).all())


# --- merging -------------------------------------------------------------------------------------
async def _lock_pair(db: AsyncSession, first_id: int, second_id: int) -> dict[int, Customer]:
    # Always in id order, so two merges of the same pair cannot deadlock.
    return {cid: await _load(db, cid, for_update=True) for cid in sorted({first_id, second_id})}


async def _move_own_rows(
    db: AsyncSession, name: str, from_id: int, to_id: int, only_ids: Sequence[int] | None
) -> list[int]:
    model = {"identities": CustomerIdentity, "notes": CustomerNote}[name]
    stmt = select(model.id).where(model.customer_id == from_id)
    if only_ids is not None:
        stmt = stmt.where(model.id.in_(list(only_ids)))
    ids = sorted((await db.scalars(stmt)).all())
    if ids:
        await db.execute(update(model).where(model.id.in_(ids)).values(customer_id=to_id))
    return ids


def _counts(moved: dict[str, list[int]]) -> dict[str, int]:
    return {name: len(ids) for name, ids in moved.items()}


async def merge_customers(db: AsyncSession, principal: Principal, survivor_id: int, merged_id: int) -> CustomerMerge:
    """Move everything of ``merged_id`` to ``survivor_id`` and hide ``merged_id``; audited, undoable."""
    if survivor_id == merged_id:
        raise Invalid("a customer cannot be merged into itself")
    locked = await _lock_pair(db, survivor_id, merged_id)
    survivor, merged = locked[survivor_id], locked[merged_id]
    for customer in (survivor, merged):
        if customer.merged_into_id is not None:
            raise Conflict(
                f"customer {customer.id} is already merged into customer {customer.merged_into_id}",
                {"customer_id": customer.id, "merged_into_id": customer.merged_into_id},
            )
    moved: dict[str, list[int]] = {}
    for name in OWN_ROWS:
        moved[name] = await _move_own_rows(db, name, merged.id, survivor.id, None)
    for name, mover in sorted(owners.movers().items()):
        moved[name] = sorted(await mover(db, merged.id, survivor.id, None))
    merged.merged_into_id = survivor.id
    record = CustomerMerge(survivor_id=survivor.id, merged_id=merged.id, moved=moved, merged_by_id=principal.user_id)
    db.add(record)
    await db.flush()
    await audit.record(
        db,
        actor_of(principal),
        "customer.merge",
        object_type="customer",
        object_id=survivor.id,
        details={"merge_id": record.id, "survivor_id": survivor.id, "merged_id": merged.id, "moved": _counts(moved)},
    )
    publish_on_commit(
        db,
        Event(
            "customer.merged",
            {"merge_id": record.id, "survivor_id": survivor.id, "merged_id": merged.id},
            roles=STAFF_AUDIENCE,
        ),
    )
    return record


async def unmerge(db: AsyncSession, principal: Principal, merge_id: int) -> CustomerMerge:
    """Undo a merge: exactly the rows it moved go back (those still on the survivor), the merged
    customer reappears. Refused when already undone, or while the survivor is itself merged away."""
    record = await db.scalar(
        select(CustomerMerge)
        .where(CustomerMerge.id == merge_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if record is None:
        raise NotFound("customer merge")
    if record.unmerged_at is not None:
        raise Conflict(f"merge {record.id} was already undone", {"unmerged_at": record.unmerged_at.isoformat()})
    locked = await _lock_pair(db, record.survivor_id, record.merged_id)
    survivor, merged = locked[record.survivor_id], locked[record.merged_id]
    if survivor.merged_into_id is not None:
        raise Conflict(
            f"customer {survivor.id} has since been merged into customer {survivor.merged_into_id}; "
            "undo that merge first",
            {"customer_id": survivor.id, "merged_into_id": survivor.merged_into_id},
        )
    if merged.merged_into_id != survivor.id:  # pragma: no cover - only a hand-edited database gets here
        raise Conflict(f"customer {merged.id} is not merged into customer {survivor.id} any more")
    moved: dict[str, list[int]] = dict(record.moved or {})
    restored: dict[str, list[int]] = {}
    for name in OWN_ROWS:
        restored[name] = await _move_own_rows(db, name, survivor.id, merged.id, moved.get(name, []))
    for name, mover in sorted(owners.movers().items()):
        restored[name] = sorted(await mover(db, survivor.id, merged.id, list(moved.get(name, []))))
    merged.merged_into_id = None
    record.unmerged_at = utcnow()
    record.unmerged_by_id = principal.user_id
    await db.flush()
    await audit.record(
        db,
        actor_of(principal),
        "customer.unmerge",
        object_type="customer",
        object_id=survivor.id,
        details={
            "merge_id": record.id,
            "survivor_id": survivor.id,
            "merged_id": merged.id,
            "restored": _counts(restored),
            # Rows the survivor no longer held (deleted, or moved on since): they stay where they are.
            "not_restored": {n: sorted(set(moved.get(n, [])) - set(restored.get(n, []))) for n in restored},
        },
    )
    publish_on_commit(
        db,
        Event(
            "customer.unmerged",
            {"merge_id": record.id, "survivor_id": survivor.id, "merged_id": merged.id},
            roles=STAFF_AUDIENCE,
        ),
    )
    return record


async def list_merges(
    db: AsyncSession,
    principal: Principal,
    customer_id: int | None = None,
    before_id: int | None = None,
    limit: int = 50,
) -> list[CustomerMerge]:
    """Newest first; with ``customer_id``, the merges it took part in (either side)."""
    stmt = select(CustomerMerge)
    if customer_id is not None:
        stmt = stmt.where(or_(CustomerMerge.survivor_id == customer_id, CustomerMerge.merged_id == customer_id))
    if before_id is not None:
        stmt = stmt.where(CustomerMerge.id < before_id)
    return list((await db.scalars(stmt.order_by(CustomerMerge.id.desc()).limit(limit))).all())
