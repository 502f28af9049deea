"""The help-centre contact form and its JSON twin: a case through intake, CSRF double-submit, honeypot,
rate limit per client address, attachment limits, idempotent resubmission."""

from __future__ import annotations

import base64
import itertools
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from kefu.channels.intake import CHANNEL_PRINCIPAL
from kefu.customers import service as customers
from kefu.interactions.models import Interaction
from kefu.tickets import attachments
from kefu.tickets import service as tickets

_addresses = itertools.count(1)


@pytest.fixture
async def browser(app) -> AsyncIterator[httpx.AsyncClient]:  # noqa: ANN001
    """An anonymous browser from an address of its own (the rate limit counts per address)."""
    n = next(_addresses)
    transport = httpx.ASGITransport(app=app, client=(f"10.40.{n // 250}.{n % 250 + 1}", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


def email() -> str:
    return f"web.{uuid.uuid4().hex[:10]}@example.cn"


async def open_form(client: httpx.AsyncClient) -> dict[str, str]:
    page = await client.get("/help/contact")
    assert page.status_code == 200
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    submission = re.search(r'name="submission_id" value="([^"]+)"', page.text).group(1)
    assert client.cookies.get("kefu_csrf") == token  # the double-submit pair
    return {"csrf_token": token, "submission_id": submission}


def fields(**overrides: Any) -> dict[str, str]:
    values = {
        "name": "王小明",
        "email": email(),
        "phone": "",
        "subject": "发票开错了",
        "message": "<p>请重新开具发票</p>，谢谢。",
        "website": "",
    }
    values.update(overrides)
    return values


def case_number(html: str) -> str | None:
    found = re.search(r"WO\d{8}", html)
    return found.group(0) if found else None


async def test_a_form_becomes_a_case_once(app, browser) -> None:  # noqa: ANN001
    hidden = await open_form(browser)
    data = {**hidden, **fields(phone="138 0013 8111")}
    done = await browser.post("/help/contact", data=data)
    assert done.status_code == 200, done.text
    number = case_number(done.text)
    assert number and 'id="help-contact-done"' in done.text
    async with app.state.session_factory() as db:
        work_order = await tickets.get_work_order(db, CHANNEL_PRINCIPAL, int(number[2:]))
        customer = await customers.find_by_identity(db, "email", data["email"])
        interaction = await db.scalar(
            select(Interaction).where(Interaction.external_id == f"form:{hidden['submission_id']}")
        )
    assert (work_order.title, work_order.customer_id) == ("发票开错了", customer.id)
    assert work_order.description == "请重新开具发票，谢谢。"  # markup from outside is not kept
    assert (interaction.channel, interaction.work_order_id) == ("web_form", work_order.id)
    # The same form sent again (a double click, the back button) is the same case, not a second one.
    again = await browser.post("/help/contact", data=data)
    assert case_number(again.text) == number
    # A second form of the same customer is a new message on their open case.
    later = await browser.post("/help/contact", data={**(await open_form(browser)), **fields(email=data["email"])})
    assert case_number(later.text) == number
    async with app.state.session_factory() as db:
        comments = await tickets.list_comments(db, CHANNEL_PRINCIPAL, work_order.id)
    assert len(comments) == 1 and "[发票开错了]" in comments[0][0].body


async def test_forms_without_the_csrf_pair_are_refused(app, browser) -> None:  # noqa: ANN001
    hidden = await open_form(browser)
    wrong = await browser.post("/help/contact", data={**hidden, "csrf_token": "forged", **fields()})
    assert wrong.status_code == 403
    browser.cookies.clear()
    no_cookie = await browser.post("/help/contact", data={**hidden, **fields()})
    assert no_cookie.status_code == 403
    async with app.state.session_factory() as db:
        found = await db.scalar(
            select(func.count())
            .select_from(Interaction)
            .where(Interaction.external_id == f"form:{hidden['submission_id']}")
        )
    assert found == 0


async def test_the_honeypot_is_answered_like_a_success_and_stores_nothing(app, browser) -> None:  # noqa: ANN001
    hidden = await open_form(browser)
    bot = await browser.post("/help/contact", data={**hidden, **fields(website="http://spam.example")})
    assert bot.status_code == 200 and 'id="help-contact-done"' in bot.text and case_number(bot.text) is None
    # The page set the CSRF cookie: an API call from this browser must echo it (double submit).
    csrf = {"X-CSRF-Token": hidden["csrf_token"]}
    api = await browser.post("/api/v1/web-forms", json={**fields(website="http://spam.example")}, headers=csrf)
    assert api.status_code == 200 and api.json()["case_number"] is None
    async with app.state.session_factory() as db:
        found = await db.scalar(
            select(func.count())
            .select_from(Interaction)
            .where(Interaction.external_id == f"form:{hidden['submission_id']}")
        )
    assert found == 0


async def test_invalid_fields_show_the_form_again_with_what_was_typed(browser) -> None:  # noqa: ANN001
    hidden = await open_form(browser)
    refused = await browser.post("/help/contact", data={**hidden, **fields(email="not-an-email", subject="我的主题")})
    assert refused.status_code == 422
    assert "email" in refused.text and 'value="我的主题"' in refused.text and case_number(refused.text) is None
    bad_phone = await browser.post("/help/contact", data={**hidden, **fields(phone="12")})
    assert bad_phone.status_code == 422


async def test_the_rate_limit_counts_per_client_address(app, browser, settings) -> None:  # noqa: ANN001
    hidden = await open_form(browser)
    incomplete = {**hidden, "name": "x"}  # refused, but counted all the same
    for _ in range(settings.webhooks_form_rate_limit):
        assert (await browser.post("/help/contact", data=incomplete)).status_code == 422
    limited = await browser.post("/help/contact", data={**hidden, **fields()})
    assert limited.status_code == 429 and case_number(limited.text) is None
    api = await browser.post("/api/v1/web-forms", json=fields(), headers={"X-CSRF-Token": hidden["csrf_token"]})
    assert api.status_code == 429 and int(api.headers["Retry-After"]) > 0
    # Another address is not affected.
    transport = httpx.ASGITransport(app=app, client=("10.41.0.1", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as other:
        assert (await other.post("/api/v1/web-forms", json=fields())).status_code == 201


async def test_attachments_within_the_limit_are_kept_and_larger_ones_refused(app, browser, settings) -> None:  # noqa: ANN001
    hidden = await open_form(browser)
    limit = settings.webhooks_form_attachment_max_bytes
    too_big = await browser.post(
        "/help/contact", data={**hidden, **fields()}, files={"attachment": ("big.pdf", b"x" * (limit + 1))}
    )
    assert too_big.status_code == 413 and case_number(too_big.text) is None
    async with app.state.session_factory() as db:
        stored = await db.scalar(
            select(func.count())
            .select_from(Interaction)
            .where(Interaction.external_id == f"form:{hidden['submission_id']}")
        )
    assert stored == 0
    ok = await browser.post(
        "/help/contact", data={**hidden, **fields()}, files={"attachment": ("发票.pdf", b"%PDF-1.4 test")}
    )
    number = case_number(ok.text)
    assert ok.status_code == 200 and number
    async with app.state.session_factory() as db:
        files = await attachments.list_for(db, CHANNEL_PRINCIPAL, int(number[2:]))
    assert [(f.filename, f.size) for f in files] == [("发票.pdf", 13)]


async def test_the_json_twin(app, browser, settings) -> None:  # noqa: ANN001
    body = {**fields(), "submission_id": uuid.uuid4().hex}
    del body["phone"]
    body["attachment"] = {"name": "a.txt", "content_base64": base64.b64encode(b"hello").decode()}
    made = await browser.post("/api/v1/web-forms", json=body)
    assert made.status_code == 201, made.text
    assert made.json()["case_number"].startswith("WO")
    again = await browser.post("/api/v1/web-forms", json=body)
    assert again.status_code == 200 and again.json()["case_number"] == made.json()["case_number"]
    for change, field in (
        ({"email": "nope"}, "email"),
        ({"subject": ""}, "subject"),
        ({"message": "x" * 10_001}, "message"),
        ({"name": ""}, "name"),
        ({"extra": 1}, "extra"),
    ):
        refused = await browser.post("/api/v1/web-forms", json={**fields(), **change})
        assert refused.status_code == 422, change
        assert refused.json()["error"]["details"][0]["loc"][-1] == field
    bad64 = await browser.post(
        "/api/v1/web-forms", json={**fields(), "attachment": {"name": "a.txt", "content_base64": "***"}}
    )
    assert bad64.status_code == 422 and bad64.json()["error"]["details"]["field"] == "attachment.content_base64"
    big = base64.b64encode(b"x" * (settings.webhooks_form_attachment_max_bytes + 1)).decode()
    too_big = await browser.post(
        "/api/v1/web-forms", json={**fields(), "attachment": {"name": "a.bin", "content_base64": big}}
    )
    assert too_big.status_code == 413


async def test_admin_pages(app, make) -> None:  # noqa: ANN001
    from conftest import login

    transport = httpx.ASGITransport(app=app, client=("10.42.0.1", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as admin:
        csrf = await login(admin, await make.user("admin"))
        code = f"pg{uuid.uuid4().hex[:8]}"
        bad = await admin.post(
            "/webhooks/channels",
            data={"csrf_token": csrf, "code": code, "name": "页面渠道", "kind": "sms", "secret": "short"},
        )
        assert bad.status_code == 422 and f'value="{code}"' in bad.text
        made = await admin.post(
            "/webhooks/channels",
            data={"csrf_token": csrf, "code": code, "name": "页面渠道", "kind": "sms", "secret": "x" * 20},
        )
        assert made.status_code == 303
        channel_url = made.headers["location"].split("?")[0]
        page = await admin.get(channel_url)
        assert (
            page.status_code == 200 and f"/api/v1/channels/{code}/messages" in page.text and "x" * 20 not in page.text
        )
        saved = await admin.post(
            channel_url, data={"csrf_token": csrf, "name": "改名渠道", "secret": "", "active": "1", "queue": ""}
        )
        assert saved.status_code == 303
        assert "改名渠道" in (await admin.get("/webhooks")).text
        sub = await admin.post(
            "/webhooks/subscriptions",
            data={
                "csrf_token": csrf,
                "name": "页面订阅",
                "url": "https://crm.example.test/h",
                "secret": "y" * 20,
                "event_types[]": ["work_order.created", "work_order.status"],
            },
        )
        assert sub.status_code == 303
        sub_url = sub.headers["location"].split("?")[0]
        edit = await admin.post(
            sub_url,
            data={
                "csrf_token": csrf,
                "name": "页面订阅",
                "url": "https://crm.example.test/h",
                "active": "0",
                "event_types[]": ["work_order.created"],
            },
        )
        assert edit.status_code == 303
        shown = await admin.get(sub_url)
        assert shown.status_code == 200 and "y" * 20 not in shown.text
        none_chosen = await admin.post(sub_url, data={"csrf_token": csrf, "name": "页面订阅", "url": "https://a.test/"})
        assert none_chosen.status_code == 422
        agent = httpx.AsyncClient(transport=transport, base_url="http://testserver")
        async with agent:
            await login(agent, await make.user("agent"))
            assert (await agent.get("/webhooks")).status_code == 403
