"""The web shell in a real browser: headless Chromium (Debian's, no downloaded browsers) driven by
Playwright's sync API against ``kefu serve`` running in another process on the test database.

An administrator signs in through the form, walks and uses every admin page, switches the language and
signs out; an agent does not get the admin pages. Throughout, the browser talks to 127.0.0.1 only (all
front-end code is served by kefu itself) and the console stays free of errors.

Accounts are created before the browser starts, by a module-scoped *async* fixture that uses the test
``Factory`` on the app's (session) event loop. The browser part is a plain sync test: Playwright's sync
API refuses to run inside a running event loop, and in a sync test pytest-asyncio's loop is idle.
Ordering the fixtures (``browser`` depends on ``accounts``) keeps the two loops from ever overlapping.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from browser_support import BROWSER_MARKS, CHROMIUM, LAUNCH_ARGS, Watch
from conftest import TEST_PASSWORD, Factory, LiveServer, unique

pytestmark = BROWSER_MARKS
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is missing: pip install -e '.[test]'")
expect = sync_api.expect
expect.set_options(timeout=10_000)


@dataclass
class Accounts:
    admin_username: str
    admin_display_name: str
    agent_username: str


@pytest.fixture(scope="module")
async def accounts(app) -> Accounts:  # noqa: ANN001
    make = Factory(app)
    admin = await make.user("admin")
    agent = await make.user("agent")
    return Accounts(admin.username, admin.display_name, agent.username)


@pytest.fixture(scope="module")
def browser(accounts: Accounts, live_server: LiveServer) -> Iterator[sync_api.Browser]:
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def watched(browser: sync_api.Browser, live_server: LiveServer) -> Iterator[tuple[sync_api.Page, Watch]]:
    """A fresh browser context (no cookies) in Chinese, with a page whose traffic and console are watched."""
    context = browser.new_context(locale="zh-CN", base_url=live_server.url)
    context.set_default_timeout(10_000)  # actions auto-wait up to this; a broken page fails fast
    page = context.new_page()
    watch = Watch()
    watch.attach(context, page)
    try:
        yield page, watch
    finally:
        context.close()


def sign_in(page: sync_api.Page, username: str) -> None:
    page.goto("/login")
    expect(page.get_by_role("heading", name="登录")).to_be_visible()
    page.get_by_label("用户名或邮箱").fill(username)
    page.get_by_label("密码", exact=True).fill(TEST_PASSWORD)
    page.get_by_role("button", name="登录").click()
    expect(page).to_have_url(re.compile(r"/$"))


def test_admin_walks_the_admin_pages(watched: tuple[sync_api.Page, Watch], accounts: Accounts) -> None:
    page, watch = watched
    team_name = unique("班组")
    skill_name = unique("售后")
    new_username = unique("agent")

    # --- sign in through the form ----------------------------------------------------------------
    sign_in(page, accounts.admin_username)
    expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    expect(page.get_by_role("heading", name=f"欢迎，{accounts.admin_display_name}")).to_be_visible()
    nav = page.get_by_role("navigation", name="主导航")
    for label in ("首页", "用户", "班组", "技能", "审计日志", "API 文档"):
        expect(nav.get_by_role("link", name=label, exact=True)).to_be_visible()
    # The vendored front-end code is loaded and running, and the live-update socket is connected.
    page.wait_for_function("typeof window.htmx === 'object' && typeof window.Alpine === 'object'")
    expect(page.locator("#live-status")).to_have_class(re.compile(r"\bon\b"))
    echarts = page.request.get("/static/vendor/echarts/echarts.min.js")
    assert echarts.ok and "echarts" in echarts.text()[:5000].lower()

    # --- users list ------------------------------------------------------------------------------
    nav.get_by_role("link", name="用户", exact=True).click()
    expect(page).to_have_url(re.compile(r"/admin/users$"))
    expect(page.get_by_role("heading", name="用户", exact=True)).to_be_visible()
    # The test database holds hundreds of users by now: find ours with the search, as an admin would.
    page.get_by_role("search").get_by_label("搜索", exact=True).fill(accounts.admin_username)
    page.get_by_role("search").get_by_role("button", name="搜索").click()
    expect(page.locator("#users-table")).to_contain_text(accounts.admin_username)

    # --- teams: create one -----------------------------------------------------------------------
    nav.get_by_role("link", name="班组", exact=True).click()
    expect(page.get_by_role("heading", name="班组", exact=True)).to_be_visible()
    create = page.locator("#team-create")
    create.get_by_label("名称").fill(team_name)
    create.get_by_label("说明").fill("售后服务一组")
    create.get_by_role("button", name="创建班组").click()
    expect(page).to_have_url(re.compile(r"/admin/teams/\d+\?saved=1$"))
    expect(page.get_by_role("heading", name=f"班组: {team_name}")).to_be_visible()
    team_url = page.url.split("?")[0]
    team_id = int(team_url.rsplit("/", 1)[1])

    # --- skills: create one ----------------------------------------------------------------------
    nav.get_by_role("link", name="技能", exact=True).click()
    create = page.locator("#skill-create")
    create.get_by_label("名称").fill(skill_name)
    create.get_by_label("说明").fill("退换货与保修")
    create.get_by_role("button", name="创建技能").click()
    expect(page).to_have_url(re.compile(r"/admin/skills\?saved=1$"))
    expect(page.get_by_role("status")).to_have_text("已保存。")
    expect(page.locator("#skills-table tr", has_text=skill_name)).to_contain_text("退换货与保修")

    # --- users: create one with roles and a team, then set skills and languages -------------------
    nav.get_by_role("link", name="用户", exact=True).click()
    page.get_by_role("link", name="新建用户").click()
    expect(page).to_have_url(re.compile(r"/admin/users/new$"))
    form = page.locator("#user-form")
    form.get_by_label("用户名", exact=True).fill(new_username)
    form.get_by_label("初始密码").fill(TEST_PASSWORD)
    form.get_by_label("显示名称").fill("王小明")
    form.get_by_label("邮箱").fill(f"{new_username}@example.test")
    form.get_by_label("坐席", exact=True).check()
    form.get_by_label("主管", exact=True).check()
    form.get_by_label(team_name, exact=True).check()
    form.get_by_role("button", name="保存", exact=True).click()
    expect(page).to_have_url(re.compile(r"/admin/users/\d+\?saved=1$"))
    expect(page.get_by_role("heading", name=f"用户: {new_username}")).to_be_visible()
    expect(page.get_by_role("status")).to_have_text("已保存。")
    form = page.locator("#user-form")
    expect(form.get_by_label("坐席", exact=True)).to_be_checked()
    expect(form.get_by_label("主管", exact=True)).to_be_checked()
    expect(form.get_by_label("管理员", exact=True)).not_to_be_checked()
    expect(form.get_by_label(team_name, exact=True)).to_be_checked()
    user_url = page.url.split("?")[0]
    user_id = int(user_url.rsplit("/", 1)[1])

    skills = page.locator("#skills-form")
    skill_id = int(skills.get_by_label(skill_name, exact=True).get_attribute("name").removeprefix("skill_"))
    skills.get_by_label(skill_name, exact=True).select_option("4")
    skills.get_by_label("服务语言").fill("zh-CN, en")
    skills.get_by_role("button", name="保存技能").click()
    expect(page).to_have_url(re.compile(re.escape(user_url) + r"\?saved=1$"))
    skills = page.locator("#skills-form")
    expect(skills.get_by_label(skill_name, exact=True)).to_have_value("4")
    # Languages are a set: the page lists them in a stable order of its own.
    expect(skills.get_by_label("服务语言")).to_have_value(re.compile(r"^(zh-CN, en|en, zh-CN)$"))

    nav.get_by_role("link", name="用户", exact=True).click()
    page.get_by_role("search").get_by_label("搜索", exact=True).fill(new_username)
    page.get_by_role("search").get_by_role("button", name="搜索").click()
    expect(page).to_have_url(re.compile(rf"/admin/users\?q={new_username}$"))
    expect(page.locator("#users-table tbody tr")).to_have_count(1)
    row = page.locator("#users-table tr", has_text=new_username)
    expect(row).to_contain_text("王小明")
    expect(row).to_contain_text("坐席")
    expect(row).to_contain_text("主管")
    expect(row).to_contain_text(team_name)
    row.get_by_role("link", name=new_username).click()
    expect(page).to_have_url(user_url)

    # --- teams: add members ----------------------------------------------------------------------
    nav.get_by_role("link", name="班组", exact=True).click()
    page.locator("#teams-table").get_by_role("link", name=team_name).click()
    expect(page).to_have_url(team_url)
    team = page.locator("#team-form")
    expect(team.get_by_label(f"成员 {new_username}")).to_be_checked()  # joined when created
    team.get_by_label(f"成员 {accounts.agent_username}").check()
    team.get_by_label(f"组长 {new_username}").check()
    team.get_by_role("button", name="保存", exact=True).click()
    expect(page).to_have_url(re.compile(re.escape(team_url) + r"\?saved=1$"))
    team = page.locator("#team-form")
    expect(team.get_by_label(f"成员 {accounts.agent_username}")).to_be_checked()
    expect(team.get_by_label(f"组长 {new_username}")).to_be_checked()
    expect(team.get_by_label(f"组长 {accounts.agent_username}")).not_to_be_checked()
    nav.get_by_role("link", name="班组", exact=True).click()
    expect(page.locator("#teams-table tr", has_text=team_name).locator("td").nth(2)).to_have_text("2")

    # --- audit log shows what was done -----------------------------------------------------------
    nav.get_by_role("link", name="审计日志", exact=True).click()
    expect(page.get_by_role("heading", name="审计日志")).to_be_visible()
    entries = page.locator("#audit-table tbody tr").filter(has_text=accounts.admin_username)
    for action, obj in (
        ("auth.login", "user"),
        ("team.create", f"team {team_id}"),
        ("skill.create", f"skill {skill_id}"),
        ("user.create", f"user {user_id}"),
        ("user.skills_set", f"user {user_id}"),
        ("team.update", f"team {team_id}"),
    ):
        found = entries.filter(has=page.locator("code", has_text=re.compile(rf"^{re.escape(action)}$")))
        expect(found.filter(has=page.get_by_role("cell", name=re.compile(rf"^{obj}\b"))).first).to_be_visible()
    expect(entries.filter(has_text="user.create").filter(has_text=new_username)).to_have_count(1)

    # --- language: English, then back to Chinese -------------------------------------------------
    page.locator("#locale-switch").select_option("en")
    expect(page.locator("html")).to_have_attribute("lang", "en")
    expect(page).to_have_url(re.compile(r"/admin/audit$"))
    nav = page.get_by_role("navigation", name="Main")
    for label in ("Home", "Users", "Teams", "Skills", "Audit log"):
        expect(nav.get_by_role("link", name=label, exact=True)).to_be_visible()
    expect(page.get_by_role("heading", name="Audit log")).to_be_visible()
    expect(page.get_by_role("columnheader", name="When (UTC)")).to_be_visible()
    nav.get_by_role("link", name="Users", exact=True).click()
    expect(page.get_by_role("link", name="New user")).to_be_visible()
    page.get_by_role("search").get_by_label("Search", exact=True).fill(new_username)
    page.get_by_role("search").get_by_role("button", name="Search").click()
    expect(page.locator("#users-table tr", has_text=new_username)).to_contain_text("supervisor")
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()

    page.locator("#locale-switch").select_option("zh_CN")
    expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    expect(page).to_have_url(re.compile(r"/admin/users\?q=" + re.escape(new_username) + "$"))
    nav = page.get_by_role("navigation", name="主导航")
    expect(nav.get_by_role("link", name="用户", exact=True)).to_be_visible()
    expect(page.get_by_role("link", name="新建用户")).to_be_visible()

    # --- API docs: Swagger UI from kefu's own static files ---------------------------------------
    nav.get_by_role("link", name="API 文档", exact=True).click()
    expect(page).to_have_url(re.compile(r"/api/docs$"))
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("kefu")
    page.go_back()
    expect(page).to_have_url(re.compile(r"/admin/users\?q=" + re.escape(new_username) + "$"))

    # --- sign out: the admin pages send you to the sign-in page --------------------------------
    page.get_by_role("button", name="退出登录").click()
    expect(page).to_have_url(re.compile(r"/login$"))
    expect(page.get_by_role("button", name="登录")).to_be_visible()
    page.goto("/admin/users")
    expect(page).to_have_url(re.compile(r"/login\?next=/admin/users$"))
    expect(page.get_by_role("heading", name="登录")).to_be_visible()
    expect(page.get_by_role("navigation", name="主导航").get_by_role("link")).to_have_count(0)
    # Signing in again goes back to where the visitor was sent from.
    page.get_by_label("用户名或邮箱").fill(accounts.admin_username)
    page.get_by_label("密码", exact=True).fill(TEST_PASSWORD)
    page.get_by_role("button", name="登录").click()
    expect(page).to_have_url(re.compile(r"/admin/users$"))
    expect(page.get_by_role("heading", name="用户", exact=True)).to_be_visible()

    watch.assert_clean()


def test_agent_gets_no_admin_pages(
    watched: tuple[sync_api.Page, Watch], accounts: Accounts, live_server: LiveServer
) -> None:
    page, watch = watched
    forbidden = f"{live_server.url}/admin/users/new"
    watch.expected_error_urls.add(forbidden)

    sign_in(page, accounts.agent_username)
    expect(page.locator(".tag", has_text="坐席")).to_be_visible()
    nav = page.get_by_role("navigation", name="主导航")
    expect(nav.get_by_role("link", name="首页", exact=True)).to_be_visible()
    for label in ("用户", "审计日志"):
        expect(nav.get_by_role("link", name=label, exact=True)).to_have_count(0)
    expect(page.get_by_role("heading", name="系统管理")).to_have_count(0)

    response = page.goto(forbidden)
    assert response is not None and response.status == 403
    expect(page.get_by_role("heading", name="403")).to_be_visible()
    expect(page.get_by_text("您无权执行此操作。")).to_be_visible()
    expect(page.get_by_role("link", name="返回首页")).to_be_visible()
    expect(page.locator("#user-form")).to_have_count(0)

    watch.assert_clean()
