"""Customer pages: search, create, edit (fields and identities), merge a duplicate and undo a merge.

Thin over ``kefu.customers.service``; forms are validated by the API's request models, so a page
accepts exactly what the API accepts. The customer 360 page (GET /customers/{id}) lives in kefu.desk.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from sqlalchemy.ext.asyncio import AsyncSession

from kefu.core.errors import ApiError
from kefu.core.i18n import Translator
from kefu.core.policy import Principal, allows, authorize
from kefu.core.schemas import IdParam, query_text
from kefu.customers import service
from kefu.customers.models import Customer
from kefu.customers.schemas import CustomerCreate, CustomerUpdate, IdentityIn
from kefu.db.session import get_db
from kefu.web.pages import form_data, render, run_form_action, see_other, validate

router = APIRouter(prefix="", tags=["customers"], include_in_schema=False)
Db = Annotated[AsyncSession, Depends(get_db)]
OptionalId = Annotated[str, Query(max_length=19, pattern=r"^([1-9][0-9]*)?$")]

PAGE_SIZE = 50
NEW_IDENTITY_ROWS = 3
KINDS = ("phone", "email", "chat", "sms", "social", "crm")
CHANNELS = ("phone", "email", "chat", "sms", "social", "web_form", "walk_in")
# Language tags offered by the form, with their own names (not translated).
LANGUAGES = (("zh-CN", "简体中文"), ("zh-TW", "繁體中文"), ("en", "English"))
DONE = frozenset({"created", "saved", "identity_added", "identity_removed", "merged", "unmerged"})
# What a merge moves, in the order the confirmation lists it.
MOVED = ("identities", "notes", "interactions", "work_orders")


def _page(request: Request, name: str, principal: Principal, status_code: int = 200, **context: Any) -> Response:
    done = request.query_params.get("done")
    return render(
        request,
        name,
        principal,
        status_code=status_code,
        done=done if done in DONE else None,
        kinds=KINDS,
        channels=CHANNELS,
        languages=LANGUAGES,
        can_create=allows(principal, "customer", "create"),
        can_update=allows(principal, "customer", "update"),
        can_merge=allows(principal, "customer", "merge"),
        **context,
    )


def _text(data: dict[str, Any], key: str) -> str:
    value = data.get(key, "")
    return value.strip() if isinstance(value, str) else ""


def _or_none(value: str) -> str | None:
    return value or None


def _attributes(text: str) -> tuple[dict[str, str], list[str]]:
    """``name: value`` lines (a full-width colon works too); a line without a colon is an error."""
    found: dict[str, str] = {}
    bad: list[str] = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line.strip():
            continue
        name, sep, value = line.replace("：", ":").partition(":")
        if not sep or not name.strip():
            bad.append(line.strip()[:60])
            continue
        found[name.strip()] = value.strip()
    return found, bad


def _attributes_text(attributes: dict[str, Any]) -> str:
    return "\n".join(f"{name}: {value}" for name, value in attributes.items())


def _fields(data: dict[str, Any], principal: Principal) -> tuple[dict[str, Any], list[str]]:
    """The customer fields of a form, shaped as the API's request body."""
    attributes, bad = _attributes(str(data.get("attributes", ""))[:20_000])
    problems = []
    if bad:
        message = Translator(principal.locale).gettext("Write each attribute as “name: value”:")
        problems.append(f"{message} {', '.join(bad)}")
    return {
        "display_name": _text(data, "display_name"),
        "external_id": _or_none(_text(data, "external_id")),
        "language": _or_none(_text(data, "language")),
        "preferred_channel": _or_none(_text(data, "preferred_channel")),
        "attributes": attributes,
    }, problems


def _form_of(customer: Customer) -> dict[str, Any]:
    return {
        "display_name": customer.display_name,
        "external_id": customer.external_id or "",
        "language": customer.language or "",
        "preferred_channel": customer.preferred_channel or "",
        "attributes": _attributes_text(customer.attributes or {}),
    }


# --- search --------------------------------------------------------------------------------------
@router.get("/customers")
async def customers_page(
    request: Request,
    db: Db,
    principal: Principal = authorize("customer", "list"),
    q: query_text(200) = "",  # type: ignore[valid-type]
    after: OptionalId = "",
) -> Response:
    q = q.strip()
    customers = await service.search_customers(
        db, principal, q, after_id=int(after) if after else None, limit=PAGE_SIZE + 1
    )
    next_url = None
    if len(customers) > PAGE_SIZE:
        customers = customers[:PAGE_SIZE]
        next_url = "/customers?" + urlencode({"q": q, "after": customers[-1].id})
    return _page(request, "customers/list.html", principal, q=q, customers=customers, next_url=next_url)


# --- create --------------------------------------------------------------------------------------
def _new_form(
    request: Request, principal: Principal, f: dict[str, Any], status_code: int = 200, errors: list[str] | None = None
) -> Response:
    return _page(request, "customers/form.html", principal, status_code=status_code, customer=None, f=f, errors=errors)


@router.get("/customers/new")
async def new_customer_page(request: Request, principal: Principal = authorize("customer", "create")) -> Response:
    return _new_form(request, principal, {"display_name": "", "external_id": "", "attributes": ""})


@router.post("/customers")
async def create_customer_submit(
    request: Request, db: Db, principal: Principal = authorize("customer", "create")
) -> Response:
    data = await form_data(request)
    fields, errors = _fields(data, principal)
    identities = []
    for n in range(NEW_IDENTITY_ROWS):
        value = _text(data, f"identity_value_{n}")
        if value:
            identities.append(
                {
                    "kind": _text(data, f"identity_kind_{n}"),
                    "value": value,
                    "label": _or_none(_text(data, f"identity_label_{n}")),
                }
            )
    body, invalid = validate(CustomerCreate, {**fields, "identities": identities})
    errors += invalid
    if body is None or errors:
        return _new_form(request, principal, data, status_code=422, errors=errors)
    created: list[Customer] = []

    async def create() -> None:
        created.append(
            await service.create_customer(
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
        )

    try:
        async with db.begin():
            await create()
    except ApiError as exc:
        if exc.status == 404:
            raise
        return _new_form(request, principal, data, status_code=exc.status, errors=[exc.message])
    return see_other(f"/customers/{created[0].id}?done=created")


# --- edit: fields and identities -----------------------------------------------------------------
async def _edit_page(
    request: Request,
    db: AsyncSession,
    principal: Principal,
    customer_id: int,
    *,
    f: dict[str, Any] | None = None,
    status_code: int = 200,
    errors: list[str] | None = None,
) -> Response:
    customer = await service.get_customer(db, principal, customer_id)
    if customer.merged_into_id is not None:
        # Changes go to the customer that holds everything now.
        survivor = await service.survivor_of(db, customer)
        return see_other(f"/customers/{survivor.id}/edit")
    return _page(
        request,
        "customers/form.html",
        principal,
        status_code=status_code,
        customer=customer,
        f=f if f is not None else _form_of(customer),
        errors=errors,
    )


@router.get("/customers/{customer_id}/edit")
async def edit_customer_page(
    request: Request, customer_id: IdParam, db: Db, principal: Principal = authorize("customer", "update", by_id=True)
) -> Response:
    return await _edit_page(request, db, principal, customer_id)


@router.post("/customers/{customer_id}/edit")
async def edit_customer_submit(
    request: Request, customer_id: IdParam, db: Db, principal: Principal = authorize("customer", "update", by_id=True)
) -> Response:
    """One form address, three forms on the page: ``op`` says which (save, add_identity, remove_identity)."""
    data = await form_data(request)
    op = data.get("op", "save")
    back = f"/customers/{customer_id}/edit"

    async def refused(exc: ApiError) -> Response:
        return await _edit_page(
            request, db, principal, customer_id, f=data if op == "save" else None, status_code=exc.status,
            errors=[exc.message],
        )  # fmt: skip

    if op == "add_identity":
        body, errors = validate(
            IdentityIn,
            {
                "kind": _text(data, "kind"),
                "value": _text(data, "value"),
                "label": _or_none(_text(data, "label")),
                "verified": data.get("verified") == "1",
            },
        )
        if body is None:
            return await _edit_page(request, db, principal, customer_id, status_code=422, errors=errors)
        return await run_form_action(
            db,
            lambda: service.add_identity(
                db, principal, customer_id, body.kind, body.value, label=body.label, verified=body.verified
            ),
            success_url=f"{back}?done=identity_added",
            refused=refused,
        )
    if op == "remove_identity":
        identity_id = str(data.get("identity_id", ""))
        if not identity_id.isdigit() or not 0 < int(identity_id) < 2**63:
            return await _edit_page(request, db, principal, customer_id, status_code=422, errors=["identity_id"])
        return await run_form_action(
            db,
            lambda: service.remove_identity(db, principal, customer_id, int(identity_id)),
            success_url=f"{back}?done=identity_removed",
            refused=refused,
        )
    if op != "save":
        return await _edit_page(request, db, principal, customer_id, status_code=422, errors=["op"])
    fields, errors = _fields(data, principal)
    body, invalid = validate(CustomerUpdate, fields)
    errors += invalid
    if body is None or errors:
        return await _edit_page(request, db, principal, customer_id, f=data, status_code=422, errors=errors)
    return await run_form_action(
        db,
        lambda: service.update_customer(db, principal, customer_id, body.model_dump(exclude_unset=True)),
        success_url=f"{back}?done=saved",
        refused=refused,
    )


# --- merge and undo ------------------------------------------------------------------------------
async def _preview(db: AsyncSession, principal: Principal, duplicate: Customer) -> list[tuple[str, int]]:
    """What a merge of ``duplicate`` would move, counted through the owning services."""
    from kefu.interactions import service as interactions
    from kefu.tickets import service as tickets

    notes, _ = await service.list_notes(db, principal, duplicate.id, limit=1000)
    counts = {
        "identities": len(duplicate.identities),
        "notes": len(notes),
        "interactions": len(await interactions.timeline_for_customer(db, principal, duplicate.id, limit=1000)),
        "work_orders": len(await tickets.work_orders_for_customer(db, principal, duplicate.id, limit=200)),
    }
    return [(what, counts[what]) for what in MOVED]


async def _merge_page(
    request: Request,
    db: AsyncSession,
    principal: Principal,
    customer_id: int,
    *,
    q: str = "",
    duplicate_id: int | None = None,
    merge_id: int | None = None,
    status_code: int = 200,
    errors: list[str] | None = None,
) -> Response:
    customer = await service.get_customer(db, principal, customer_id)
    candidates = []
    if q:
        found = await service.search_customers(db, principal, q, limit=PAGE_SIZE)
        candidates = [c for c in found if c.id != customer.id]
    duplicate = None
    preview: list[tuple[str, int]] = []
    if duplicate_id is not None and duplicate_id != customer.id and customer.merged_into_id is None:
        duplicate = await service.get_customer(db, principal, duplicate_id)
        if duplicate.merged_into_id is not None:
            duplicate = None
        else:
            preview = await _preview(db, principal, duplicate)
    merge = None
    if merge_id is not None:
        merge = next((m for m in await service.list_merges(db, principal, customer_id) if m.id == merge_id), None)
    return _page(
        request,
        "customers/merge.html",
        principal,
        status_code=status_code,
        customer=customer,
        q=q,
        candidates=candidates,
        duplicate=duplicate,
        preview=preview,
        merge=merge,
        errors=errors,
    )


@router.get("/customers/{customer_id}/merge")
async def merge_page(
    request: Request,
    customer_id: IdParam,
    db: Db,
    principal: Principal = authorize("customer", "merge", by_id=True),
    q: query_text(200) = "",  # type: ignore[valid-type]
    duplicate_id: OptionalId = "",
    merge_id: OptionalId = "",
) -> Response:
    return await _merge_page(
        request,
        db,
        principal,
        customer_id,
        q=q.strip(),
        duplicate_id=int(duplicate_id) if duplicate_id else None,
        merge_id=int(merge_id) if merge_id else None,
    )


@router.post("/customers/{customer_id}/merge")
async def merge_submit(
    request: Request, customer_id: IdParam, db: Db, principal: Principal = authorize("customer", "merge", by_id=True)
) -> Response:
    data = await form_data(request)
    raw = str(data.get("duplicate_id", ""))
    if not raw.isdigit() or not 0 < int(raw) < 2**63:
        problem = Translator(principal.locale).gettext("Choose the duplicate customer first.")
        return await _merge_page(request, db, principal, customer_id, status_code=422, errors=[problem])
    duplicate_id = int(raw)
    if data.get("confirm") != "1":
        problem = Translator(principal.locale).gettext("Tick the confirmation to merge.")
        return await _merge_page(
            request, db, principal, customer_id, duplicate_id=duplicate_id, status_code=422, errors=[problem]
        )
    merged: list[int] = []

    async def merge() -> None:
        merged.append((await service.merge_customers(db, principal, customer_id, duplicate_id)).id)

    try:
        async with db.begin():
            await merge()
    except ApiError as exc:
        if exc.status == 404:
            raise
        return await _merge_page(
            request, db, principal, customer_id, duplicate_id=duplicate_id, status_code=exc.status,
            errors=[exc.message],
        )  # fmt: skip
    return see_other(f"/customers/{customer_id}/merge?merge_id={merged[0]}&done=merged")


@router.post("/customer-merges/{merge_id}/undo")
async def undo_merge_submit(
    request: Request, merge_id: IdParam, db: Db, principal: Principal = authorize("customer", "merge", by_id=True)
) -> Response:
    data = await form_data(request)
    # The page the button was on (the survivor's merge page), to show a refusal there.
    back = str(data.get("customer_id", ""))
    undone: list[int] = []

    async def undo() -> None:
        undone.append((await service.unmerge(db, principal, merge_id)).survivor_id)

    try:
        async with db.begin():
            await undo()
    except ApiError as exc:
        if exc.status == 404 or not back.isdigit() or not 0 < int(back) < 2**63:
            raise
        return await _merge_page(
            request, db, principal, int(back), merge_id=merge_id, status_code=exc.status, errors=[exc.message]
        )
    return see_other(f"/customers/{undone[0]}/merge?merge_id={merge_id}&done=unmerged")
