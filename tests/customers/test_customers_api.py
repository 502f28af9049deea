"""Customers API: create and look up by any identity format, bad input refused whole (422), conflicts
naming the owner, Idempotency-Key on create, merge and undo, notes, organisations, import and export."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import select

from conftest import signed_in_clients, unique
from kefu.customers.models import Customer

API = "/api/v1"


@pytest.fixture
async def clients(app, make) -> AsyncIterator[dict[str, httpx.AsyncClient]]:  # noqa: ANN001
    users = {"agent": await make.user("agent"), "supervisor": await make.user("supervisor")}
    async with signed_in_clients(app, users) as signed_in:
        yield signed_in


def mobile() -> str:
    return f"136{abs(hash(unique())) % 10**8:08d}"


async def test_create_and_look_up_by_any_format(clients) -> None:  # noqa: ANN001
    agent = clients["agent"]
    number = mobile()
    created = await agent.post(
        f"{API}/customers",
        json={
            "display_name": "  张 三 ",
            "language": "zh-CN",
            "preferred_channel": "phone",
            "attributes": {"会员": "金卡", "积分": 1200, "vip": True},
            "identities": [
                {"kind": "phone", "value": f"{number[:3]}-{number[3:7]}-{number[7:]}", "label": "mobile"},
                {"kind": "email", "value": f"{unique()}@Example.COM"},
            ],
        },
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["display_name"] == "张 三" and body["merged_into_id"] is None
    assert body["identities"][0] == {**body["identities"][0], "kind": "phone", "value": f"+86{number}"}
    for typed in (number, f"+86 {number}", f"0086{number}", f"86-{number}"):
        found = await agent.get(f"{API}/customers/lookup", params={"kind": "phone", "value": typed})
        assert found.status_code == 200 and found.json()["id"] == body["id"], typed
    unknown = await agent.get(f"{API}/customers/lookup", params={"kind": "phone", "value": "13000000001"})
    assert unknown.status_code == 404
    junk = await agent.get(f"{API}/customers/lookup", params={"kind": "phone", "value": "12345"})
    assert junk.status_code == 422 and "phone" in junk.json()["error"]["message"]
    listed = await agent.get(f"{API}/customers", params={"q": f"+86{number}"})
    assert [c["id"] for c in listed.json()["items"]] == [body["id"]]
    assert (await agent.get(f"{API}/customers/{body['id']}")).json()["attributes"]["积分"] == 1200


async def test_bad_input_is_refused_and_nothing_is_written(app, clients) -> None:  # noqa: ANN001
    agent = clients["agent"]
    name = unique("不写")
    cases = [
        {"display_name": name, "shoe_size": 42},  # unknown field
        {"display_name": name, "identities": [{"kind": "phone", "value": "call me maybe"}]},
        {"display_name": name, "identities": [{"kind": "fax", "value": "123"}]},
        {"display_name": name, "preferred_channel": "pigeon"},
        {"display_name": name, "attributes": {"nested": {"a": 1}}},
        {"display_name": name, "attributes": {f"k{n}": n for n in range(51)}},
        {"display_name": name, "language": "not a language"},
        {"display_name": ""},
        {"display_name": "x" * 201},
        {
            "display_name": name,
            "identities": [{"kind": "email", "value": "ok@example.com"}, {"kind": "phone", "value": "1"}],
        },
    ]
    for payload in cases:
        response = await agent.post(f"{API}/customers", json=payload)
        assert response.status_code == 422, (payload, response.text)
        assert set(response.json()["error"]) == {"code", "message", "details"}
    async with app.state.session_factory() as db:
        assert await db.scalar(select(Customer).where(Customer.display_name == name)) is None
    ok = (await agent.post(f"{API}/customers", json={"display_name": name})).json()
    for payload in ({"display_name": None}, {"merged_into_id": 1}, {"attributes": {"x": float("nan")}}):
        response = await agent.patch(f"{API}/customers/{ok['id']}", content=json.dumps(payload))
        assert response.status_code in (400, 422), (payload, response.text)
    assert (await agent.get(f"{API}/customers/999999999999")).status_code == 404
    assert (await agent.get(f"{API}/customers/0")).status_code == 422
    assert (await agent.get(f"{API}/customers", params={"q": "a\x00b"})).status_code == 422


async def test_identity_conflict_names_the_other_customer(clients) -> None:  # noqa: ANN001
    agent = clients["agent"]
    number = mobile()
    owner = (
        await agent.post(
            f"{API}/customers", json={"display_name": "甲", "identities": [{"kind": "phone", "value": number}]}
        )
    ).json()
    other = (await agent.post(f"{API}/customers", json={"display_name": "乙"})).json()
    response = await agent.post(
        f"{API}/customers/{other['id']}/identities", json={"kind": "phone", "value": f"+86 {number}"}
    )
    assert response.status_code == 409
    error = response.json()["error"]
    assert error["details"]["customer_id"] == owner["id"] and str(owner["id"]) in error["message"]
    added = await agent.post(
        f"{API}/customers/{other['id']}/identities", json={"kind": "social", "value": "WeChat:wxid_" + unique()}
    )
    assert added.status_code == 201 and added.json()["value"].startswith("wechat:")
    removed = await agent.delete(f"{API}/customers/{other['id']}/identities/{added.json()['id']}")
    assert removed.status_code == 204
    again = await agent.delete(f"{API}/customers/{other['id']}/identities/{added.json()['id']}")
    assert again.status_code == 404


async def test_idempotency_key_on_create(app, clients) -> None:  # noqa: ANN001
    agent = clients["agent"]
    key = unique("idem")
    name = unique("幂等")
    first = await agent.post(f"{API}/customers", json={"display_name": name}, headers={"Idempotency-Key": key})
    second = await agent.post(f"{API}/customers", json={"display_name": name}, headers={"Idempotency-Key": key})
    assert first.status_code == second.status_code == 201
    assert second.json() == first.json() and second.headers.get("Idempotent-Replayed") == "true"
    other = await agent.post(f"{API}/customers", json={"display_name": name + "x"}, headers={"Idempotency-Key": key})
    assert other.status_code == 422 and other.json()["error"]["code"] == "idempotency_key_reused"
    async with app.state.session_factory() as db:
        rows = (await db.scalars(select(Customer.id).where(Customer.display_name.like(f"{name}%")))).all()
    assert list(rows) == [first.json()["id"]]


async def test_merge_and_undo_through_the_api(clients) -> None:  # noqa: ANN001
    agent, supervisor = clients["agent"], clients["supervisor"]
    number = mobile()
    survivor = (await agent.post(f"{API}/customers", json={"display_name": unique("主")})).json()
    merged = (
        await agent.post(
            f"{API}/customers",
            json={"display_name": unique("副"), "identities": [{"kind": "phone", "value": number}]},
        )
    ).json()
    note = await agent.post(f"{API}/customers/{merged['id']}/notes", json={"body": "打过两次电话"})
    assert note.status_code == 201 and note.json()["author_name"]
    pair = {"survivor_id": survivor["id"], "merged_id": merged["id"]}
    assert (await agent.post(f"{API}/customers/merge", json=pair)).status_code == 403
    done = await supervisor.post(f"{API}/customers/merge", json=pair)
    assert done.status_code == 201, done.text
    merge = done.json()
    assert merge["moved"]["identities"] == [merged["identities"][0]["id"]]
    assert merge["moved"]["notes"] == [note.json()["id"]]
    found = await agent.get(f"{API}/customers/lookup", params={"kind": "phone", "value": number})
    assert found.json()["id"] == survivor["id"]
    gone = (await agent.get(f"{API}/customers/{merged['id']}")).json()
    assert gone["merged_into_id"] == survivor["id"]
    listed = await agent.get(f"{API}/customers", params={"q": merged["display_name"]})
    assert listed.json()["items"] == []
    notes = (await agent.get(f"{API}/customers/{survivor['id']}/notes")).json()
    assert [n["body"] for n in notes["items"]] == ["打过两次电话"]
    history = await supervisor.get(f"{API}/customer-merges", params={"customer_id": merged["id"]})
    assert [m["id"] for m in history.json()] == [merge["id"]]

    undone = await supervisor.post(f"{API}/customer-merges/{merge['id']}/undo")
    assert undone.status_code == 200 and undone.json()["unmerged_at"] is not None
    back = await agent.get(f"{API}/customers/lookup", params={"kind": "phone", "value": number})
    assert back.json()["id"] == merged["id"] and back.json()["merged_into_id"] is None
    twice = await supervisor.post(f"{API}/customer-merges/{merge['id']}/undo")
    assert twice.status_code == 409
    self_merge = await supervisor.post(
        f"{API}/customers/merge", json={"survivor_id": survivor["id"], "merged_id": survivor["id"]}
    )
    assert self_merge.status_code == 422


async def test_organisations_api(clients) -> None:  # noqa: ANN001
    agent, supervisor = clients["agent"], clients["supervisor"]
    name = unique("机构")
    made = await agent.post(f"{API}/organisations", json={"name": name, "attributes": {"行业": "保险"}})
    assert made.status_code == 201
    org = made.json()
    assert (await agent.patch(f"{API}/organisations/{org['id']}", json={"name": "x"})).status_code == 403
    renamed = await supervisor.patch(f"{API}/organisations/{org['id']}", json={"name": name + "改"})
    assert renamed.status_code == 200 and renamed.json()["name"] == name + "改"
    listed = await agent.get(f"{API}/organisations", params={"q": name})
    assert [o["id"] for o in listed.json()["items"]] == [org["id"]]
    customer = await agent.post(f"{API}/customers", json={"display_name": "员工", "organisation_id": org["id"]})
    assert customer.json()["organisation_id"] == org["id"]
    missing = await agent.post(f"{API}/customers", json={"display_name": "员工", "organisation_id": 999999999})
    assert missing.status_code == 422


async def test_import_and_export_through_the_api(clients) -> None:  # noqa: ANN001
    agent, supervisor = clients["agent"], clients["supervisor"]
    tag = unique("api")
    csv_bytes = f"external_id,display_name,phone\n{tag},导入,{mobile()}\n{tag}-bad,坏,999\n".encode("gb18030")
    files = {"file": ("customers.csv", csv_bytes, "text/csv")}
    assert (await agent.post(f"{API}/customers/import", files=files)).status_code == 403
    report = await supervisor.post(f"{API}/customers/import", files=files)
    assert report.status_code == 200, report.text
    assert report.json()["created"] == 1 and [e["line"] for e in report.json()["errors"]] == [3]
    jsonl = json.dumps({"external_id": tag, "display_name": "导入二"}, ensure_ascii=False).encode()
    again = await supervisor.post(
        f"{API}/customers/import", files={"file": ("x.txt", jsonl, "text/plain")}, data={"format": "jsonl"}
    )
    assert again.json()["updated"] == 1
    bad_header = await supervisor.post(f"{API}/customers/import", files={"file": ("a.csv", b"name\nx\n", "text/csv")})
    assert bad_header.status_code == 422

    assert (await agent.get(f"{API}/customers/export")).status_code == 403
    export = await supervisor.get(f"{API}/customers/export")
    assert export.status_code == 200 and export.headers["content-type"].startswith("application/x-ndjson")
    records = [json.loads(line) for line in export.text.splitlines()]
    assert any(r["external_id"] == tag and r["display_name"] == "导入二" for r in records)


NAUGHTY = [
    "\x00",
    "nul\x00inside",
    "\ud800",
    "\x1b[31mred\x1b[0m",
    "<script>alert(1)</script>",
    "'; DROP TABLE users; --",
    "{{7*7}}${jndi:ldap://x/a}",
    "\u202egnp.exe",
    "   ",
    "",
    "x" * 10_000,
    "客服中心 🎧 ﾟ･✿ヾ╲(｡◕‿◕｡)╱✿･ﾟ",
    "null",
    "\ufeffbom",
]


@pytest.mark.parametrize("naughty", NAUGHTY, ids=[json.dumps(v)[:24] for v in NAUGHTY])
async def test_naughty_text_never_breaks_a_write(app, clients, naughty: str) -> None:  # noqa: ANN001
    agent = clients["agent"]
    customer = (await agent.post(f"{API}/customers", json={"display_name": unique("n")})).json()
    writes = [
        ("POST", f"{API}/customers", {"display_name": naughty}),
        ("POST", f"{API}/customers", {"display_name": "x", "external_id": naughty}),
        ("POST", f"{API}/customers", {"display_name": "x", "attributes": {naughty: "v"}}),
        ("POST", f"{API}/customers", {"display_name": "x", "attributes": {"k": naughty}}),
        ("PATCH", f"{API}/customers/{customer['id']}", {"display_name": naughty}),
        ("POST", f"{API}/customers/{customer['id']}/notes", {"body": naughty}),
        ("POST", f"{API}/organisations", {"name": naughty}),
        *(
            ("POST", f"{API}/customers/{customer['id']}/identities", {"kind": kind, "value": naughty})
            for kind in ("phone", "email", "chat", "sms", "social", "crm")
        ),
    ]
    for method, url, payload in writes:
        response = await agent.request(
            method, url, content=json.dumps(payload), headers={"content-type": "application/json"}
        )
        assert response.status_code < 500, (url, payload, response.text[:300])
        if response.status_code >= 400:
            assert set(response.json()["error"]) == {"code", "message", "details"}
    if naughty == "\ud800":
        return  # cannot even be put in a URL
    for params in ({"q": naughty}, {"kind": "phone", "value": naughty}):
        path = f"{API}/customers/lookup" if "kind" in params else f"{API}/customers"
        assert (await agent.get(path, params=params)).status_code < 500
