"""Contact reasons: a configurable tree; codes unique, no cycles, deactivated instead of deleted."""

from __future__ import annotations

import uuid

import pytest

from conftest import login, signed_in_clients

API = "/api/v1/contact-reasons"


def code() -> str:
    return f"c{uuid.uuid4().hex[:12]}"


def find(tree: list[dict], reason_id: int) -> dict | None:
    for node in tree:
        if node["id"] == reason_id:
            return node
        found = find(node["children"], reason_id)
        if found is not None:
            return found
    return None


@pytest.fixture
async def supervisor_client(client, make):  # noqa: ANN001, ANN201
    await login(client, await make.user("supervisor"))
    return client


async def _make(client, name: str, parent_id: int | None = None, **extra) -> dict:  # noqa: ANN001
    response = await client.post(API, json={"code": code(), "name": name, "parent_id": parent_id, **extra})
    assert response.status_code == 201, response.text
    return response.json()


async def test_the_tree(supervisor_client) -> None:  # noqa: ANN001
    billing = await _make(supervisor_client, "账单")
    dispute = await _make(supervisor_client, "扣费异议", billing["id"], position=2)
    refund = await _make(supervisor_client, "退款", billing["id"], position=1)
    tree = (await supervisor_client.get(API)).json()
    node = find(tree, billing["id"])
    assert node is not None and node["parent_id"] is None
    assert [c["id"] for c in node["children"]] == [refund["id"], dispute["id"]]  # by position
    assert find(tree, dispute["id"])["parent_id"] == billing["id"]


async def test_deactivated_reasons_and_their_subtree_leave_the_active_tree(supervisor_client) -> None:  # noqa: ANN001
    top = await _make(supervisor_client, "物流")
    middle = await _make(supervisor_client, "延误", top["id"])
    leaf = await _make(supervisor_client, "超过七天", middle["id"])
    response = await supervisor_client.patch(f"{API}/{middle['id']}", json={"active": False})
    assert response.status_code == 200 and response.json()["active"] is False
    active = (await supervisor_client.get(API)).json()
    assert find(active, top["id"]) is not None
    assert find(active, middle["id"]) is None and find(active, leaf["id"]) is None
    everything = (await supervisor_client.get(API, params={"all": "1"})).json()
    assert find(everything, leaf["id"]) is not None
    assert find(everything, middle["id"])["active"] is False
    # Reactivated, it comes back with its children.
    await supervisor_client.patch(f"{API}/{middle['id']}", json={"active": True})
    assert find((await supervisor_client.get(API)).json(), leaf["id"]) is not None


async def test_codes_are_unique(supervisor_client) -> None:  # noqa: ANN001
    first = await _make(supervisor_client, "一")
    duplicate = await supervisor_client.post(API, json={"code": first["code"], "name": "二"})
    assert duplicate.status_code == 409
    second = await _make(supervisor_client, "二")
    renamed = await supervisor_client.patch(f"{API}/{second['id']}", json={"code": first["code"]})
    assert renamed.status_code == 409
    same = await supervisor_client.patch(f"{API}/{first['id']}", json={"code": first["code"], "name": "一一"})
    assert same.status_code == 200 and same.json()["name"] == "一一"


async def test_no_cycles(supervisor_client) -> None:  # noqa: ANN001
    a = await _make(supervisor_client, "A")
    b = await _make(supervisor_client, "B", a["id"])
    c = await _make(supervisor_client, "C", b["id"])
    for parent in (a["id"], c["id"], b["id"]):
        refused = await supervisor_client.patch(f"{API}/{a['id']}", json={"parent_id": parent})
        assert refused.status_code == 422, refused.text
    # Moving a subtree elsewhere, and back to the top, is fine.
    other = await _make(supervisor_client, "D")
    moved = await supervisor_client.patch(f"{API}/{b['id']}", json={"parent_id": other["id"]})
    assert moved.status_code == 200 and moved.json()["parent_id"] == other["id"]
    top = await supervisor_client.patch(f"{API}/{b['id']}", json={"parent_id": None})
    assert top.status_code == 200 and top.json()["parent_id"] is None
    assert find((await supervisor_client.get(API)).json(), c["id"])["parent_id"] == b["id"]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"code": "ok", "name": ""},
        {"code": "has space", "name": "x"},
        {"code": "x" * 65, "name": "x"},
        {"code": "ok", "name": "x" * 129},
        {"code": "ok", "name": "a\nb"},
        {"code": "ok", "name": "x", "parent_id": 987_654_321},
        {"code": "ok", "name": "x", "position": 10**9},
        {"code": "ok", "name": "x", "extra": 1},
    ],
)
async def test_bad_reasons_are_refused(supervisor_client, body: dict) -> None:  # noqa: ANN001
    response = await supervisor_client.post(API, json=body)
    assert response.status_code == 422, response.text


async def test_bad_updates_are_refused(supervisor_client) -> None:  # noqa: ANN001
    reason = await _make(supervisor_client, "X")
    for body in ({"name": None}, {"code": None}, {"active": None}, {"parent_id": 987_654_321}):
        response = await supervisor_client.patch(f"{API}/{reason['id']}", json=body)
        assert response.status_code == 422, (body, response.text)
    assert (await supervisor_client.patch(f"{API}/987654321", json={"name": "y"})).status_code == 404


async def test_agents_read_the_tree_but_do_not_change_it(app, make) -> None:  # noqa: ANN001
    users = {"agent": await make.user("agent"), "supervisor": await make.user("supervisor")}
    async with signed_in_clients(app, users) as c:
        made = await _make(c["supervisor"], "可见")
        assert find((await c["agent"].get(API)).json(), made["id"]) is not None
        assert (await c["agent"].post(API, json={"code": code(), "name": "x"})).status_code == 403
        assert (await c["agent"].patch(f"{API}/{made['id']}", json={"name": "y"})).status_code == 403


async def test_changes_are_audited(app, supervisor_client) -> None:  # noqa: ANN001
    from kefu.core import audit

    reason = await _make(supervisor_client, "审计")
    await supervisor_client.patch(f"{API}/{reason['id']}", json={"active": False})
    async with app.state.session_factory() as db:
        entries = await audit.list_entries(db, object_type="contact_reason", limit=200)
    mine = [e for e in entries if e.object_id == str(reason["id"])]
    assert {e.action for e in mine} == {"contact_reason.create", "contact_reason.update"}
    update = next(e for e in mine if e.action == "contact_reason.update")
    assert update.details == {"before": {"active": True}, "after": {"active": False}}
