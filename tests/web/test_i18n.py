"""Message catalogues and the language switch.

The catalogues are complete (every zh_CN message translated, placeholders intact, nothing a page shows
missing from them) and the pages use them: Chinese by default, English after the switch, for visitors
and for signed-in users (whose choice is stored on their account).
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.pofile import read_po

from conftest import REPO, Factory, login
from kefu.core.i18n import LOCALES_DIR, SUPPORTED_LOCALES, Translator
from kefu.identity.models import Role
from kefu.web import TEMPLATES_DIR
from kefu.web.pages import NAV

SOURCE_DIR = REPO / "src" / "kefu"
# printf-style conversions as Python's % operator reads them (Jinja's newstyle gettext applies % to every
# translated string, with or without variables).
PLACEHOLDER = re.compile(r"%(?:\((?P<name>[^)]*)\))?[#0 +-]*(?:\*|\d+)?(?:\.(?:\*|\d+))?[diouxXeEfFgGcrsa%]")
# _("...") / _('...') with a literal first argument, as written in the templates.
TEMPLATE_LITERAL = re.compile(r"""\b_\(\s*(?P<q>["'])(?P<text>(?:(?!(?P=q)).)*)(?P=q)""", re.S)


def read_catalogue(locale: str) -> Catalog:
    with (LOCALES_DIR / locale / "LC_MESSAGES" / "messages.po").open("rb") as handle:
        return read_po(handle, locale=locale)


def messages(catalogue: Catalog) -> dict[str, str]:
    return {str(m.id): str(m.string or "") for m in catalogue if m.id}


def extracted_messages() -> set[str]:
    """What ``pybabel extract -F babel.cfg src/kefu`` (scripts/i18n.sh) finds."""
    with (REPO / "babel.cfg").open() as handle:
        method_map, options_map = parse_mapping_cfg(handle)
    return {
        msgid if isinstance(msgid, str) else msgid[0]
        for _file, _line, msgid, _comments, _context in extract_from_dir(str(SOURCE_DIR), method_map, options_map)
    }


def template_literals() -> dict[str, list[str]]:
    """Every _("literal") in the templates, read independently of Babel: msgid -> where."""
    found: dict[str, list[str]] = {}
    for path in sorted(TEMPLATES_DIR.rglob("*.html")):
        for match in TEMPLATE_LITERAL.finditer(path.read_text(encoding="utf-8")):
            found.setdefault(match["text"], []).append(str(path.relative_to(TEMPLATES_DIR)))
    return found


def dynamic_messages() -> set[str]:
    """Messages that reach _() as variables: role names and navigation labels."""
    return {role.value for role in Role} | {label for _path, label, _obj, _action in NAV}


def placeholders(text: str) -> list[str]:
    return sorted(m.group(0) for m in PLACEHOLDER.finditer(text) if m.group(0) != "%%")


# --- the catalogues ------------------------------------------------------------------------------
def test_catalogues_exist_for_every_supported_locale() -> None:
    assert set(SUPPORTED_LOCALES) == {"zh_CN", "en"}
    for locale in SUPPORTED_LOCALES:
        catalogue = read_catalogue(locale)
        assert len(messages(catalogue)) > 50, f"{locale} catalogue is (nearly) empty"


def test_every_chinese_message_is_translated() -> None:
    catalogue = read_catalogue("zh_CN")
    untranslated = [m.id for m in catalogue if m.id and not str(m.string or "").strip()]
    fuzzy = [m.id for m in catalogue if m.id and m.fuzzy]
    assert not untranslated, f"zh_CN messages without a translation: {untranslated}"
    # Fuzzy entries are ignored at run time (kefu.core.i18n), so the page would show English.
    assert not fuzzy, f"zh_CN messages marked fuzzy (review them, then drop the flag): {fuzzy}"


def test_chinese_translations_are_chinese() -> None:
    # A copy of the English text is "translated" for the tooling but not for the reader.
    han = re.compile(r"[\u4e00-\u9fff]")
    not_chinese = [msgid for msgid, text in messages(read_catalogue("zh_CN")).items() if not han.search(text)]
    assert not not_chinese, f"zh_CN translations without Chinese characters: {not_chinese}"


@pytest.mark.parametrize("locale", SUPPORTED_LOCALES)
def test_placeholders_match_between_msgid_and_msgstr(locale: str) -> None:
    mismatched = {
        msgid: text
        for msgid, text in messages(read_catalogue(locale)).items()
        if text and placeholders(msgid) != placeholders(text)
    }
    assert not mismatched, f"{locale}: placeholders differ: {mismatched}"


@pytest.mark.parametrize("locale", SUPPORTED_LOCALES)
def test_every_message_survives_newstyle_formatting(locale: str) -> None:
    # Jinja's newstyle gettext runs ``translation % variables`` even without variables: a lone "%" in a
    # msgid or msgstr ("100%") would break the page at render time.
    for msgid, text in messages(read_catalogue(locale)).items():
        names = {m["name"] for m in PLACEHOLDER.finditer(msgid) if m["name"]}
        variables = {name: "x" for name in names}
        for candidate in (msgid, text or msgid):
            try:
                candidate % variables
            except (KeyError, TypeError, ValueError) as exc:
                pytest.fail(f"{locale}: {candidate!r} cannot be formatted with {sorted(names)}: {exc!r}")


def test_every_template_literal_is_in_the_catalogues() -> None:
    # Fails as soon as someone adds _("...") to a template without running scripts/i18n.sh and translating.
    literals = template_literals()
    assert len(literals) > 50, "the template scan found (almost) nothing: has the _() syntax changed?"
    zh = messages(read_catalogue("zh_CN"))
    en = messages(read_catalogue("en"))
    missing = {text: where for text, where in literals.items() if not zh.get(text)}
    assert not missing, f"template messages missing or untranslated in zh_CN (run scripts/i18n.sh): {missing}"
    missing_en = {text: where for text, where in literals.items() if text not in en}
    assert not missing_en, f"template messages missing from the en catalogue (run scripts/i18n.sh): {missing_en}"


def test_babel_extraction_config_finds_what_the_templates_use() -> None:
    # babel.cfg is what scripts/i18n.sh extracts with: it must see every literal the templates use,
    # and the catalogues must hold everything it sees.
    extracted = extracted_messages()
    assert set(template_literals()) <= extracted
    for locale in SUPPORTED_LOCALES:
        absent = extracted - set(messages(read_catalogue(locale)))
        assert not absent, f"{locale}: extracted messages missing from the catalogue (run scripts/i18n.sh): {absent}"


def test_role_names_and_navigation_labels_are_translated() -> None:
    zh = messages(read_catalogue("zh_CN"))
    missing = sorted(m for m in dynamic_messages() if not zh.get(m))
    assert not missing, f"role names / navigation labels without a zh_CN translation: {missing}"
    translator = Translator("zh_CN")
    assert translator.gettext("agent") == "坐席"
    assert translator.gettext("knowledge_manager") == "知识管理员"
    assert translator.gettext("Audit log") == "审计日志"


def test_both_catalogues_hold_the_same_messages() -> None:
    # en may leave msgstr empty (the English msgid is shown), but it must know the same messages.
    assert set(messages(read_catalogue("en"))) == set(messages(read_catalogue("zh_CN")))
    assert Translator("en").gettext("Audit log") == "Audit log"


# --- the pages -----------------------------------------------------------------------------------
def csrf_of(html: str) -> str:
    match = re.search(r'<meta name="csrf-token" content="([^"]+)"', html)
    assert match, "the page has no csrf-token meta tag"
    return match.group(1)


def lang_of(html: str) -> str:
    match = re.search(r'<html lang="([^"]+)"', html)
    assert match
    return match.group(1)


def language_form(html: str) -> dict[str, str]:
    """The fields of the language switch in the page header, as the page renders them."""
    form = re.search(r'<form method="post" action="/language".*?</form>', html, re.S)
    assert form, "the page has no language switch"
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', form.group(0)))
    return {name: value.replace("&amp;", "&") for name, value in fields.items()}


async def switch_language(client: httpx.AsyncClient, page: str, locale: str) -> httpx.Response:
    """Uses the switch in the page header the way a browser does: the form's own fields, no header."""
    shown = await client.get(page)
    assert shown.status_code == 200
    fields = language_form(shown.text)
    assert fields["csrf_token"] == csrf_of(shown.text)
    return await client.post("/language", data={**fields, "locale": locale})


async def test_pages_are_chinese_by_default(client: httpx.AsyncClient) -> None:
    response = await client.get("/login")
    assert response.status_code == 200
    html = response.text
    assert lang_of(html) == "zh-CN"
    assert "<title>登录 · kefu 客服平台</title>" in html
    for text in ("用户名或邮箱", "密码", "忘记密码？"):
        assert text in html
    assert "Username or email" not in html


async def test_browser_language_is_used_when_nothing_was_chosen(client: httpx.AsyncClient) -> None:
    response = await client.get("/login", headers={"Accept-Language": "en-GB,en;q=0.9"})
    assert lang_of(response.text) == "en"
    assert "Username or email" in response.text


async def test_visitor_switches_language(client: httpx.AsyncClient) -> None:
    # Before sign-in the form is protected by the double-submit cookie (kefu_csrf) the page sets.
    response = await switch_language(client, "/login", "en")
    assert response.status_code == 303
    assert response.headers["location"] == "/login"
    assert client.cookies.get("kefu_lang") == "en"
    html = (await client.get("/login")).text
    assert lang_of(html) == "en"
    assert "<title>Sign in · kefu customer service</title>" in html
    assert "Username or email" in html and "用户名或邮箱" not in html

    response = await switch_language(client, "/password-reset", "zh_CN")
    assert response.status_code == 303
    assert response.headers["location"] == "/password-reset"
    html = (await client.get("/password-reset")).text
    assert lang_of(html) == "zh-CN"
    assert "重置密码" in html and "发送重置链接" in html


async def test_language_switch_returns_to_the_same_page_with_its_query(client: httpx.AsyncClient) -> None:
    # Switching language on the sign-in page must not forget where to go after signing in, nor the
    # token on the new-password page; the one-off "saved" notice is not repeated.
    for page, back in (
        ("/login?next=/admin/users", "/login?next=%2Fadmin%2Fusers"),
        ("/password-reset/confirm?token=abc-123", "/password-reset/confirm?token=abc-123"),
        ("/login?next=/admin/teams&saved=1", "/login?next=%2Fadmin%2Fteams"),
    ):
        response = await switch_language(client, page, "en")
        assert response.status_code == 303
        assert response.headers["location"] == back
        html = (await client.get(back)).text
        assert lang_of(html) == "en"
    login_form = (await client.get("/login?next=/admin/users")).text
    assert '<input type="hidden" name="next" value="/admin/users">' in login_form


async def test_language_switch_needs_the_csrf_token(client: httpx.AsyncClient) -> None:
    await client.get("/login")  # has the kefu_csrf cookie now
    response = await client.post("/language", data={"locale": "en", "next": "/login"})
    assert response.status_code == 403
    response = await client.post("/language", data={"csrf_token": "forged", "locale": "en", "next": "/login"})
    assert response.status_code == 403
    assert "kefu_lang" not in client.cookies


async def test_language_switch_refuses_unknown_languages_and_foreign_targets(client: httpx.AsyncClient) -> None:
    token = csrf_of((await client.get("/login")).text)
    response = await client.post("/language", data={"csrf_token": token, "locale": "fr", "next": "/login"})
    assert response.status_code == 422
    response = await client.post(
        "/language", data={"csrf_token": token, "locale": "en", "next": "https://evil.example/"}
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/"


async def test_signed_in_pages_switch_language_and_remember_it(client: httpx.AsyncClient, make: Factory) -> None:
    admin = await make.user("admin")
    await login(client, admin)
    # The page's own token, as the header form sends it (not the API's header).
    client.headers.pop("X-CSRF-Token")

    html = (await client.get("/")).text
    assert lang_of(html) == "zh-CN"
    assert f"欢迎，{admin.display_name}" in html
    for label in ("首页", "用户", "班组", "技能", "审计日志", "管理员", "退出登录"):
        assert label in html, label

    response = await switch_language(client, "/admin/users", "en")
    assert response.status_code == 303
    assert response.headers["location"] == "/admin/users"
    html = (await client.get("/admin/users")).text
    assert lang_of(html) == "en"
    for label in (">Users<", ">Teams<", ">Skills<", ">Audit log<", ">New user<", ">admin<", "Sign out"):
        assert label in html, label
    assert "审计日志" not in html

    # The choice is stored on the account, not only in the cookie.
    client.cookies.delete("kefu_lang")
    html = (await client.get("/profile")).text
    assert lang_of(html) == "en"
    assert "Time zone" in html

    await switch_language(client, "/profile", "zh_CN")
    client.cookies.delete("kefu_lang")
    html = (await client.get("/profile")).text
    assert lang_of(html) == "zh-CN"
    assert "个人资料" in html and "时区" in html


async def test_forbidden_page_is_translated(client: httpx.AsyncClient, make: Factory) -> None:
    agent = await make.user("agent")
    await login(client, agent)
    response = await client.get("/admin/users/new", headers={"Accept": "text/html"})
    assert response.status_code == 403
    assert "您无权执行此操作。" in response.text
    response = await client.get("/admin/users/new", headers={"Accept": "text/html", "Accept-Language": "en"})
    # The account's language (zh_CN by default) wins over the browser's.
    assert "您无权执行此操作。" in response.text


def test_catalogue_files_are_where_the_package_data_expects() -> None:
    for locale in SUPPORTED_LOCALES:
        assert (Path(LOCALES_DIR) / locale / "LC_MESSAGES" / "messages.po").is_file()
