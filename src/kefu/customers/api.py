"""REST routes of customers, organisations, identities, notes and merges: thin wrappers over
``customers.service`` (and ``customers.importer`` for files)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Form, Query, Request, Response, UploadFile
from fastapi.responses import StreamingResponse
from sqlalchemy.ext.asyncio import AsyncSession

from kefu.core.errors import NotFound
from kefu.core.policy import Principal, authorize
from kefu.core.schemas import MAX_ID, IdParam, IdQuery, query_text
from kefu.customers import importer, service
from kefu.customers.schemas import (
    CustomerCreate,
    CustomerOut,
    CustomerPage,
    CustomerUpdate,
    IdentityIn,
    IdentityKindName,
    IdentityOut,
    ImportReportOut,
    MergeIn,
    MergeOut,
    NoteIn,
    NoteOut,
    NotePage,
    OrganisationCreate,
    OrganisationOut,
    OrganisationPage,
    OrganisationUpdate,
)
from kefu.db.session import get_db

router = APIRouter(prefix="/api/v1", tags=["customers"])
Db = Annotated[AsyncSession, Depends(get_db)]
AfterId = Annotated[int, Query(ge=0, le=MAX_ID)]
Limit = Annotated[int, Query(ge=1, le=200)]


# --- customers -----------------------------------------------------------------------------------
@router.get("/customers")
async def list_customers(
    db: Db,
    principal: Principal = authorize("customer", "list"),
    q: query_text(254) = "",  # type: ignore[valid-type]
    after_id: AfterId = 0,
    limit: Limit = 50,
) -> CustomerPage:
    """Customers by id (merged ones hidden); ``q``: part of a name, an external id, or an identity in any format."""
    customers = await service.search_customers(db, principal, q, after_id or None, limit)
    return CustomerPage(
        items=[CustomerOut.of(c) for c in customers],
        next_after_id=customers[-1].id if len(customers) == limit else None,
    )


@router.post("/customers", status_code=201)
async def create_customer(
    body: CustomerCreate, db: Db, principal: Principal = authorize("customer", "create")
) -> CustomerOut:
    async with db.begin():
        customer = await service.create_customer(
            db,
            principal,
            display_name=body.display_name,
            external_id=body.external_id,
            organisation_id=body.organisation_id,
            language=body.language,
            preferred_channel=body.preferred_channel,
            attributes=body.attributes,
            identities=[service.NewIdentity(i.kind, i.value, i.label, i.verified) for i in body.identities],
        )
    return CustomerOut.of(customer)


@router.get("/customers/lookup")
async def lookup_customer(
    kind: IdentityKindName,
    value: query_text(254, min_length=1),  # type: ignore[valid-type]
    db: Db,
    principal: Principal = authorize("customer", "search"),
) -> CustomerOut:
    """The (surviving) customer an identity in any format belongs to; 404 when nobody has it."""
    customer = await service.find_by_identity(db, kind, value)
    if customer is None:
        raise NotFound("customer")
    return CustomerOut.of(customer)


@router.post("/customers/merge", status_code=201)
async def merge_customers(body: MergeIn, db: Db, principal: Principal = authorize("customer", "merge")) -> MergeOut:
    async with db.begin():
        merge = await service.merge_customers(db, principal, body.survivor_id, body.merged_id)
    return MergeOut.of(merge)


@router.post("/customers/import")
async def import_customers(
    file: UploadFile,
    db: Db,
    format: Annotated[Literal["csv", "jsonl"] | None, Form()] = None,  # noqa: A002 - the form field's name
    principal: Principal = authorize("customer", "import"),
) -> ImportReportOut:
    """A CSV or JSONL file (``format`` guessed from the file name when not given); answers the report."""
    data = await file.read(importer.MAX_FILE_BYTES + 1)  # one byte more tells "too large" without reading it all
    async with db.begin():
        report = await importer.import_bytes(db, principal, data, format or importer.guess_format(file.filename))
    return ImportReportOut.model_validate(report.as_dict())


@router.get("/customers/export")
async def export_customers(
    request: Request, db: Db, principal: Principal = authorize("customer", "export")
) -> StreamingResponse:
    """Every customer (merged ones left out) as JSONL in the import format, streamed."""
    async with db.begin():
        await importer.audit_export(db, principal, "api")
    return StreamingResponse(
        importer.stream_export(request.app.state.session_factory),
        media_type="application/x-ndjson; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="customers.jsonl"', "X-Content-Type-Options": "nosniff"},
    )


@router.get("/customers/{customer_id}")
async def get_customer(
    customer_id: IdParam, db: Db, principal: Principal = authorize("customer", "read", by_id=True)
) -> CustomerOut:
    """A merged customer is returned too, with ``merged_into_id`` set: follow it to the survivor."""
    return CustomerOut.of(await service.get_customer(db, principal, customer_id))


@router.patch("/customers/{customer_id}")
async def update_customer(
    customer_id: IdParam, body: CustomerUpdate, db: Db, principal: Principal = authorize("customer", "update")
) -> CustomerOut:
    async with db.begin():
        customer = await service.update_customer(db, principal, customer_id, body.model_dump(exclude_unset=True))
    return CustomerOut.of(customer)


@router.post("/customers/{customer_id}/identities", status_code=201)
async def add_identity(
    customer_id: IdParam, body: IdentityIn, db: Db, principal: Principal = authorize("customer", "update")
) -> IdentityOut:
    """409 naming the other customer (``details.customer_id``) when the identity is someone else's."""
    async with db.begin():
        identity = await service.add_identity(
            db, principal, customer_id, body.kind, body.value, label=body.label, verified=body.verified
        )
    return IdentityOut.of(identity)


@router.delete("/customers/{customer_id}/identities/{identity_id}", status_code=204)
async def remove_identity(
    customer_id: IdParam, identity_id: IdParam, db: Db, principal: Principal = authorize("customer", "update")
) -> Response:
    async with db.begin():
        await service.remove_identity(db, principal, customer_id, identity_id)
    return Response(status_code=204)


@router.get("/customers/{customer_id}/notes")
async def list_notes(
    customer_id: IdParam,
    db: Db,
    principal: Principal = authorize("customer", "read", by_id=True),
    before_id: IdQuery | None = None,
    limit: Limit = 50,
) -> NotePage:
    notes, names = await service.list_notes(db, principal, customer_id, before_id=before_id, limit=limit)
    return NotePage(
        items=[NoteOut.of(n, names) for n in notes], next_before_id=notes[-1].id if len(notes) == limit else None
    )


@router.post("/customers/{customer_id}/notes", status_code=201)
async def add_note(
    customer_id: IdParam, body: NoteIn, db: Db, principal: Principal = authorize("customer", "update")
) -> NoteOut:
    async with db.begin():
        note = await service.add_note(db, principal, customer_id, body.body)
    names = {principal.user_id: principal.display_name or principal.username} if principal.user_id else {}
    return NoteOut.of(note, names)


# --- merges --------------------------------------------------------------------------------------
@router.get("/customer-merges")
async def list_merges(
    db: Db,
    principal: Principal = authorize("customer", "merge"),
    customer_id: IdQuery | None = None,
    before_id: IdQuery | None = None,
    limit: Limit = 50,
) -> list[MergeOut]:
    """Newest first; with ``customer_id``, the merges that customer took part in (either side)."""
    merges = await service.list_merges(db, principal, customer_id, before_id, limit)
    return [MergeOut.of(m) for m in merges]


@router.post("/customer-merges/{merge_id}/undo")
async def undo_merge(merge_id: IdParam, db: Db, principal: Principal = authorize("customer", "merge")) -> MergeOut:
    async with db.begin():
        merge = await service.unmerge(db, principal, merge_id)
    return MergeOut.of(merge)


# --- organisations -------------------------------------------------------------------------------
@router.get("/organisations")
async def list_organisations(
    db: Db,
    principal: Principal = authorize("organisation", "list"),
    q: query_text(200) = "",  # type: ignore[valid-type]
    after_id: AfterId = 0,
    limit: Limit = 50,
) -> OrganisationPage:
    organisations = await service.list_organisations(db, principal, q, after_id or None, limit)
    return OrganisationPage(
        items=[OrganisationOut.of(o) for o in organisations],
        next_after_id=organisations[-1].id if len(organisations) == limit else None,
    )


@router.post("/organisations", status_code=201)
async def create_organisation(
    body: OrganisationCreate, db: Db, principal: Principal = authorize("organisation", "create")
) -> OrganisationOut:
    async with db.begin():
        organisation = await service.create_organisation(
            db, principal, name=body.name, external_id=body.external_id, attributes=body.attributes
        )
    return OrganisationOut.of(organisation)


@router.patch("/organisations/{organisation_id}")
async def update_organisation(
    organisation_id: IdParam,
    body: OrganisationUpdate,
    db: Db,
    principal: Principal = authorize("organisation", "update"),
) -> OrganisationOut:
    async with db.begin():
        organisation = await service.update_organisation(
            db, principal, organisation_id, body.model_dump(exclude_unset=True)
        )
    return OrganisationOut.of(organisation)
