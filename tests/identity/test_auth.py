"""Sign-in, sessions, CSRF, throttling, API tokens and scopes, and the audit trail they leave."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import select, text, update

from conftest import TEST_PASSWORD, login
from kefu.core.audit import AuditEntry
from kefu.identity.models import LoginThrottle


async def test_session_cookie_flags_and_me(client, make) -> None:
    user = await make.user("agent")
    response = await client.post("/api/v1/auth/login", json={"login": user.username, "password": TEST_PASSWORD})
    assert response.status_code == 200
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie
    assert "secure" not in cookie  # base_url is http in tests; https sets Secure (test below)
    me = (await client.get("/api/v1/me")).json()
    assert me["username"] == user.username and me["roles"] == ["agent"]


async def test_secure_cookie_behind_https(app, make) -> None:
    from kefu.app import create_app

    https_app = create_app(app.state.settings.model_copy(update={"base_url": "https://kefu.example.com"}))
    user = await make.user("agent")
    transport = httpx.ASGITransport(app=https_app)
    async with httpx.AsyncClient(transport=transport, base_url="https://kefu.example.com") as c:
        response = await c.post("/api/v1/auth/login", json={"login": user.username, "password": TEST_PASSWORD})
    assert "secure" in response.headers["set-cookie"].lower()
    await https_app.state.engine.dispose()


async def test_login_is_case_insensitive_and_accepts_email(client, make) -> None:
    user = await make.user("agent")
    for login_name in (user.username.upper(), user.email):
        client.cookies.clear()
        r = await client.post("/api/v1/auth/login", json={"login": login_name, "password": TEST_PASSWORD})
        assert r.status_code == 200, login_name


async def test_wrong_password_and_unknown_user_look_the_same(client, make) -> None:
    user = await make.user("agent")
    wrong = await client.post("/api/v1/auth/login", json={"login": user.username, "password": "nope-nope-nope"})
    unknown = await client.post("/api/v1/auth/login", json={"login": "ghost-user", "password": "nope-nope-nope"})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json()["error"]["code"] == unknown.json()["error"]["code"] == "invalid_credentials"


async def test_throttle_after_ten_failures_then_backoff(client, make, db_factory) -> None:
    user = await make.user("agent")
    for _ in range(10):
        r = await client.post("/api/v1/auth/login", json={"login": user.username, "password": "bad-password-x"})
        assert r.status_code == 401
    # Now locked: even the right password is refused, with Retry-After, and the counter is durable.
    locked = await client.post("/api/v1/auth/login", json={"login": user.username, "password": TEST_PASSWORD})
    assert locked.status_code == 429
    assert int(locked.headers["retry-after"]) > 0
    assert locked.json()["error"]["code"] == "too_many_attempts"
    async with db_factory() as db, db.begin():
        row = await db.get(LoginThrottle, f"user:{user.username.lower()}")
        assert row.failures == 10 and row.locked_until is not None
        # The backoff ends (simulated by moving the lock into the past); a success clears the counter.
        await db.execute(update(LoginThrottle).where(LoginThrottle.key == row.key).values(locked_until=text("NULL")))
    ok = await client.post("/api/v1/auth/login", json={"login": user.username, "password": TEST_PASSWORD})
    assert ok.status_code == 200
    async with db_factory() as db:
        assert await db.get(LoginThrottle, f"user:{user.username.lower()}") is None
        failures = await db.scalar(
            select(text("count(*)"))
            .select_from(AuditEntry)
            .where(AuditEntry.action == "auth.login_failed", AuditEntry.object_id == str(user.id))
        )
        assert failures == 10


async def test_csrf_required_for_cookie_writes(client, make) -> None:
    user = await make.user("agent")
    await login(client, user)
    token = client.headers.pop("X-CSRF-Token")
    refused = await client.patch("/api/v1/me", json={"time_zone": "UTC"})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "csrf_failed"
    wrong = await client.patch("/api/v1/me", json={"time_zone": "UTC"}, headers={"X-CSRF-Token": "x" + token})
    assert wrong.status_code == 403
    ok = await client.patch("/api/v1/me", json={"time_zone": "UTC"}, headers={"X-CSRF-Token": token})
    assert ok.status_code == 200 and ok.json()["time_zone"] == "UTC"


async def test_login_form_needs_the_double_submit_token(client, make) -> None:
    user = await make.user("agent")
    form = {"login": user.username, "password": TEST_PASSWORD}
    assert (await client.post("/login", data=form)).status_code == 403
    page = await client.get("/login")
    csrf = client.cookies.get("kefu_csrf")
    assert csrf and csrf in page.text
    ok = await client.post("/login", data={**form, "csrf_token": csrf})
    assert ok.status_code == 303 and ok.headers["location"] == "/"


async def test_login_redirect_is_same_site_only(client, make) -> None:
    user = await make.user("agent")
    await client.get("/login")
    csrf = client.cookies.get("kefu_csrf")
    for evil in ("https://evil.example/", "//evil.example/x", "/\\evil.example"):
        client.cookies.delete("kefu_session")
        r = await client.post(
            "/login", data={"login": user.username, "password": TEST_PASSWORD, "csrf_token": csrf, "next": evil}
        )
        assert r.headers["location"] == "/", evil


async def test_logout_ends_the_session_everywhere(client, make) -> None:
    user = await make.user("agent")
    await login(client, user)
    cookie = client.cookies.get("kefu_session")
    assert (await client.post("/api/v1/auth/logout")).status_code == 204
    client.cookies.set("kefu_session", cookie)  # a stolen copy of the cookie is dead too
    assert (await client.get("/api/v1/me")).status_code == 401


async def test_disable_and_password_change_end_sessions(client, make, app) -> None:
    admin, agent = await make.user("admin"), await make.user("agent")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as agent_client:
        await login(agent_client, agent)
        await login(client, admin)
        assert (await client.post(f"/api/v1/users/{agent.id}/disable")).status_code == 200
        assert (await agent_client.get("/api/v1/me")).status_code == 401
        relogin = await agent_client.post(
            "/api/v1/auth/login", json={"login": agent.username, "password": TEST_PASSWORD}
        )
        assert relogin.status_code == 401

    other = await make.user("agent")
    async with (
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as c1,
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as c2,
    ):
        await login(c1, other)
        await login(c2, other)
        changed = await c1.post(
            "/api/v1/me/password", json={"current_password": TEST_PASSWORD, "new_password": "brand-new-password"}
        )
        assert changed.status_code == 204
        assert (await c2.get("/api/v1/me")).status_code == 401


async def test_api_token_scopes_expiry_and_revocation(client, make, app) -> None:
    admin = await make.user("admin")
    read_only = await make.token(admin, ("user:read",))
    bearer = {"Authorization": f"Bearer {read_only}"}
    assert (await client.get("/api/v1/users", headers=bearer)).status_code == 200
    write = await client.post(
        "/api/v1/users", headers=bearer, json={"username": "scoped-out", "display_name": "x", "roles": ["agent"]}
    )
    assert write.status_code == 403  # the user may, the token may not
    assert (await client.get("/api/v1/teams", headers=bearer)).status_code == 403

    # Token writes need no CSRF token (no ambient credentials); role rules still apply.
    agent = await make.user("agent")
    agent_all = await make.token(agent, ("*",))
    r = await client.post("/api/v1/teams", headers={"Authorization": f"Bearer {agent_all}"}, json={"name": "nope"})
    assert r.status_code == 403

    await login(client, admin)
    made = (await client.post("/api/v1/me/tokens", json={"name": "ci", "scopes": ["team:read"]})).json()
    assert made["token"].startswith("kefu_") and made["prefix"] == made["token"][:11]
    listed = (await client.get("/api/v1/me/tokens")).json()
    assert all("token" not in t for t in listed)  # shown once, never again
    bearer2 = {"Authorization": f"Bearer {made['token']}"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as anon:
        assert (await anon.get("/api/v1/teams", headers=bearer2)).status_code == 200
        assert (await client.delete(f"/api/v1/me/tokens/{made['id']}")).status_code == 200
        assert (await anon.get("/api/v1/teams", headers=bearer2)).status_code == 401
        assert (await anon.get("/api/v1/teams", headers={"Authorization": "Basic abc"})).status_code == 401
        assert (await anon.get("/api/v1/teams", headers={"Authorization": "Bearer kefu_nope"})).status_code == 401


async def test_someone_elses_token_is_not_found(client, make) -> None:
    owner, other = await make.user("agent"), await make.user("agent")
    await login(client, owner)
    token_id = (await client.post("/api/v1/me/tokens", json={"name": "x", "scopes": ["team:read"]})).json()["id"]
    await login(client, other)
    assert (await client.delete(f"/api/v1/me/tokens/{token_id}")).status_code == 404


@pytest.mark.parametrize("statement", ["UPDATE audit_log SET action = 'x'", "DELETE FROM audit_log"])
async def test_audit_log_is_append_only_in_the_database(db_factory, make, statement: str) -> None:
    await make.user("agent")  # guarantees at least one entry
    with pytest.raises(Exception, match="append-only"):
        async with db_factory() as db, db.begin():
            await db.execute(text(statement))


async def test_admin_actions_are_audited_with_who_and_where(client, make) -> None:
    admin = await make.user("admin")
    await login(client, admin)
    team = (await client.post("/api/v1/teams", json={"name": "审计测试组"})).json()
    entries = (await client.get("/api/v1/audit", params={"object_type": "team"})).json()
    entry = next(e for e in entries if e["object_id"] == str(team["id"]))
    assert entry["action"] == "team.create"
    assert entry["actor_user_id"] == admin.id and entry["actor_name"] == admin.username
    assert entry["ip"] == "127.0.0.1"
