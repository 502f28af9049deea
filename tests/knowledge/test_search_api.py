"""Search through the API: visibility inside the index, freshness after publish/archive, search logs,
outcomes and the search-gap report, suggestions."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from conftest import login, unique


@pytest.fixture
async def clients(app, make):  # noqa: ANN001, ANN201
    out = {}
    for role in ("knowledge_manager", "agent", "customer"):
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")
        await login(client, await make.user(role))
        out[role] = client
    yield out
    for client in out.values():
        await client.aclose()


async def searchable(client: httpx.AsyncClient, query: str, article_id: int, present: bool = True) -> dict:
    """Waits (up to 10 s) for the index of the app to show or drop ``article_id`` for ``query``."""
    for _ in range(100):
        result = (await client.get("/api/v1/kb/search", params={"q": query, "limit": 50})).json()
        if (article_id in [h["article_id"] for h in result["hits"]]) == present:
            return result
        await asyncio.sleep(0.1)
    raise AssertionError(f"article {article_id} {'never appeared' if present else 'never left'} for {query!r}")


async def publish(client: httpx.AsyncClient, **article: object) -> int:
    created = await client.post("/api/v1/kb/articles", json=article)
    assert created.status_code == 201, created.text
    aid = created.json()["id"]
    assert (await client.post(f"/api/v1/kb/articles/{aid}/publish", json={})).status_code == 200
    return aid


async def test_search_respects_visibility_and_follows_changes(clients) -> None:
    km, agent, customer = clients["knowledge_manager"], clients["agent"], clients["customer"]
    word = unique("zq")  # a token no other test uses
    public = await publish(
        km,
        title=f"如何修改绑定手机号 {word}",
        body_markdown="登录手机银行，进入安全中心。",
        similar_questions=["换手机号了怎么办"],
        audience="public",
    )
    internal = await publish(
        km, title=f"内部：手机号修改风控规则 {word}", body_markdown="<b>仅内部</b>", audience="internal"
    )
    draft = (await km.post("/api/v1/kb/articles", json={"title": f"草稿 {word}"})).json()["id"]

    hits = (await searchable(agent, word, internal))["hits"]
    ids = [h["article_id"] for h in hits]
    assert public in ids and internal in ids and draft not in ids
    customer_ids = [h["article_id"] for h in (await searchable(customer, word, public))["hits"]]
    assert customer_ids == [public]  # never an internal article, never a draft

    top = next(h for h in hits if h["article_id"] == public)
    assert "<mark>" in top["title_html"]
    # Archiving removes it from every search.
    await km.post(f"/api/v1/kb/articles/{public}/archive")
    await searchable(agent, word, public, present=False)
    # A new version is found by its new words.
    await km.put(
        f"/api/v1/kb/articles/{internal}/draft",
        json={"title": f"内部：手机号修改风控规则 {word}", "body_markdown": "新增 人脸识别 步骤"},
    )
    await km.post(f"/api/v1/kb/articles/{internal}/publish", json={})
    await searchable(agent, f"{word} 人脸识别", internal)


async def test_highlights_escape_markup(clients) -> None:
    km, agent = clients["knowledge_manager"], clients["agent"]
    word = unique("hl")
    aid = await publish(km, title=f"<img src=x onerror=alert(1)> {word}", body_markdown=f"{word} 正文")
    hit = next(h for h in (await searchable(agent, word, aid))["hits"] if h["article_id"] == aid)
    assert "<img" not in hit["title_html"] and "&lt;img" in hit["title_html"]


async def test_search_log_outcome_and_gap_report(clients) -> None:
    km, agent = clients["knowledge_manager"], clients["agent"]
    missing = f"完全不存在的问题 {unique('gap')}"
    for _ in range(3):
        result = (await agent.get("/api/v1/kb/search", params={"q": missing})).json()
        assert result["hits"] == []
    word = unique("ok")
    aid = await publish(km, title=f"有答案的问题 {word}")
    await searchable(agent, word, aid)
    asked = f"有答案的问题 {word}"
    result = (await agent.get("/api/v1/kb/search", params={"q": asked})).json()
    assert result["hits"][0]["article_id"] == aid
    outcome = await agent.post(
        f"/api/v1/kb/search/{result['search_id']}/outcome", json={"article_id": aid, "solved": True}
    )
    assert outcome.status_code == 204
    # Someone else's search log is not yours to mark.
    assert (
        await km.post(f"/api/v1/kb/search/{result['search_id']}/outcome", json={"article_id": aid})
    ).status_code == 404
    gaps = (await km.get("/api/v1/kb/search-gaps", params={"days": 1})).json()
    row = next(g for g in gaps if g["query"] == missing.lower())
    assert row["searches"] == 3 and row["no_result"] == 3
    assert all(g["query"] != asked for g in gaps)  # solved: not a gap
    assert (await agent.get("/api/v1/kb/search-gaps")).status_code == 403


async def test_suggestions_and_bad_queries(clients) -> None:
    km, agent, customer = clients["knowledge_manager"], clients["agent"], clients["customer"]
    word = unique("sg")
    aid = await publish(
        km, title=f"{word} 信用卡年费怎么减免", similar_questions=[f"{word} 年费能免吗"], audience="public"
    )
    await searchable(agent, word, aid)
    suggestions = (await agent.get("/api/v1/kb/suggest", params={"q": word})).json()
    assert any(s["article_id"] == aid for s in suggestions)
    internal = await publish(km, title=f"{word} 内部减免口径")
    await searchable(agent, word, internal)
    seen = (await customer.get("/api/v1/kb/suggest", params={"q": word})).json()
    assert internal not in [s["article_id"] for s in seen]
    for bad in ("", "x" * 201):
        assert (await agent.get("/api/v1/kb/search", params={"q": bad})).status_code == 422
    assert (await agent.get("/api/v1/kb/search", params={"q": "a\x00b"})).status_code == 422
    assert (await agent.get("/api/v1/kb/search", params={"q": "'; DROP TABLE kb_articles; --"})).status_code == 200
