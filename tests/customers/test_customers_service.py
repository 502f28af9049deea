"""Customers service: identities looked up in any format, conflicts naming the owner, merge and unmerge
moving exactly the rows they should (identities, notes, work orders, interactions), audited."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from conftest import principal_of, unique
from kefu.core.audit import AuditEntry
from kefu.core.errors import Conflict, Invalid, NotFound
from kefu.core.policy import Principal
from kefu.customers import service
from kefu.customers.models import Customer, CustomerIdentity, CustomerMerge, CustomerNote
from kefu.customers.service import NewIdentity
from kefu.interactions.models import Interaction
from kefu.tickets.models import WorkOrder


@pytest.fixture
async def supervisor(make) -> Principal:  # noqa: ANN001
    return principal_of(await make.user("supervisor"))


def mobile() -> str:
    """A fresh valid Chinese mobile number (unique per call, so tests never collide)."""
    digits = f"{abs(hash(unique())) % 10**8:08d}"
    return f"139{digits}"


async def make_customer(app, principal: Principal, *identities: tuple[str, str], **fields: Any) -> Customer:  # noqa: ANN001
    async with app.state.session_factory() as db, db.begin():
        return await service.create_customer(
            db,
            principal,
            display_name=fields.pop("display_name", unique("客户")),
            identities=[NewIdentity(kind, value) for kind, value in identities],
            **fields,
        )


async def test_lookup_by_any_format_of_an_identity(app, supervisor) -> None:  # noqa: ANN001
    number = mobile()
    spaced = f"+86 {number[:3]} {number[3:7]} {number[7:]}"
    customer = await make_customer(app, supervisor, ("phone", spaced), ("email", f"{unique()}@Example.com"))
    email = next(i.value for i in customer.identities if i.kind == "email")
    assert email == email.lower()
    async with app.state.session_factory() as db:
        for typed in (number, f"{number[:3]}-{number[3:7]}-{number[7:]}", f"0086{number}", f"86 {number}"):
            found = await service.find_by_identity(db, "phone", typed)
            assert found is not None and found.id == customer.id, typed
        assert (await service.find_by_identity(db, "email", email.upper())).id == customer.id  # type: ignore[union-attr]
        assert await service.find_by_identity(db, "phone", "13000000000") is None
        with pytest.raises(Invalid):
            await service.find_by_identity(db, "phone", "not a number")


async def test_an_identity_of_someone_else_is_a_conflict_naming_them(app, supervisor) -> None:  # noqa: ANN001
    number = mobile()
    owner = await make_customer(app, supervisor, ("phone", number))
    other = await make_customer(app, supervisor)
    async with app.state.session_factory() as db, db.begin():
        with pytest.raises(Conflict) as caught:
            await service.add_identity(db, supervisor, other.id, "phone", f"+86 {number}")
    assert str(owner.id) in caught.value.message
    assert caught.value.details["customer_id"] == owner.id
    # The owner adding it again is no change, not a conflict.
    async with app.state.session_factory() as db, db.begin():
        again = await service.add_identity(db, supervisor, owner.id, "phone", number)
    assert again.id == owner.identities[0].id
    # Creating a customer with a taken identity fails whole: no customer is left behind.
    name = unique("半个")
    with pytest.raises(Conflict):
        await make_customer(app, supervisor, ("email", f"{unique()}@x.cn"), ("phone", number), display_name=name)
    async with app.state.session_factory() as db:
        assert await db.scalar(select(Customer).where(Customer.display_name == name)) is None


async def test_resolve_or_create_makes_one_customer_per_identity(app, supervisor) -> None:  # noqa: ANN001
    number = mobile()
    async with app.state.session_factory() as db, db.begin():
        first, created = await service.resolve_or_create(db, supervisor, "phone", number)
    assert created and first.display_name == f"+86{number}"
    assert [(i.kind, i.value) for i in first.identities] == [("phone", f"+86{number}")]
    async with app.state.session_factory() as db, db.begin():
        again, created = await service.resolve_or_create(db, supervisor, "phone", f"+86 {number}", "张三")
    assert not created and again.id == first.id
    async with app.state.session_factory() as db, db.begin():
        named, created = await service.resolve_or_create(db, supervisor, "chat", unique("visitor"), "访客 张三")
    assert created and named.display_name == "访客 张三"


async def test_search_by_name_part_external_id_or_identity(app, supervisor) -> None:  # noqa: ANN001
    tag = unique("搜索")
    number = mobile()
    one = await make_customer(app, supervisor, ("phone", number), display_name=f"王 {tag} 一")
    two = await make_customer(app, supervisor, display_name=f"李 {tag} 二", external_id=unique("crm-"))
    async with app.state.session_factory() as db:
        assert [c.id for c in await service.search_customers(db, supervisor, tag)] == [one.id, two.id]
        assert [c.id for c in await service.search_customers(db, supervisor, tag.upper(), limit=1)] == [one.id]
        assert [c.id for c in await service.search_customers(db, supervisor, tag, after_id=one.id)] == [two.id]
        spaced = f"{number[:3]} {number[3:7]} {number[7:]}"
        assert [c.id for c in await service.search_customers(db, supervisor, spaced)] == [one.id]
        assert [c.id for c in await service.search_customers(db, supervisor, two.external_id or "")] == [two.id]
        assert await service.search_customers(db, supervisor, "100%_" + tag) == []


async def test_update_and_notes(app, supervisor) -> None:  # noqa: ANN001
    customer = await make_customer(app, supervisor, attributes={"会员": "金卡"})
    async with app.state.session_factory() as db, db.begin():
        updated = await service.update_customer(
            db, supervisor, customer.id, {"language": "zh-CN", "preferred_channel": "chat", "attributes": {"vip": True}}
        )
        with pytest.raises(Invalid):
            await service.update_customer(db, supervisor, customer.id, {"display_name": None})
    assert (updated.language, updated.preferred_channel, updated.attributes) == ("zh-CN", "chat", {"vip": True})
    async with app.state.session_factory() as db, db.begin():
        for text in ("第一条", "第二条"):
            await service.add_note(db, supervisor, customer.id, text)
    async with app.state.session_factory() as db:
        notes, names = await service.list_notes(db, supervisor, customer.id)
        assert [n.body for n in notes] == ["第二条", "第一条"]
        assert names[supervisor.user_id]  # type: ignore[index]
        with pytest.raises(NotFound):
            await service.list_notes(db, supervisor, 10**15)


async def _owned(app, customer_id: int) -> dict[str, set[int]]:  # noqa: ANN001
    async with app.state.session_factory() as db:

        async def ids(model: Any) -> set[int]:
            return set((await db.scalars(select(model.id).where(model.customer_id == customer_id))).all())

        return {
            "identities": await ids(CustomerIdentity),
            "notes": await ids(CustomerNote),
            "work_orders": await ids(WorkOrder),
            "interactions": await ids(Interaction),
        }


async def _with_history(app, principal: Principal, name: str) -> Customer:  # noqa: ANN001
    """A customer with two identities, a note, two work orders and three interactions."""
    customer = await make_customer(
        app, principal, ("phone", mobile()), ("email", f"{unique()}@example.com"), display_name=name
    )
    async with app.state.session_factory() as db, db.begin():
        db.add(CustomerNote(customer_id=customer.id, author_id=principal.user_id, body=f"note of {name}"))
        for n in range(2):
            db.add(WorkOrder(title=f"{name} order {n}", customer_id=customer.id))
        for n in range(3):
            db.add(Interaction(channel="phone", customer_id=customer.id, subject=f"{name} call {n}"))
    return customer


async def test_merge_moves_everything_and_unmerge_restores_exactly(app, supervisor) -> None:  # noqa: ANN001
    survivor = await _with_history(app, supervisor, unique("留下"))
    merged = await _with_history(app, supervisor, unique("并入"))
    before_survivor, before_merged = await _owned(app, survivor.id), await _owned(app, merged.id)
    merged_phone = next(i.value for i in merged.identities if i.kind == "phone")

    async with app.state.session_factory() as db, db.begin():
        record = await service.merge_customers(db, supervisor, survivor.id, merged.id)
    assert {k: set(v) for k, v in record.moved.items()} == before_merged
    after = await _owned(app, survivor.id)
    assert after == {k: before_survivor[k] | before_merged[k] for k in after}
    assert await _owned(app, merged.id) == {k: set() for k in after}

    async with app.state.session_factory() as db:
        # The merged customer is hidden from search but still readable, pointing at the survivor.
        assert merged.id not in [c.id for c in await service.search_customers(db, supervisor, merged.display_name)]
        assert (await service.get_customer(db, supervisor, merged.id)).merged_into_id == survivor.id
        assert (await service.find_by_identity(db, "phone", merged_phone)).id == survivor.id  # type: ignore[union-attr]
        entry = await db.scalar(
            select(AuditEntry).where(AuditEntry.action == "customer.merge", AuditEntry.object_id == str(survivor.id))
        )
        assert entry is not None and entry.details["merge_id"] == record.id
        assert entry.details["moved"] == {k: len(v) for k, v in before_merged.items()}
    # A merged customer takes no changes, and cannot be merged again.
    async with app.state.session_factory() as db, db.begin():
        with pytest.raises(Conflict, match="merged into"):
            await service.add_note(db, supervisor, merged.id, "late")
        with pytest.raises(Conflict):
            await service.merge_customers(db, supervisor, survivor.id, merged.id)
        with pytest.raises(Invalid):
            await service.merge_customers(db, supervisor, survivor.id, survivor.id)

    # Rows the survivor gained after the merge stay with it on unmerge.
    async with app.state.session_factory() as db, db.begin():
        late = WorkOrder(title="after the merge", customer_id=survivor.id)
        db.add(late)
    async with app.state.session_factory() as db, db.begin():
        undone = await service.unmerge(db, supervisor, record.id)
    assert undone.unmerged_at is not None and undone.unmerged_by_id == supervisor.user_id
    assert await _owned(app, merged.id) == before_merged
    restored = await _owned(app, survivor.id)
    assert restored == {**before_survivor, "work_orders": before_survivor["work_orders"] | {late.id}}
    async with app.state.session_factory() as db:
        assert (await service.get_customer(db, supervisor, merged.id)).merged_into_id is None
        assert (await service.find_by_identity(db, "phone", merged_phone)).id == merged.id  # type: ignore[union-attr]
        entry = await db.scalar(
            select(AuditEntry).where(AuditEntry.action == "customer.unmerge").order_by(AuditEntry.id.desc())
        )
        assert entry is not None and entry.details["merge_id"] == record.id
    async with app.state.session_factory() as db, db.begin():
        with pytest.raises(Conflict, match="already undone"):
            await service.unmerge(db, supervisor, record.id)
        with pytest.raises(NotFound):
            await service.unmerge(db, supervisor, 10**15)


async def test_undo_of_a_merge_waits_for_the_later_one(app, supervisor) -> None:  # noqa: ANN001
    a = await _with_history(app, supervisor, unique("a"))
    b = await _with_history(app, supervisor, unique("b"))
    z = await _with_history(app, supervisor, unique("z"))
    before = {c.id: await _owned(app, c.id) for c in (a, b, z)}
    async with app.state.session_factory() as db, db.begin():
        b_into_a = await service.merge_customers(db, supervisor, a.id, b.id)
    async with app.state.session_factory() as db, db.begin():
        a_into_z = await service.merge_customers(db, supervisor, z.id, a.id)
    b_phone = next(i.value for i in b.identities if i.kind == "phone")
    async with app.state.session_factory() as db:
        assert (await service.find_by_identity(db, "phone", b_phone)).id == z.id  # type: ignore[union-attr]
        merges = await service.list_merges(db, supervisor, customer_id=a.id)
        assert [m.id for m in merges] == [a_into_z.id, b_into_a.id]
    async with app.state.session_factory() as db, db.begin():
        with pytest.raises(Conflict, match="undo that merge first"):
            await service.unmerge(db, supervisor, b_into_a.id)
    for record in (a_into_z, b_into_a):
        async with app.state.session_factory() as db, db.begin():
            await service.unmerge(db, supervisor, record.id)
    assert {c.id: await _owned(app, c.id) for c in (a, b, z)} == before
    async with app.state.session_factory() as db:
        assert (await db.get(CustomerMerge, b_into_a.id)).unmerged_at is not None  # type: ignore[union-attr]


async def test_organisations(app, supervisor) -> None:  # noqa: ANN001
    name = unique("公司")
    async with app.state.session_factory() as db, db.begin():
        org = await service.create_organisation(db, supervisor, name=f" {name} ", external_id=unique("org-"))
        with pytest.raises(Conflict):
            await service.create_organisation(db, supervisor, name="other", external_id=org.external_id)
        await service.update_organisation(db, supervisor, org.id, {"attributes": {"tier": 1}})
        customer = await service.create_customer(db, supervisor, display_name="员工", organisation_id=org.id)
        with pytest.raises(Invalid):
            await service.create_customer(db, supervisor, display_name="x", organisation_id=10**15)
    assert customer.organisation_id == org.id
    async with app.state.session_factory() as db:
        found = await service.list_organisations(db, supervisor, name)
        assert [(o.id, o.name, o.attributes) for o in found] == [(org.id, name, {"tier": 1})]
