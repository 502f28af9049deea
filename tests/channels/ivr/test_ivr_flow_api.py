"""IVR flow API and pages: create, read, drafts and publishing, versions and restore, validation with
every error and nothing saved, the simulator (writing nothing), and who may use them."""

from __future__ import annotations

import re

from ivr_support import code, make_customer, make_flow, make_queue, phone
from sqlalchemy import func, select

from conftest import login
from kefu.channels.ivr.models import IvrCallback, IvrFlow
from kefu.tickets.models import WorkOrder

API = "/api/v1/ivr/flows"


def source(queue: str, prompt: str = "人工服务请按3。") -> str:
    return f"""\
language: zh-CN
start: main
nodes:
  main:
    type: menu
    prompt: "{prompt}"
    options: {{"3": agent, "0": cb}}
    fallback: agent
  agent: {{type: queue, queue: {queue}, text: "正在转接。"}}
  cb: {{type: callback, text: "已登记回电。"}}
"""


async def _flow_count(app) -> int:  # noqa: ANN001
    async with app.state.session_factory() as db:
        return await db.scalar(select(func.count()).select_from(IvrFlow))


async def test_api_lifecycle(app, client, make) -> None:  # noqa: ANN001
    await login(client, await make.user("supervisor"))
    queue = await make_queue(app)
    flow_code = code("api")
    made = await client.post(
        API, json={"code": flow_code, "name": "热线", "source": source(queue), "numbers": ["+86 400 800 1234"]}
    )
    assert made.status_code == 201, made.text
    body = made.json()
    flow_id = body["id"]
    assert body["draft_version"] == 1 and body["live_version"] is None and body["numbers"] == ["+864008001234"]
    assert body["draft"]["source"] == source(queue) and body["draft"]["status"] == "draft"

    listed = await client.get(API)
    assert any(f["id"] == flow_id and f["code"] == flow_code for f in listed.json())

    published = await client.post(f"{API}/{flow_id}/publish", json={"if_version": 1})
    assert published.status_code == 200, published.text
    assert published.json()["live_version"] == 1 and published.json()["draft_version"] is None

    # Editing a published flow makes a draft; the live version stays.
    edited = await client.patch(f"{API}/{flow_id}", json={"source": source(queue, "新提示"), "if_version": 1})
    assert edited.status_code == 200, edited.text
    assert edited.json()["live_version"] == 1 and edited.json()["draft_version"] == 2
    again = await client.patch(f"{API}/{flow_id}", json={"source": source(queue, "再改"), "if_version": 2})
    assert again.json()["draft_version"] == 2  # the one draft is replaced, not stacked
    stale = await client.patch(f"{API}/{flow_id}", json={"name": "旧页面的修改", "if_version": 1})
    assert stale.status_code == 409 and stale.json()["error"]["details"]["latest"] == 2

    assert (await client.post(f"{API}/{flow_id}/publish")).json()["live_version"] == 2
    versions = (await client.get(f"{API}/{flow_id}/versions")).json()
    assert [(v["number"], v["status"]) for v in versions] == [(2, "published"), (1, "superseded")]
    assert versions[0]["source"] is None  # the list is light; one version has everything
    old = await client.get(f"{API}/{flow_id}/versions/1")
    assert old.json()["source"] == source(queue) and old.json()["definition"]["start"] == "main"
    assert (await client.get(f"{API}/{flow_id}/versions/9")).status_code == 404

    restored = await client.post(f"{API}/{flow_id}/versions/1/restore")
    assert restored.status_code == 200
    assert restored.json()["draft_version"] == 3 and restored.json()["draft"]["source"] == source(queue)
    assert restored.json()["draft"]["note"] == "restored from version 1"
    assert (await client.post(f"{API}/{flow_id}/publish")).json()["live_version"] == 3
    assert (await client.post(f"{API}/{flow_id}/publish")).status_code == 409  # no draft left

    read = await client.get(f"{API}/{flow_id}")
    assert read.json()["live"]["number"] == 3 and read.json()["live"]["source"] == source(queue)
    assert (await client.get(f"{API}/999999999")).status_code == 404


async def test_bad_source_is_refused_with_every_error_and_nothing_saved(app, client, make) -> None:  # noqa: ANN001
    await login(client, await make.user("admin"))
    before = await _flow_count(app)
    bad = """\
start: main
nodes:
  main:
    type: menu
    prompt: hi
    options: {"1": billing, "2": agent}
    fallback: agent
  agent: {type: queue, queue: no-such-queue}
"""
    refused = await client.post(API, json={"code": code("bad"), "name": "坏流程", "source": bad})
    assert refused.status_code == 422
    error = refused.json()["error"]
    assert error["details"]["field"] == "source"
    assert [(e["path"], e["message"], e["line"]) for e in error["details"]["errors"]] == [
        ("nodes.main.options.1", 'unknown node "billing"', 6),
        ("nodes.agent.queue", 'unknown routing queue "no-such-queue"', 8),
    ]
    assert error["message"].startswith("the flow has 2 errors: nodes.main.options.1")
    assert await _flow_count(app) == before

    fixed_syntax = bad.replace('"1": billing, ', "")
    refused = await client.post(API, json={"code": code("bad"), "name": "坏流程", "source": fixed_syntax})
    assert refused.json()["error"]["details"]["errors"][0]["message"] == 'unknown routing queue "no-such-queue"'
    assert await _flow_count(app) == before

    # A bad edit keeps the stored draft as it was.
    view = await make_flow(app, source(await make_queue(app)), publish=False)
    edit = await client.patch(f"{API}/{view.flow.id}", json={"source": "nodes: [", "name": "不应保存"})
    assert edit.status_code == 422 and edit.json()["error"]["details"]["errors"][0]["line"] is not None
    kept = (await client.get(f"{API}/{view.flow.id}")).json()
    assert kept["name"] == "测试流程" and kept["draft"]["source"] == view.draft.source

    validated = await client.post(f"{API}/validate", json={"source": bad})
    assert validated.status_code == 200
    assert validated.json()["ok"] is False and len(validated.json()["errors"]) == 2
    too_big = await client.post(f"{API}/validate", json={"source": "# " + "x" * 70_000})
    assert too_big.json()["errors"][0]["message"].startswith("too large")


async def test_codes_and_numbers_are_unique_and_one_default(app, client, make) -> None:  # noqa: ANN001
    await login(client, await make.user("admin"))
    queue = await make_queue(app)
    number = "400" + phone()[3:]
    first = await make_flow(app, source(queue), numbers=[number], is_default=True)
    dup_code = await client.post(API, json={"code": first.flow.code, "name": "x", "source": source(queue)})
    assert dup_code.status_code == 409 and dup_code.json()["error"]["details"]["field"] == "code"
    dup_number = await client.post(
        API, json={"code": code("n"), "name": "x", "source": source(queue), "numbers": [number]}
    )
    assert dup_number.status_code == 409 and number in dup_number.json()["error"]["message"]
    bad_number = await client.post(
        API, json={"code": code("n"), "name": "x", "source": source(queue), "numbers": ["x"]}
    )
    assert bad_number.status_code == 422
    second = await client.post(API, json={"code": code("d"), "name": "y", "source": source(queue), "is_default": True})
    assert second.json()["is_default"] is True
    assert (await client.get(f"{API}/{first.flow.id}")).json()["is_default"] is False
    unknown = await client.post(API, json={"code": code("u"), "name": "x", "source": "start: a", "colour": "red"})
    assert unknown.status_code == 422


async def test_simulator_walks_without_writing(app, client, make) -> None:  # noqa: ANN001
    await login(client, await make.user("supervisor"))
    queue = await make_queue(app)
    number = phone()
    await make_customer(app, "模拟客户", number)
    view = await make_flow(app, source(queue), publish=False)
    steps = await client.post(f"{API}/{view.flow.id}/simulate", json={"caller": number, "inputs": ["7", None, "3"]})
    assert steps.status_code == 200, steps.text
    result = steps.json()
    assert result["version"] == 1 and result["version_status"] == "draft"
    assert [s["kind"] for s in result["steps"]] == ["start", "input", "input", "input"]
    assert [s["input"] for s in result["steps"]] == [None, "7", None, "3"]
    assert result["steps"][-1]["queue"] == queue and result["steps"][-1]["done"]
    assert result["waiting_for_input"] is False and result["unused_inputs"] == 0

    async with app.state.session_factory() as db:
        orders_before = await db.scalar(select(func.count()).select_from(WorkOrder))
        callbacks_before = await db.scalar(select(func.count()).select_from(IvrCallback))
    callback = (
        await client.post(f"{API}/{view.flow.id}/simulate", json={"caller": number, "inputs": ["0", "9"]})
    ).json()
    last = callback["steps"][-1]
    assert last["callback"] and last["instruction"]["simulated"] is True
    assert last["instruction"]["work_order_id"] is None and callback["unused_inputs"] == 1
    async with app.state.session_factory() as db:
        assert await db.scalar(select(func.count()).select_from(WorkOrder)) == orders_before
        assert await db.scalar(select(func.count()).select_from(IvrCallback)) == callbacks_before

    waiting = (await client.post(f"{API}/{view.flow.id}/simulate", json={"caller": number})).json()
    assert waiting["waiting_for_input"] is True and len(waiting["steps"]) == 1
    live = await client.post(f"{API}/{view.flow.id}/simulate", json={"version": "live"})
    assert live.status_code == 422  # nothing is live yet
    bad_digits = await client.post(f"{API}/{view.flow.id}/simulate", json={"inputs": ["1a"]})
    assert bad_digits.status_code == 422


async def test_agents_and_customers_may_not_use_flows(app, client, make) -> None:  # noqa: ANN001
    await login(client, await make.user("agent"))
    assert (await client.get(API)).status_code == 403
    assert (await client.get("/ivr/flows")).status_code == 403
    assert (await client.post(API, json={"code": code(), "name": "x", "source": "x"})).status_code == 403


# --- pages ------------------------------------------------------------------------------------------
def _csrf(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found
    return found.group(1)


async def test_pages_create_edit_publish_simulate(app, client, make) -> None:  # noqa: ANN001
    await login(client, await make.user("supervisor"))
    queue = await make_queue(app)
    listing = await client.get("/ivr/flows", headers={"accept": "text/html"})
    assert listing.status_code == 200 and 'id="ivr-flow-create"' in listing.text
    csrf = _csrf(listing.text)
    flow_code = code("page")
    refused = await client.post(
        "/ivr/flows", data={"csrf_token": csrf, "code": flow_code, "name": "页面流程", "source": "start: [oops"}
    )
    assert refused.status_code == 422 and "not valid YAML" in refused.text
    assert "start: [oops" in refused.text  # what was typed is kept
    made = await client.post(
        "/ivr/flows", data={"csrf_token": csrf, "code": flow_code, "name": "页面流程", "source": source(queue)}
    )
    assert made.status_code == 303
    page_url = made.headers["location"].split("?")[0]
    page = await client.get(page_url)
    assert page.status_code == 200 and flow_code in page.text and 'id="ivr-source"' in page.text
    assert 'class="ivr-gutter"' in page.text

    bad = source(queue).replace("fallback: agent", "fallback: nowhere")
    shown = await client.post(f"{page_url}/source", data={"csrf_token": csrf, "source": bad, "action": "save"})
    assert shown.status_code == 422
    assert "nodes.main.fallback" in shown.text and "unknown node &#34;nowhere&#34;" in shown.text
    assert "fallback: nowhere" in shown.text

    checked = await client.post(f"{page_url}/source", data={"csrf_token": csrf, "source": bad, "action": "validate"})
    assert checked.status_code == 200 and 'id="ivr-errors"' in checked.text

    published = await client.post(
        f"{page_url}/source",
        data={"csrf_token": csrf, "source": source(queue, "发布的提示"), "action": "publish", "if_version": "1"},
    )
    assert published.status_code == 303
    flow_id = int(page_url.rsplit("/", 1)[1])
    assert (await client.get(f"{API}/{flow_id}")).json()["live"]["source"] == source(queue, "发布的提示")

    settings = await client.post(
        f"{page_url}/settings",
        data={
            "csrf_token": csrf,
            "name": "改名",
            "numbers": "400 111 2222\n4001113333",
            "is_default": "0",
            "active": "1",
        },
    )
    assert settings.status_code == 303
    assert (await client.get(f"{API}/{flow_id}")).json()["numbers"] == ["4001112222", "4001113333"]

    simulated = await client.post(
        f"{page_url}/simulate", data={"csrf_token": csrf, "caller": phone(), "inputs": "5, -, 3", "version": "live"}
    )
    assert simulated.status_code == 200 and 'id="ivr-simulation"' in simulated.text
    assert simulated.text.count("<tr data-action=") == 4 and f"<code>{queue}</code>" in simulated.text
    wrong = await client.post(f"{page_url}/simulate", data={"csrf_token": csrf, "inputs": "1, abc"})
    assert wrong.status_code == 422 and "ivr-simulation-error" in wrong.text

    restored = await client.post(f"{page_url}/versions/1/restore", data={"csrf_token": csrf})
    assert restored.status_code == 303
    # The draft v1 was saved and published in one step; restoring it makes draft v2.
    stale = await client.post(f"{page_url}/publish", data={"csrf_token": csrf, "if_version": "1"})
    assert stale.status_code == 409 and "changed since you opened it" in stale.text
    republished = await client.post(f"{page_url}/publish", data={"csrf_token": csrf, "if_version": "2"})
    assert republished.status_code == 303
    assert (await client.get(f"{API}/{flow_id}")).json()["live_version"] == 2
