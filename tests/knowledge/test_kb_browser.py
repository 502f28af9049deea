"""The knowledge pages in a real browser (headless Debian Chromium driven by Playwright's sync API) against
``kefu serve`` in another process, as tests/web/test_browser.py does for the admin pages.

An agent contributes an article through the form and submits it to a knowledge manager; the knowledge
manager approves and publishes it from the review queue; the agent then searches, sees suggestions while
typing and the highlighted hit, and opens the article. Throughout, the browser talks to 127.0.0.1 only
and the console stays free of errors.

Accounts are made before the browser starts by a module-scoped async fixture on the app's event loop; the
browser part is a plain sync test (Playwright's sync API refuses to run inside a running loop).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest

from browser_support import BROWSER_MARKS, CHROMIUM, LAUNCH_ARGS, Watch
from conftest import TEST_PASSWORD, Factory, LiveServer, unique

pytestmark = BROWSER_MARKS
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is missing: pip install -e '.[test]'")
expect = sync_api.expect
expect.set_options(timeout=10_000)
INDEX_WAIT_SECONDS = 15  # the server's index follows a change within ~0.5 s; this only bounds a broken one


@dataclass
class Accounts:
    agent_username: str
    km_username: str
    km_display_name: str


@pytest.fixture(scope="module")
async def accounts(app) -> Accounts:  # noqa: ANN001
    make = Factory(app)
    agent = await make.user("agent")
    km = await make.user("knowledge_manager")
    return Accounts(agent.username, km.username, km.display_name)


@pytest.fixture(scope="module")
def browser(
    accounts: Accounts, published_article: tuple[int, str], live_server: LiveServer
) -> Iterator[sync_api.Browser]:
    # Depends on every async fixture of the module: they must run before Playwright's loop starts.
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@contextmanager
def signed_in(browser: sync_api.Browser, live_server: LiveServer, username: str) -> Iterator[sync_api.Page]:
    """A fresh context (own cookies) in Chinese, signed in through the form, traffic and console watched;
    checked clean when the block ends."""
    context = browser.new_context(locale="zh-CN", base_url=live_server.url)
    context.set_default_timeout(10_000)
    page = context.new_page()
    watch = Watch()
    watch.attach(context, page)
    try:
        page.goto("/login")
        page.get_by_label("用户名或邮箱").fill(username)
        page.get_by_label("密码", exact=True).fill(TEST_PASSWORD)
        page.get_by_role("button", name="登录").click()
        expect(page).to_have_url(re.compile(r"/$"))
        yield page
        watch.assert_clean()
    finally:
        context.close()


def search_until_found(page: sync_api.Page, query: str, title: str) -> sync_api.Locator:
    """Searches through the form until the hit shows (the server's index refreshes in the background)."""
    deadline = time.monotonic() + INDEX_WAIT_SECONDS
    while True:
        box = page.get_by_role("searchbox", name="搜索知识库")
        box.fill(query)
        box.press("Enter")
        expect(page).to_have_url(re.compile(r"/kb\?q="))
        results = page.locator("#kb-results")
        try:
            expect(results).to_contain_text(title, timeout=1_000)
            return results
        except AssertionError:
            if time.monotonic() > deadline:
                raise


def test_contribution_is_reviewed_published_and_found(
    browser: sync_api.Browser, live_server: LiveServer, accounts: Accounts
) -> None:
    word = unique("kbb")
    title = f"{word} 信用卡挂失怎么办"

    # --- the agent contributes through the form and submits it to the knowledge manager ----------------
    with signed_in(browser, live_server, accounts.agent_username) as page:
        page.get_by_role("navigation", name="主导航").get_by_role("link", name="知识库", exact=True).click()
        expect(page).to_have_url(re.compile(r"/kb$"))
        expect(page.get_by_role("heading", name="知识库", exact=True)).to_be_visible()
        page.wait_for_function("typeof window.htmx === 'object' && typeof window.Alpine === 'object'")
        page.get_by_role("link", name="贡献知识").click()
        expect(page).to_have_url(re.compile(r"/kb/articles/new$"))

        form = page.locator("#kb-article-form")
        form.get_by_label("标题（标准问法）").fill(title)
        form.get_by_label("答案（Markdown 格式）").fill("拨打热线 **95588** 或在手机银行挂失。")
        form.get_by_label("相似问法（每行一个）").fill("卡丢了怎么办\n信用卡丢失")
        form.get_by_label("标签（用逗号分隔）").fill("信用卡，挂失")
        # The case fields show only for case articles (Alpine on the page).
        case_fields = page.locator("#kb-case-fields")
        expect(case_fields).to_be_hidden()
        form.get_by_label("类型").select_option("case")
        expect(case_fields).to_be_visible()
        form.get_by_label("类型").select_option("faq")
        expect(case_fields).to_be_hidden()
        form.get_by_label("提交给审核人").select_option(label=accounts.km_display_name)
        form.get_by_role("button", name="创建文章").click()

        expect(page).to_have_url(re.compile(r"/kb/articles/\d+\?done=submitted$"))
        expect(page.get_by_role("status")).to_have_text("已提交审核。")
        expect(page.get_by_role("heading", name=title)).to_be_visible()
        banner = page.locator("#kb-working")
        expect(banner).to_contain_text("审核中")
        expect(banner).to_contain_text(f"审核人：{accounts.km_display_name}")
        expect(page.locator("#kb-body strong")).to_have_text("95588")
        expect(page.locator("#kb-publish-form")).to_have_count(0)  # agents do not publish
        article_path = urlsplit(page.url).path

        page.get_by_role("navigation", name="主导航").get_by_role("link", name="知识库", exact=True).click()
        expect(page.locator("#kb-mine tr", has_text=title)).to_contain_text("审核中")

    # --- the knowledge manager approves and publishes from the review queue ---------------------------
    with signed_in(browser, live_server, accounts.km_username) as page:
        page.get_by_role("navigation", name="主导航").get_by_role("link", name="知识库", exact=True).click()
        expect(page.locator("#kb-to-review")).to_contain_text(title)
        page.get_by_role("navigation", name="主导航").get_by_role("link", name="审核队列").click()
        expect(page).to_have_url(re.compile(r"/kb/review$"))
        page.locator("#kb-queue-review tr", has_text=title).get_by_role("button", name="通过").click()
        expect(page).to_have_url(re.compile(r"/kb/review\?done=approved$"))
        expect(page.get_by_role("status")).to_have_text("审核已通过。")
        expect(page.locator("#kb-queue-review")).not_to_contain_text(title)
        page.locator("#kb-queue-approved tr", has_text=title).get_by_role("button", name="立即发布").click()
        expect(page).to_have_url(re.compile(r"/kb/review\?done=published$"))
        expect(page.get_by_role("status")).to_have_text("已发布。")
        expect(page.locator("#kb-queue-approved")).not_to_contain_text(title)

    # --- the agent finds it: highlighted hit, suggestions while typing, the article --------------------
    with signed_in(browser, live_server, accounts.agent_username) as page:
        page.goto("/kb")
        results = search_until_found(page, word, title)
        hit = results.locator("li", has_text=title)
        expect(hit.locator("mark").first).to_have_text(re.compile(re.escape(word), re.I))
        expect(hit.get_by_role("link")).to_have_attribute("href", article_path)

        box = page.get_by_role("searchbox", name="搜索知识库")
        box.fill("")
        box.press_sequentially(word[:-2])
        suggestions = page.locator("#kb-suggestions")
        expect(suggestions.get_by_role("link", name=title)).to_be_visible()
        suggestions.get_by_role("link", name=title).click()

        expect(page).to_have_url(re.compile(re.escape(article_path) + "$"))
        expect(page.get_by_role("heading", name=title)).to_be_visible()
        expect(page.locator("#kb-body strong")).to_have_text("95588")
        expect(page.locator("#kb-similar")).to_contain_text("卡丢了怎么办")
        expect(page.locator("#kb-tags")).to_contain_text("挂失")
        expect(page.locator("#kb-working")).to_have_count(0)
        expect(page.locator("#kb-version")).to_have_text("版本 1")


@pytest.fixture(scope="module")
async def published_article(app, accounts: Accounts) -> tuple[int, str]:  # noqa: ANN001
    """A live article by the knowledge manager, made before the browser starts."""
    from sqlalchemy import select

    from kefu.core.policy import Principal
    from kefu.identity.models import User
    from kefu.knowledge import service

    word = unique("flow")
    title = f"{word} 信用卡年费怎么收"
    async with app.state.session_factory() as db, db.begin():
        km = await db.scalar(select(User).where(User.username == accounts.km_username))
        principal = Principal(user_id=km.id, username=km.username, roles=km.role_names, via="session")
        view = await service.create_article(
            db, principal, service.Content(title=title, body_markdown="年费 200 元。"), service.Placement()
        )
        await service.publish(db, principal, app.state.settings, view.article.id)
    return view.article.id, word


def test_feedback_becomes_a_published_revision_the_agent_sees_as_updated(
    browser: sync_api.Browser, live_server: LiveServer, accounts: Accounts, published_article: tuple[int, str]
) -> None:
    """The issue's flow: search -> read -> feedback -> the manager accepts -> the revision is published ->
    the agent sees it in "recently updated" and acknowledges it."""
    article_id, word = published_article
    subject = f"年费标准已变 {word}"

    # --- the agent finds the article and suggests a correction ---------------------------------------
    with signed_in(browser, live_server, accounts.agent_username) as page:
        page.goto("/kb")
        results = search_until_found(page, word, "信用卡年费怎么收")
        results.locator(f'a[href="/kb/articles/{article_id}"]').first.click()
        expect(page.locator("#kb-body")).to_contain_text("年费 200 元")
        form = page.locator("#kb-feedback-form")
        form.locator('select[name="kind"]').select_option("suggestion")
        form.locator('input[name="subject"]').fill(subject)
        form.locator('textarea[name="body"]').fill("<script>alert(1)</script>今年起年费改为 300 元，请更新。")
        form.locator('button[type="submit"]').click()
        expect(page).to_have_url(re.compile(r"/kb/feedback/\d+"))
        expect(page.locator("main")).to_contain_text("今年起年费改为 300 元")
        thread_path = urlsplit(page.url).path

    # --- the knowledge manager accepts it, edits the opened draft and publishes with acknowledgement ----
    with signed_in(browser, live_server, accounts.km_username) as page:
        page.goto("/kb/feedback")
        page.locator(f'a[href="{thread_path}"]').first.click()
        expect(page.locator("main")).to_contain_text(subject)
        page.locator('#kb-accept-form textarea[name="reason"]').fill("已核实")
        page.locator('#kb-accept-form button[type="submit"]').click()
        page.locator("#kb-draft-link").click()
        expect(page).to_have_url(re.compile(rf"/kb/articles/{article_id}/edit"))
        page.locator('#kb-article-form textarea[name="body_markdown"]').fill("年费 300 元（自今年起）。")
        page.locator('#kb-article-form [type="submit"]').first.click()
        expect(page).to_have_url(re.compile(rf"/kb/articles/{article_id}"))
        publish = page.locator("#kb-publish-form")
        publish.locator('input[name="announce"]').check()
        publish.locator('input[name="requires_ack"]').check()
        publish.locator('button[value="now"]').click()
        expect(page.locator("#kb-body")).to_contain_text("年费 300 元")
        expect(page.locator("#kb-version")).to_contain_text("2")

    # --- the agent sees the update on the board, acknowledges it, and reads version 2 ----------------
    with signed_in(browser, live_server, accounts.agent_username) as page:
        page.goto("/kb/board")
        pending = page.locator("#kb-pending")
        expect(pending).to_contain_text("信用卡年费怎么收")
        pending.locator(".kb-ack-form button").first.click()
        expect(page.locator("[data-acked=true]").first).to_be_visible()
        page.locator("#kb-board").locator(f'a[href="/kb/articles/{article_id}"]').first.click()
        expect(page.locator("#kb-body")).to_contain_text("年费 300 元")
