"""The one intake path: identity -> customer -> interaction -> the customer's open case.

"A customer who chats and then calls lands on the same open case" holds for every channel because every
channel goes through ``intake.receive_contact``; these tests pin its rules down once."""

from __future__ import annotations

import uuid

from sqlalchemy import func, select

from kefu.channels import intake
from kefu.channels.intake import CHANNEL_PRINCIPAL, InboundContact
from kefu.customers import service as customers
from kefu.customers.models import CustomerIdentity
from kefu.interactions.models import Interaction
from kefu.tickets.models import WorkOrder, WorkOrderStatus


def _id() -> str:
    return uuid.uuid4().hex


def new_mobile() -> str:
    return f"+86139{uuid.uuid4().int % 10**8:08d}"


async def customer_with_phone(app, phone: str, name: str = "张三") -> int:  # noqa: ANN001
    async with app.state.session_factory() as db, db.begin():
        customer, _ = await customers.resolve_or_create(db, CHANNEL_PRINCIPAL, "phone", phone, display_name=name)
        return customer.id


async def _receive(app, contact: InboundContact) -> intake.IntakeResult:  # noqa: ANN001
    async with app.state.session_factory() as db, db.begin():
        return await intake.receive_contact(db, contact)


async def test_a_chat_then_a_call_land_on_one_case(app) -> None:  # noqa: ANN001
    phone = new_mobile()
    email = f"li.{_id()[:8]}@example.cn"
    chat = await _receive(
        app,
        InboundContact(
            channel="chat",
            external_id=_id(),
            identity_kind="phone",
            identity_value=phone,
            other_identities=[("email", email)],
            display_name="李雷",
            subject="账单有误",
        ),
    )
    assert chat.created and chat.case_created and chat.customer_id is not None
    # The caller's number typed differently by the PBX still finds the customer, and the case.
    call = await _receive(
        app, InboundContact(channel="phone", external_id=_id(), identity_kind="phone", identity_value=phone[3:])
    )
    assert call.created and not call.case_created
    assert (call.customer_id, call.work_order_id) == (chat.customer_id, chat.work_order_id)
    # A mail from the address given in the pre-chat form lands there too.
    mail = await _receive(
        app, InboundContact(channel="email", external_id=_id(), identity_kind="email", identity_value=email.upper())
    )
    assert (mail.customer_id, mail.work_order_id) == (chat.customer_id, chat.work_order_id)
    async with app.state.session_factory() as db:
        linked = await db.scalar(
            select(func.count()).select_from(Interaction).where(Interaction.work_order_id == chat.work_order_id)
        )
        case = await db.get(WorkOrder, chat.work_order_id)
    assert linked == 3
    assert case is not None and case.title == "账单有误" and case.customer_id == chat.customer_id


async def test_the_same_channel_id_twice_is_one_contact_and_one_case(app) -> None:  # noqa: ANN001
    contact = InboundContact(channel="sms", external_id=_id(), identity_kind="phone", identity_value=new_mobile())
    first = await _receive(app, contact)
    again = await _receive(app, contact)
    assert not again.created and again.interaction.id == first.interaction.id
    assert again.work_order_id == first.work_order_id
    async with app.state.session_factory() as db:
        cases = await db.scalar(
            select(func.count()).select_from(WorkOrder).where(WorkOrder.customer_id == first.customer_id)
        )
    assert cases == 1


async def test_a_closed_case_is_not_reused_and_a_named_case_wins(app) -> None:  # noqa: ANN001
    phone = new_mobile()
    customer_id = await customer_with_phone(app, phone)
    first = await _receive(
        app, InboundContact(channel="phone", external_id=_id(), identity_kind="phone", identity_value=phone)
    )
    assert first.customer_id == customer_id and first.case_created
    async with app.state.session_factory() as db, db.begin():
        case = await db.get(WorkOrder, first.work_order_id)
        case.status = WorkOrderStatus.closed
    second = await _receive(
        app, InboundContact(channel="phone", external_id=_id(), identity_kind="phone", identity_value=phone)
    )
    assert second.case_created and second.work_order_id != first.work_order_id
    # A reply naming the closed case (a mail's reply token) goes to that case, not the open one.
    named = await _receive(
        app,
        InboundContact(
            channel="email",
            external_id=_id(),
            identity_kind="phone",
            identity_value=phone,
            work_order_id=first.work_order_id,
        ),
    )
    assert named.work_order_id == first.work_order_id


async def test_a_merged_case_sends_contacts_to_the_survivor(app) -> None:  # noqa: ANN001
    phone = new_mobile()
    first = await _receive(
        app, InboundContact(channel="phone", external_id=_id(), identity_kind="phone", identity_value=phone)
    )
    async with app.state.session_factory() as db, db.begin():
        survivor = WorkOrder(title="保留的工单", customer_id=first.customer_id)
        db.add(survivor)
        await db.flush()
        merged = await db.get(WorkOrder, first.work_order_id)
        merged.merged_into_id = survivor.id
        merged.status = WorkOrderStatus.closed
        survivor_id = survivor.id
    named = await _receive(
        app,
        InboundContact(channel="email", external_id=_id(), work_order_id=first.work_order_id),
    )
    assert named.work_order_id == survivor_id


async def test_a_form_never_moves_someone_elses_identity(app) -> None:  # noqa: ANN001
    owner_phone, visitor_phone = new_mobile(), new_mobile()
    owner_id = await customer_with_phone(app, owner_phone, name="王五")
    email = f"v.{_id()[:8]}@example.com"
    result = await _receive(
        app,
        InboundContact(
            channel="chat",
            external_id=_id(),
            identity_kind="email",
            identity_value=email,
            other_identities=[("phone", "not a phone"), ("phone", visitor_phone)],
        ),
    )
    assert result.customer_id not in (None, owner_id)
    # The owner's phone typed into another visitor's form: the first known identity decides the customer.
    second = await _receive(
        app,
        InboundContact(
            channel="chat",
            external_id=_id(),
            identity_kind="email",
            identity_value=f"x{email}",
            other_identities=[("phone", owner_phone)],
        ),
    )
    assert second.customer_id == owner_id
    async with app.state.session_factory() as db:
        owners = dict(
            (
                await db.execute(
                    select(CustomerIdentity.value, CustomerIdentity.customer_id).where(
                        CustomerIdentity.value.in_([owner_phone, visitor_phone])
                    )
                )
            ).all()
        )
    assert owners == {owner_phone: owner_id, visitor_phone: result.customer_id}


async def test_an_anonymous_contact_still_gets_a_case(app) -> None:  # noqa: ANN001
    result = await _receive(app, InboundContact(channel="web_form", external_id=_id(), subject="网站表单"))
    assert result.customer_id is None and result.case_created and result.work_order_id is not None
