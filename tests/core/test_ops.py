"""Operations endpoints: health, readiness, metrics, API docs served without a CDN."""

from __future__ import annotations

from conftest import login


async def test_healthz_and_readyz(client) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["database"] == "ok"


async def test_api_docs_use_local_assets(client) -> None:
    page = await client.get("/api/docs")
    assert page.status_code == 200
    assert "/static/vendor/swagger-ui/swagger-ui-bundle.js" in page.text
    assert "cdn" not in page.text.lower()
    spec = (await client.get("/api/openapi.json")).json()
    assert "/api/v1/users" in spec["paths"]


async def test_metrics_for_admin_only(client, make) -> None:
    assert (await client.get("/metrics")).status_code == 401
    agent = await make.user("agent")
    await login(client, agent)
    assert (await client.get("/metrics")).status_code == 403
    admin = await make.user("admin")
    await login(client, admin)
    body = (await client.get("/metrics")).text
    assert "kefu_http_requests_total" in body


async def test_access_log_is_json_and_never_holds_query_strings(client, caplog) -> None:
    import logging

    with caplog.at_level(logging.INFO, logger="kefu.access"):
        await client.get("/password-reset/confirm?token=SECRET-RESET-TOKEN")
    records = [r for r in caplog.records if r.name == "kefu.access"]
    assert records and records[-1].path == "/password-reset/confirm"
    from kefu.core.logging import JsonFormatter

    line = JsonFormatter().format(records[-1])
    assert "SECRET-RESET-TOKEN" not in line
    assert '"status": 200' in line
