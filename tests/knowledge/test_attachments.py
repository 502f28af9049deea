"""Article attachments: stored once in the database, served only as safe downloads, size-capped,
under the same visibility as their article."""

from __future__ import annotations

import httpx
import pytest

from conftest import login


@pytest.fixture
async def clients(app, make):  # noqa: ANN001, ANN201
    out = {}
    for key, role in (("km", "knowledge_manager"), ("agent", "agent"), ("agent2", "agent"), ("customer", "customer")):
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")
        await login(client, await make.user(role))
        out[key] = client
    yield out
    for client in out.values():
        await client.aclose()


async def article(client: httpx.AsyncClient, audience: str = "public", publish: bool = True) -> int:
    aid = (await client.post("/api/v1/kb/articles", json={"title": "附件测试", "audience": audience})).json()["id"]
    if publish:
        await client.post(f"/api/v1/kb/articles/{aid}/publish", json={})
    return aid


async def test_upload_list_download_and_remove(clients) -> None:
    km, customer = clients["km"], clients["customer"]
    aid = await article(km)
    pdf = b"%PDF-1.4 fake but fine"
    # A raw multipart body: httpx would percent-escape the control characters we want to send.
    raw = (
        b'--B\r\nContent-Disposition: form-data; name="file"; filename="../../etc/\xe6\x8c\x82\xe5\xa4\xb1'
        b'\x07\xe6\xb5\x81\xe7\xa8\x8b\t.pdf"\r\nContent-Type: application/pdf\r\n\r\n' + pdf + b"\r\n--B--\r\n"
    )
    uploaded = await km.post(
        f"/api/v1/kb/articles/{aid}/attachments",
        content=raw,
        headers={"content-type": "multipart/form-data; boundary=B"},
    )
    assert uploaded.status_code == 201, uploaded.text
    meta = uploaded.json()
    assert meta["filename"] == "挂失流程.pdf"  # no path, no control characters
    assert meta["content_type"] == "application/pdf" and meta["size"] == len(pdf)
    listed = (await customer.get(f"/api/v1/kb/articles/{aid}/attachments")).json()
    assert [a["id"] for a in listed] == [meta["id"]]
    download = await customer.get(f"/api/v1/kb/articles/{aid}/attachments/{meta['id']}")
    assert download.content == pdf
    assert download.headers["content-disposition"].startswith("attachment;")
    assert "UTF-8''%E6%8C%82" in download.headers["content-disposition"]
    assert download.headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in download.headers["content-security-policy"]
    assert (await km.delete(f"/api/v1/kb/articles/{aid}/attachments/{meta['id']}")).status_code == 204
    assert (await customer.get(f"/api/v1/kb/articles/{aid}/attachments/{meta['id']}")).status_code == 404


@pytest.mark.parametrize("name", ["page.html", "image.svg", "data.xml", "script.js", "noextension"])
async def test_active_content_is_never_served_as_itself(clients, name: str) -> None:
    km = clients["km"]
    aid = await article(km)
    body = b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>"
    meta = (await km.post(f"/api/v1/kb/articles/{aid}/attachments", files={"file": (name, body, "text/html")})).json()
    download = await km.get(f"/api/v1/kb/articles/{aid}/attachments/{meta['id']}")
    assert download.headers["content-type"] == "application/octet-stream"
    assert download.headers["content-disposition"].startswith("attachment;")


async def test_visibility_and_rights_follow_the_article(clients) -> None:
    km, agent, agent2, customer = clients["km"], clients["agent"], clients["agent2"], clients["customer"]
    internal = await article(km, audience="internal")
    meta = (await km.post(f"/api/v1/kb/articles/{internal}/attachments", files={"file": ("a.txt", b"x")})).json()
    assert (await customer.get(f"/api/v1/kb/articles/{internal}/attachments")).status_code == 404
    assert (await customer.get(f"/api/v1/kb/articles/{internal}/attachments/{meta['id']}")).status_code == 404
    assert (await agent.get(f"/api/v1/kb/articles/{internal}/attachments/{meta['id']}")).status_code == 200
    # An agent may attach to their own draft, not to someone else's article.
    own = await article(agent, publish=False)
    assert (
        await agent.post(f"/api/v1/kb/articles/{own}/attachments", files={"file": ("b.txt", b"y")})
    ).status_code == 201
    refused = await agent2.post(f"/api/v1/kb/articles/{internal}/attachments", files={"file": ("c.txt", b"z")})
    assert refused.status_code == 403
    assert (await agent2.delete(f"/api/v1/kb/articles/{internal}/attachments/{meta['id']}")).status_code == 403
    assert (
        await customer.post(f"/api/v1/kb/articles/{internal}/attachments", files={"file": ("d.txt", b"z")})
    ).status_code == 403


async def test_size_cap_and_bad_uploads(app, clients) -> None:
    km = clients["km"]
    aid = await article(km)
    limit = app.state.settings.kb_attachment_max_bytes
    too_big = await km.post(
        f"/api/v1/kb/articles/{aid}/attachments", files={"file": ("big.pdf", b"x" * (limit + 1), "application/pdf")}
    )
    assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "payload_too_large"
    just_fits = await km.post(
        f"/api/v1/kb/articles/{aid}/attachments",
        files={"file": ("fits.pdf", b"x" * (3 * 1024 * 1024), "application/pdf")},
    )
    assert just_fits.status_code == 201  # larger than other request bodies may be
    empty = await km.post(f"/api/v1/kb/articles/{aid}/attachments", files={"file": ("empty.txt", b"")})
    assert empty.status_code == 422
    missing = await km.post(f"/api/v1/kb/articles/{aid}/attachments", data={"nofile": "1"})
    assert missing.status_code == 422
    listed = (await km.get(f"/api/v1/kb/articles/{aid}/attachments")).json()
    assert [a["filename"] for a in listed] == ["fits.pdf"]  # nothing else was written


async def test_attachments_on_the_article_page(clients) -> None:
    km = clients["km"]
    aid = await article(km)
    page = await km.get(f"/kb/articles/{aid}", headers={"accept": "text/html"})
    assert 'id="kb-attach-form"' in page.text
    token = km.headers["X-CSRF-Token"]
    attached = await km.post(
        f"/kb/articles/{aid}/attachments", files={"file": ("流程图.png", b"\x89PNG...")}, data={"csrf_token": token}
    )
    assert attached.status_code == 303 and attached.headers["location"].endswith("?done=attached")
    page = await km.get(f"/kb/articles/{aid}", headers={"accept": "text/html"})
    assert "流程图.png" in page.text
    no_file = await km.post(
        f"/kb/articles/{aid}/attachments", data={"csrf_token": token}, headers={"accept": "text/html"}
    )
    assert no_file.status_code == 422
    customer_page = await clients["customer"].get(f"/api/v1/kb/articles/{aid}/attachments")
    assert [a["filename"] for a in customer_page.json()] == ["流程图.png"]
