"""The customer pages, used the way a browser uses them: search by name or by a phone number or email in
any format, create with identities, edit fields and identities, merge a duplicate (seeing what will
move) and undo the merge; refusals re-show the form, writes without the CSRF token are refused."""

from __future__ import annotations

import html as html_lib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from conftest import Factory, login, unique
from kefu.identity.models import User


@dataclass
class Person:
    user: User
    client: httpx.AsyncClient
    csrf: str = ""

    async def page(self, url: str, expect: int = 200, **params: object) -> str:
        response = await self.client.get(url, params=params or None)
        assert response.status_code == expect, f"{url}: {response.status_code} {response.text[:800]}"
        return response.text

    async def post(self, url: str, data: dict[str, Any] | None = None) -> httpx.Response:
        return await self.client.post(url, data={"csrf_token": self.csrf, **(data or {})})


def csrf_of(page: str) -> str:
    match = re.search(r'<input type="hidden" name="csrf_token" value="([^"]+)">', page)
    assert match, "the page has no form with a CSRF token"
    return match.group(1)


def section(page: str, element_id: str) -> str:
    match = re.search(rf'<(\w+)[^>]*\bid="{element_id}".*?</\1>', page, re.S)
    assert match, f"no #{element_id} on the page"
    return match.group(0)


def digits(n: int = 8) -> str:
    return "".join(c for c in unique("") if c.isdigit())[-n:].rjust(n, "7")


@pytest.fixture(scope="module")
async def people(app) -> AsyncIterator[dict[str, Person]]:  # noqa: ANN001
    make = Factory(app)
    out: dict[str, Person] = {}
    for key in ("agent", "supervisor"):
        user = await make.user(key)
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50004))
        client = httpx.AsyncClient(transport=transport, base_url="http://testserver", headers={"Accept": "text/html"})
        await login(client, user)
        client.headers.pop("X-CSRF-Token")
        out[key] = Person(user, client)
        out[key].csrf = csrf_of(await out[key].page("/profile"))
    yield out
    for person in out.values():
        await person.client.aclose()


async def create_customer(person: Person, name: str, **fields: Any) -> int:
    response = await person.post("/customers", {"display_name": name, **fields})
    assert response.status_code == 303, response.text[:800]
    match = re.match(r"^/customers/(\d+)\?done=created$", response.headers["location"])
    assert match, response.headers["location"]
    return int(match.group(1))


def results(page: str) -> str:
    return section(page, "customer-results")


async def test_create_and_find_by_phone_or_email_in_any_format(people: dict[str, Person]) -> None:
    agent = people["agent"]
    form = await agent.page("/customers/new")
    assert 'action="/customers"' in form and "identity_value_0" in form
    mobile = "138" + digits()
    name = "王五 " + unique()
    email = f"Wang.{unique()}@Example.COM"
    customer_id = await create_customer(
        agent,
        name,
        identity_kind_0="phone",
        identity_value_0=f"{mobile[:3]} {mobile[3:7]} {mobile[7:]}",
        identity_label_0="mobile",
        identity_kind_1="email",
        identity_value_1=email,
        language="zh-CN",
        preferred_channel="phone",
        attributes="会员等级: 金卡\n合同号：HT-001",
    )
    for typed in (f"+86 {mobile}", f"{mobile[:3]}-{mobile[3:7]}-{mobile[7:]}", f"0086{mobile}", email.upper()):
        found = results(await agent.page("/customers", q=typed))
        assert f'href="/customers/{customer_id}"' in found, typed
    by_name = results(await agent.page("/customers", q=name.split()[1]))
    assert f'href="/customers/{customer_id}"' in by_name
    assert f"+86{mobile}" in by_name  # identities shown normalized
    nobody = results(await agent.page("/customers", q="139" + digits()))
    assert f'href="/customers/{customer_id}"' not in nobody
    edit = await agent.page(f"/customers/{customer_id}/edit")
    assert "会员等级: 金卡" in edit and "合同号: HT-001" in edit


async def test_bad_input_reshows_the_form(people: dict[str, Person]) -> None:
    agent = people["agent"]
    nameless = await agent.post(
        "/customers", {"display_name": "", "identity_kind_0": "phone", "identity_value_0": "12"}
    )
    assert nameless.status_code == 422 and 'class="errors"' in nameless.text
    bad_phone = await agent.post(
        "/customers", {"display_name": "保留的名字", "identity_kind_0": "phone", "identity_value_0": "not-a-phone"}
    )
    assert bad_phone.status_code == 422 and "保留的名字" in bad_phone.text and 'class="errors"' in bad_phone.text
    bad_attributes = await agent.post("/customers", {"display_name": "属性", "attributes": "没有冒号的一行"})
    assert bad_attributes.status_code == 422 and "没有冒号的一行" in bad_attributes.text
    bad_channel = await agent.post("/customers", {"display_name": "x", "preferred_channel": "pigeon"})
    assert bad_channel.status_code == 422
    # A phone number someone else has: 409 naming the other customer, nothing created.
    mobile = "137" + digits()
    await create_customer(agent, "先到 " + unique(), identity_kind_0="phone", identity_value_0=mobile)
    late_name = "后到 " + unique()
    taken = await agent.post(
        "/customers", {"display_name": late_name, "identity_kind_0": "phone", "identity_value_0": mobile}
    )
    assert taken.status_code == 409 and 'class="errors"' in taken.text
    assert '<a href="/customers/' not in results(await agent.page("/customers", q=late_name))
    assert (await agent.page("/customers", expect=422, after="abc")) is not None


async def test_edit_fields_and_identities(people: dict[str, Person]) -> None:
    agent = people["agent"]
    customer_id = await create_customer(agent, "赵六 " + unique())
    url = f"/customers/{customer_id}/edit"
    saved = await agent.post(url, {"op": "save", "display_name": "赵六（已核实）", "preferred_channel": "email"})
    assert saved.status_code == 303 and saved.headers["location"] == f"{url}?done=saved"
    page = await agent.page(url)
    assert 'value="赵六（已核实）"' in page
    added = await agent.post(url, {"op": "add_identity", "kind": "phone", "value": "(010) 6552-" + digits(4)})
    assert added.status_code == 303
    identities = section(await agent.page(url), "customer-identities")
    assert "+8610" in identities
    identity_id = int(re.search(r'name="identity_id" value="(\d+)"', identities).group(1))
    junk = await agent.post(url, {"op": "add_identity", "kind": "email", "value": "not an email"})
    assert junk.status_code == 422 and 'class="errors"' in junk.text
    unknown_kind = await agent.post(url, {"op": "add_identity", "kind": "fax", "value": "1"})
    assert unknown_kind.status_code == 422
    removed = await agent.post(url, {"op": "remove_identity", "identity_id": identity_id})
    assert removed.status_code == 303
    assert "+8610" not in section(await agent.page(url), "customer-identities")
    assert (await agent.post(url, {"op": "remove_identity", "identity_id": identity_id})).status_code == 404
    empty_name = await agent.post(url, {"op": "save", "display_name": "", "external_id": "keep-me"})
    assert empty_name.status_code == 422 and 'value="keep-me"' in empty_name.text
    assert (await agent.post(url, {"op": "explode"})).status_code == 422
    await agent.page("/customers/999999999/edit", expect=404)


async def test_merge_shows_what_moves_and_can_be_undone(people: dict[str, Person]) -> None:
    agent, supervisor = people["agent"], people["supervisor"]
    first_phone, second_phone = "135" + digits(), "136" + digits()
    survivor = await create_customer(agent, "合并主 " + unique(), identity_kind_0="phone", identity_value_0=first_phone)
    duplicate_name = "合并副 " + unique()
    duplicate = await create_customer(
        agent,
        duplicate_name,
        identity_kind_0="phone",
        identity_value_0=second_phone,
        identity_kind_1="email",
        identity_value_1=f"dup{digits()}@example.test",
    )
    # Agents may not merge.
    await agent.page(f"/customers/{survivor}/merge", expect=403)
    assert (
        await agent.post(f"/customers/{survivor}/merge", {"duplicate_id": duplicate, "confirm": "1"})
    ).status_code == 403

    url = f"/customers/{survivor}/merge"
    picked = await supervisor.page(url, q=second_phone)
    assert f"duplicate_id={duplicate}" in html_lib.unescape(section(picked, "customer-merge-pick"))
    confirm = await supervisor.page(url, duplicate_id=duplicate)
    preview = section(confirm, "customer-merge-preview")
    assert "<strong>2</strong>" in preview  # the two identities move
    unconfirmed = await supervisor.post(url, {"duplicate_id": duplicate})
    assert unconfirmed.status_code == 422 and 'id="customer-merge-confirm"' in unconfirmed.text
    assert (await supervisor.post(url, {"duplicate_id": "x", "confirm": "1"})).status_code == 422
    itself = await supervisor.post(url, {"duplicate_id": survivor, "confirm": "1"})
    assert itself.status_code == 422 and 'class="errors"' in itself.text

    merged = await supervisor.post(url, {"duplicate_id": duplicate, "confirm": "1"})
    assert merged.status_code == 303, merged.text[:800]
    match = re.match(rf"^/customers/{survivor}/merge\?merge_id=(\d+)&done=merged$", merged.headers["location"])
    assert match, merged.headers["location"]
    merge_id = int(match.group(1))
    done = await supervisor.page(merged.headers["location"])
    assert 'id="customer-undo-form"' in done
    # The duplicate is hidden; its phone now finds the survivor.
    found = results(await supervisor.page("/customers", q=second_phone))
    assert f'href="/customers/{survivor}"' in found and f'href="/customers/{duplicate}"' not in found
    # Editing the merged customer leads to the survivor.
    follow = await supervisor.client.get(f"/customers/{duplicate}/edit")
    assert follow.status_code == 303 and follow.headers["location"] == f"/customers/{survivor}/edit"

    undone = await supervisor.post(f"/customer-merges/{merge_id}/undo", {"customer_id": survivor})
    assert undone.status_code == 303
    assert undone.headers["location"] == f"/customers/{survivor}/merge?merge_id={merge_id}&done=unmerged"
    back = results(await supervisor.page("/customers", q=second_phone))
    assert f'href="/customers/{duplicate}"' in back and f'href="/customers/{survivor}"' not in back
    again = await supervisor.post(f"/customer-merges/{merge_id}/undo", {"customer_id": survivor})
    assert again.status_code == 409 and 'class="errors"' in again.text
    assert (await supervisor.post("/customer-merges/999999999/undo")).status_code == 404


async def test_writes_without_the_csrf_token_are_refused(people: dict[str, Person]) -> None:
    agent = people["agent"]
    name = "无令牌 " + unique()
    for data in ({}, {"csrf_token": "forged"}):
        response = await agent.client.post("/customers", data={"display_name": name, **data})
        assert response.status_code == 403
    assert '<a href="/customers/' not in results(await agent.page("/customers", q=name))
    customer_id = await create_customer(agent, "有令牌 " + unique())
    refused = await agent.client.post(f"/customers/{customer_id}/edit", data={"op": "save", "display_name": "改名"})
    assert refused.status_code == 403


async def test_customers_and_strangers_are_kept_out(app) -> None:  # noqa: ANN001
    customer = await Factory(app).user("customer")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://testserver", headers={"Accept": "text/html"}
    ) as client:
        anonymous = await client.get("/customers")
        assert anonymous.status_code == 303 and anonymous.headers["location"].startswith("/login")
        await login(client, customer)
        assert (await client.get("/customers")).status_code == 403
        assert (await client.get("/customers/new")).status_code == 403
