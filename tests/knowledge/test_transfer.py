"""Knowledge import and export (``kefu kb import/export``): JSONL and Markdown folders, idempotent by
external id; broken records reported by line or file while every other record is imported; exports that
import back into an empty database and export again byte for byte; the command line end to end."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from conftest import Factory as ConftestFactory
from conftest import _backend, _pg_admin, is_postgres, principal_of, unique
from kefu.core.audit import Actor
from kefu.core.errors import ApiError
from kefu.core.policy import Principal
from kefu.db.engine import make_engine, make_session_factory
from kefu.db.migrate import upgrade
from kefu.identity import service as identity
from kefu.identity.models import User
from kefu.knowledge import service, transfer
from kefu.knowledge.models import Article, ArticleVersion, Category, IndexChange
from kefu.settings import Settings

Factory = async_sessionmaker[AsyncSession]
BAOXIAN_KB = Path(__file__).resolve().parents[3] / "shared" / "data" / "baoxianzhidao_faq" / "kb.jsonl"


def write_jsonl(path: Path, *lines: dict[str, Any] | str | bytes) -> Path:
    """Records as JSON lines; a str or bytes item is written as the line itself (to break it on purpose)."""
    with path.open("wb") as out:
        for line in lines:
            if isinstance(line, dict):
                line = json.dumps(line, ensure_ascii=False)
            out.write((line.encode() if isinstance(line, str) else line) + b"\n")
    return path


async def run_import(
    factory: Factory, principal: Principal, settings: Settings, path: Path, *, draft: bool = False
) -> transfer.ImportReport:
    async with factory() as db, db.begin():
        return await transfer.import_path(db, principal, settings, path, draft=draft)


async def article_by(factory: Factory, external_id: str) -> tuple[Article, list[ArticleVersion]]:
    async with factory() as db:
        article = await db.scalar(select(Article).where(Article.external_id == external_id))
        assert article is not None, external_id
        versions = (
            await db.scalars(
                select(ArticleVersion).where(ArticleVersion.article_id == article.id).order_by(ArticleVersion.number)
            )
        ).all()
        return article, list(versions)


async def category_path(factory: Factory, category_id: int | None) -> list[str]:
    names = []
    async with factory() as db:
        while category_id is not None:
            category = await db.get(Category, category_id)
            assert category is not None
            names.append(category.name)
            category_id = category.parent_id
    return names[::-1]


def errors_by_line(report: transfer.ImportReport) -> dict[int, str | None]:
    pairs = error_pairs(report)
    assert len({line for line, _ in pairs}) == len(pairs), pairs  # one error a line here
    return dict(pairs)


def error_pairs(report: transfer.ImportReport) -> list[tuple[int | None, str | None]]:
    return [(e.source.line, e.field) for e in report.errors]


@pytest.fixture(scope="module")
async def people(app) -> dict[str, User]:  # noqa: ANN001
    make = ConftestFactory(app)
    roles = {"km": "knowledge_manager", "km2": "knowledge_manager", "agent": "agent", "customer": "customer"}
    return {key: await make.user(role) for key, role in roles.items()}


# --- import ------------------------------------------------------------------------------------
async def test_jsonl_import_creates_published_articles_with_versions_and_categories(
    db_factory,
    settings,
    people,
    tmp_path,  # noqa: ANN001
) -> None:
    p = unique("jl")
    source = write_jsonl(
        tmp_path / "kb.jsonl",
        {
            "external_id": f"{p}-lost-card",
            "title": "信用卡挂失怎么办？",
            "body_markdown": "拨打 **95588** 挂失。",
            "similar_questions": ["卡丢了怎么办", "卡丢了怎么办", "信用卡丢失"],
            "tags": ["信用卡"],
            "category": f"{p}银行卡/挂失",
            "audience": "public",
            "verify_interval_days": 90,
        },
        {
            "external_id": f"{p}-case",
            "title": "客户重复扣款",
            "text": "见处理经过。",  # "text" is accepted for the body
            "kind": "case",
            "case_fields": {"problem": "扣了两次", "resolution": "退回一笔"},
            "category": f"{p}银行卡",
            "owner": people["km2"].username,
        },
        {"article_id": f"{p}-eval", "text": "职工下岗后可到社保中心办理参保登记。其余手续见网点公告。"},
        {"external_id": f"{p}-draft", "title": "未定稿", "body": "草稿", "status": "draft"},
    )
    report = await run_import(db_factory, principal_of(people["km"]), settings, source)
    assert report.as_dict() == {"created": 4, "updated": 0, "unchanged": 0, "errors": []}

    lost, versions = await article_by(db_factory, f"{p}-lost-card")
    assert [(v.number, v.status) for v in versions] == [(1, "published")]
    assert lost.published_version_id == versions[0].id and lost.audience == "public"
    assert lost.verify_interval_days == 90 and lost.owner_id == people["km"].id  # the importer by default
    assert versions[0].similar_questions == ["卡丢了怎么办", "信用卡丢失"]  # stored as the service stores it
    assert "<strong>95588</strong>" in versions[0].body_html
    assert await category_path(db_factory, lost.category_id) == [f"{p}银行卡", "挂失"]

    case, versions = await article_by(db_factory, f"{p}-case")
    assert case.kind == "case" and case.owner_id == people["km2"].id
    assert versions[0].case_fields == {"problem": "扣了两次", "resolution": "退回一笔"}
    assert versions[0].body_markdown == "见处理经过。"
    # The existing parent category was found again, not made twice.
    assert await category_path(db_factory, case.category_id) == [f"{p}银行卡"]
    async with db_factory() as db:
        assert await db.scalar(select(func.count()).where(Category.name == f"{p}银行卡")) == 1

    evaluation, versions = await article_by(db_factory, f"{p}-eval")
    assert versions[0].title == "职工下岗后可到社保中心办理参保登记。"  # first sentence, as no title was given
    assert evaluation.published_version_id is not None

    draft, versions = await article_by(db_factory, f"{p}-draft")
    assert draft.published_version_id is None and [(v.number, v.status) for v in versions] == [(1, "draft")]
    assert versions[0].body_markdown == "草稿"

    # Published imports feed the search index like any publication.
    async with db_factory() as db:
        fed = await db.scalar(select(func.count()).where(IndexChange.article_id.in_([lost.id, case.id])))
        assert fed == 2


async def test_importing_twice_changes_nothing_and_a_change_makes_exactly_one_version(
    db_factory,
    settings,
    people,
    tmp_path,  # noqa: ANN001
) -> None:
    p = unique("idem")
    records = [
        {"external_id": f"{p}-{n}", "title": f"问题 {n}", "body_markdown": f"答案 {n}", "tags": ["a", "b"]}
        for n in range(5)
    ]
    km = principal_of(people["km"])
    first = await run_import(db_factory, km, settings, write_jsonl(tmp_path / "a.jsonl", *records))
    assert (first.created, first.errors) == (5, [])

    async def snapshot() -> dict[str, Any]:
        async with db_factory() as db:
            ids = select(Article.id).where(Article.external_id.like(f"{p}-%"))
            return {
                "versions": await db.scalar(select(func.count()).where(ArticleVersion.article_id.in_(ids))),
                "index": await db.scalar(select(func.count()).where(IndexChange.article_id.in_(ids))),
                "updated": sorted((await db.scalars(select(Article.updated_at).where(Article.id.in_(ids)))).all()),
            }

    before = await snapshot()
    again = await run_import(db_factory, km, settings, write_jsonl(tmp_path / "b.jsonl", *records))
    assert again.as_dict() == {"created": 0, "updated": 0, "unchanged": 5, "errors": []}
    assert await snapshot() == before  # no version, no index change, no touched row

    records[2] = {**records[2], "body_markdown": "新的答案"}
    changed = await run_import(db_factory, km, settings, write_jsonl(tmp_path / "c.jsonl", *records))
    assert changed.as_dict() == {"created": 0, "updated": 1, "unchanged": 4, "errors": []}
    article, versions = await article_by(db_factory, f"{p}-2")
    assert [(v.number, v.status, v.body_markdown) for v in versions] == [
        (1, "superseded", "答案 2"),
        (2, "published", "新的答案"),
    ]
    assert article.published_version_id == versions[1].id
    assert (await snapshot())["versions"] == before["versions"] + 1

    # A placement change (not content) updates the article without a new version.
    records[3] = {**records[3], "audience": "public"}
    moved = await run_import(db_factory, km, settings, write_jsonl(tmp_path / "d.jsonl", *records))
    assert (moved.updated, moved.unchanged) == (1, 4)
    article, versions = await article_by(db_factory, f"{p}-3")
    assert article.audience == "public" and len(versions) == 1
    # Leaving a placement field out keeps it; the same file again is a no-op.
    assert (await run_import(db_factory, km, settings, tmp_path / "a.jsonl")).updated == 1  # body of 2 goes back
    assert (await article_by(db_factory, f"{p}-3"))[0].audience == "public"


async def test_broken_lines_are_reported_by_number_and_every_other_line_is_imported(
    db_factory,
    settings,
    people,
    tmp_path,  # noqa: ANN001
) -> None:
    p = unique("bad")

    def ok(n: int) -> dict[str, Any]:
        return {"external_id": f"{p}-{n}", "title": f"好的 {n}", "body_markdown": "正文"}

    source = write_jsonl(
        tmp_path / "broken.jsonl",
        ok(1),
        '{"external_id": "x", "title": ',  # 2: not JSON
        {"external_id": f"{p}-3", "body_markdown": "没有标题"},  # 3: no title
        {**ok(4), "body_markdown": "x" * 10_000_000},  # 4: a 10 MB body
        {**ok(5), "kind": "recipe"},  # 5: unknown kind
        {**ok(6), "title": "NUL\u0000字符"},  # 6: a NUL character
        ok(7),
        "",  # 8: blank lines are skipped but counted
        b'{"external_id": "\xff\xfe", "title": "t"}',  # 9: not UTF-8
        "[1, 2]",  # 10: not an object
        {**ok(11), "titel": "typo"},  # 11: an unknown field fails loudly
        {**ok(12), "title": "长" * 301},  # 12: title over 300 characters
        {**ok(13), "case_fields": {"problem": "p"}},  # 13: case fields on a faq
        {**ok(14), "owner": "nobody-such"},  # 14: owner not a user
        {**ok(15), "effective_from": "2030-01-01T00:00:00"},  # 15: a time without a zone
        '{"external_id": "dup", "external_id": "dup2", "title": "t"}',  # 16: a key given twice
        {"external_id": f"{p}-17", "title": "t", "text": "a", "body": "b"},  # 17: the body given twice
        ok(18),
    )
    report = await run_import(db_factory, principal_of(people["km"]), settings, source)
    assert errors_by_line(report) == {
        2: None,
        3: "title",
        4: "body_markdown",
        5: "kind",
        6: "title",
        9: None,
        10: None,
        11: "titel",
        12: "title",
        13: "case_fields",
        14: "owner",
        15: "effective_from",
        16: None,
        17: "body",
    }
    messages = {e.source.line: e.message for e in report.errors}
    assert "not valid JSON" in messages[2] and "control character" in messages[6]
    assert "200000" in messages[4] and "UTF-8" in messages[9] and "duplicate key" in messages[16]
    assert report.created == 3  # lines 1, 7 and 18: nothing else skipped
    for n in (1, 7, 18):
        article, _ = await article_by(db_factory, f"{p}-{n}")
        assert article.published_version_id is not None
    async with db_factory() as db:
        for n in (3, 4, 5, 6, 11, 12, 13, 14, 15, 17):
            assert await db.scalar(select(Article.id).where(Article.external_id == f"{p}-{n}")) is None


def test_a_runaway_line_is_cut_off_unread_and_counting_goes_on() -> None:
    runaway = b'{"title": "' + b"x" * transfer.MAX_RECORD_BYTES + b'"}\n'
    stream = io.BytesIO(b'\xef\xbb\xbf{"title": "bom"}\n' + runaway + b'{"title": "t", "tags": null}\n')
    first, second, third = transfer.iter_jsonl(stream)
    assert first.data == {"title": "bom"}  # a byte-order mark on the first line is allowed
    assert second.data is None and second.problem == (
        None,
        f"the line is longer than {transfer.MAX_RECORD_BYTES} bytes",
    )
    assert third.source.line == 3 and third.data == {"title": "t", "tags": None}


def test_front_matter_values() -> None:
    fields, body = transfer.parse_markdown(
        "---\n"
        "a: plain text: with colon\n"
        "b: 'it''s quoted'\n"
        'c: [x, "y, z", w]\n'
        'd: ["json", "list"]\n'
        "e:\n"
        'f: {"k": 1}\n'
        "g: []\n"
        "---\nbody"
    )
    assert fields == {
        "a": "plain text: with colon",
        "b": "it's quoted",
        "c": ["x", "y, z", "w"],
        "d": ["json", "list"],
        "e": None,
        "f": {"k": 1},
        "g": [],
    }
    assert body == "body"
    for bad in ("x: [a, , b]", "x: [a", "x: 'open", 'x: {"k": }', 'x: [a, b"c]'):
        with pytest.raises(ValueError):
            transfer.parse_markdown(f"---\n{bad}\n---\n")
    # What the exporter writes, the parser reads back as it was.
    record = {
        "external_id": "a/b.md",
        "title": "- 看起来像列表: 其实是标题 #1",
        "similar_questions": ["null", "'q'", "a, b"],
        "tags": [],
        "category": r"A\/B/C",
        "owner": None,
        "verify_interval_days": 7,
        "case_fields": {"problem": "多行\n文本"},
        "body_markdown": "正文\n---\n还是正文",
    }
    fields, body = transfer.parse_markdown(transfer.render_markdown_file(record))
    # Bare numbers stay text here; the record model reads them as numbers.
    assert {**fields, "body_markdown": body.strip()} == {**record, "verify_interval_days": "7"}


async def test_duplicate_external_ids_fail_the_later_line(db_factory, settings, people, tmp_path) -> None:  # noqa: ANN001
    p = unique("dup")
    source = write_jsonl(
        tmp_path / "dup.jsonl",
        {"external_id": f"{p}-a", "title": "first"},
        {"external_id": f"{p}-b"},  # invalid (no title) but its id still counts as seen
        {"external_id": f"{p}-a", "title": "second"},
        {"article_id": f"{p}-b", "text": "the same id under its other name"},
    )
    report = await run_import(db_factory, principal_of(people["km"]), settings, source)
    assert errors_by_line(report) == {2: "title", 3: "external_id", 4: "external_id"}
    assert "line 1" in report.errors[1].message
    _, versions = await article_by(db_factory, f"{p}-a")
    assert [v.title for v in versions] == ["first"]


async def test_someone_elses_work_in_progress_is_never_overwritten(
    db_factory,
    settings,
    people,
    tmp_path,  # noqa: ANN001
) -> None:
    p = unique("wip")
    km, km2, agent = (principal_of(people[k]) for k in ("km", "km2", "agent"))
    records = [{"external_id": f"{p}-1", "title": "标题", "body_markdown": "v1"}]
    assert (await run_import(db_factory, km, settings, write_jsonl(tmp_path / "1.jsonl", *records))).created == 1
    article, _ = await article_by(db_factory, f"{p}-1")
    async with db_factory() as db, db.begin():
        await service.save_draft(db, km2, article.id, service.Content(title="标题", body_markdown="km2 正在改"))

    changed = write_jsonl(tmp_path / "2.jsonl", {**records[0], "body_markdown": "v2"})
    report = await run_import(db_factory, km, settings, changed)
    assert report.updated == 0 and errors_by_line(report) == {1: None}
    assert "work in progress" in report.errors[0].message
    _, versions = await article_by(db_factory, f"{p}-1")
    assert [(v.status, v.body_markdown) for v in versions] == [("published", "v1"), ("draft", "km2 正在改")]
    # The same content as the live version needs nothing, draft or not.
    assert (await run_import(db_factory, km, settings, tmp_path / "1.jsonl")).unchanged == 1

    # Agents may import drafts, not publish; an article they may not edit fails alone, in its savepoint,
    # and their new article is created as a draft.
    as_agent = write_jsonl(
        tmp_path / "3.jsonl",
        {"external_id": f"{p}-mine", "title": "我的经验", "kind": "experience", "category": f"{p}新类"},
        {"external_id": f"{p}-mine2", "title": "我的经验2", "kind": "experience"},
    )
    refused = await run_import(db_factory, agent, settings, as_agent)
    assert error_pairs(refused) == [(1, "status"), (1, "category"), (2, "status")] and refused.created == 0
    drafts = await run_import(db_factory, agent, settings, as_agent, draft=True)
    assert errors_by_line(drafts) == {1: "category"}  # agents may not create categories
    assert drafts.created == 1
    mine, versions = await article_by(db_factory, f"{p}-mine2")
    assert mine.published_version_id is None and versions[0].author_id == people["agent"].id

    km_article = write_jsonl(
        tmp_path / "4.jsonl",
        {"external_id": f"{p}-1", "title": "标题", "body_markdown": "agent 想改"},
        {"external_id": f"{p}-new", "title": "新的"},
    )
    mixed = await run_import(db_factory, agent, settings, km_article, draft=True)
    assert errors_by_line(mixed) == {1: None} and mixed.created == 1
    _, versions = await article_by(db_factory, f"{p}-1")
    assert [v.body_markdown for v in versions] == ["v1", "km2 正在改"]


async def test_over_the_record_limit_nothing_is_applied(db_factory, settings, people) -> None:  # noqa: ANN001
    p = unique("max")
    valid = transfer.RawRecord(transfer.Source(line=1), {"external_id": f"{p}-1", "title": "t"})
    unreadable = (
        transfer.RawRecord(transfer.Source(line=n), None, (None, "unreadable"))
        for n in range(2, transfer.MAX_RECORDS + 3)
    )

    def records() -> Any:
        yield valid
        yield from unreadable

    async with db_factory() as db, db.begin():
        report = await transfer.import_records(db, principal_of(people["km"]), settings, records())
    assert report.created == 0 and len(report.errors) == 1
    assert report.errors[0].source.line == transfer.MAX_RECORDS + 1 and "split" in report.errors[0].message
    async with db_factory() as db:
        assert await db.scalar(select(Article.id).where(Article.external_id == f"{p}-1")) is None


async def test_customers_may_not_import(db_factory, settings, people, tmp_path) -> None:  # noqa: ANN001
    source = write_jsonl(tmp_path / "c.jsonl", {"external_id": unique("c"), "title": "t"})
    with pytest.raises(ApiError, match="not allowed"):
        await run_import(db_factory, principal_of(people["customer"]), settings, source)


# --- Markdown ----------------------------------------------------------------------------------
def write_tree(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


async def test_markdown_folder_import(db_factory, settings, people, tmp_path) -> None:  # noqa: ANN001
    p = unique("md")
    folder = write_tree(
        tmp_path / "kb",
        {
            # Subfolders become the category; the relative path is the external id.
            f"{p}卡/挂失/丢卡.md": "---\ntitle: 卡丢了怎么办？\ntags: [信用卡, 挂失]\n---\n\n打电话挂失。\n",
            # Given fields win over the folder; bare and JSON list items; a JSON object for case fields.
            f"{p}卡/case.md": (
                "---\n"
                f"external_id: {p}-case\n"
                'title: "标题: 带冒号"\n'
                f"category: {p}其他\n"
                "kind: case\n"
                'similar_questions: [扣款两次, "a, b", 重复扣费]\n'
                'case_fields: {"problem": "两次扣款", "lessons": "先查流水"}\n'
                "verify_interval_days: 30\n"
                "# a comment line\n"
                "---\n"
                "正文第一行\n\n---\n\n正文里的分隔线不结束任何东西\n"
            ),
            f"{p}-windows.md": "---\r\ntitle: CRLF\r\nstatus: draft\r\n---\r\n正文\r\n",
            f"{p}-no-close.md": "---\ntitle: x\n",
            f"{p}-bad-line.md": "---\ntitle x\n---\nbody\n",
            f"{p}-bad-list.md": '---\ntitle: x\ntags: [a, "b" c]\n---\n',
            f"{p}-no-title.md": "只有正文\n",
            f"{p}-body-in-front.md": "---\ntitle: x\nbody: y\n---\n",
            ".hidden/skip.md": "---\ntitle: never read\n---\n",
            "notes.txt": "not Markdown",
        },
    )
    report = await run_import(db_factory, principal_of(people["km"]), settings, folder)
    errors = {e.source.file: e.field for e in report.errors}
    assert errors == {
        f"{p}-no-close.md": None,
        f"{p}-bad-line.md": None,
        f"{p}-bad-list.md": "tags",
        f"{p}-no-title.md": "title",
        f"{p}-body-in-front.md": "body",
    }
    assert report.created == 3

    lost, versions = await article_by(db_factory, f"{p}卡/挂失/丢卡.md")
    assert await category_path(db_factory, lost.category_id) == [f"{p}卡", "挂失"]
    assert (versions[0].title, versions[0].tags, versions[0].body_markdown) == (
        "卡丢了怎么办？",
        ["信用卡", "挂失"],
        "打电话挂失。",
    )
    case, versions = await article_by(db_factory, f"{p}-case")
    assert await category_path(db_factory, case.category_id) == [f"{p}其他"]
    assert versions[0].title == "标题: 带冒号" and case.verify_interval_days == 30
    assert versions[0].similar_questions == ["扣款两次", "a, b", "重复扣费"]
    assert versions[0].case_fields == {"problem": "两次扣款", "lessons": "先查流水"}
    assert versions[0].body_markdown == "正文第一行\n\n---\n\n正文里的分隔线不结束任何东西"
    windows, versions = await article_by(db_factory, f"{p}-windows.md")
    assert windows.published_version_id is None and versions[0].title == "CRLF"

    again = await run_import(db_factory, principal_of(people["km"]), settings, folder)
    assert (again.created, again.updated, again.unchanged) == (0, 0, 3)


# --- export and round trips --------------------------------------------------------------------
@pytest.fixture
async def fresh_db(tmp_path) -> AsyncIterator[Callable[[], Awaitable[Factory]]]:  # noqa: ANN001
    """Makes empty, migrated databases of the backend under test (exports must not see other tests)."""
    made: list[tuple[Any, str | None]] = []

    async def make() -> Factory:
        name = None
        if is_postgres():
            name = f"kefu_transfer_{uuid.uuid4().hex[:12]}"
            await _pg_admin(_backend(), f'CREATE DATABASE "{name}"')
            url = _backend().rsplit("/", 1)[0] + f"/{name}"
        else:
            url = f"sqlite+aiosqlite:///{tmp_path / f'{uuid.uuid4().hex[:8]}.db'}"
        await asyncio.to_thread(upgrade, url)
        engine = make_engine(url)
        made.append((engine, name))
        return make_session_factory(engine)

    yield make
    for engine, name in made:
        await engine.dispose()
        if name:
            await _pg_admin(_backend(), f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def users_in(factory: Factory) -> dict[str, Principal]:
    """The same staff in every database (owners travel by username)."""
    roles = {"rt-admin": "admin", "rt-km": "knowledge_manager", "rt-agent": "agent", "rt-customer": "customer"}
    principals = {}
    async with factory() as db, db.begin():
        for username, role in roles.items():
            user = await identity.create_user(
                db, Actor.system("test"), username=username, display_name=username, roles=[role]
            )
            principals[username] = principal_of(user)
    return principals


def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


async def export_text(factory: Factory, principal: Principal) -> str:
    from io import StringIO

    out = StringIO()
    async with factory() as db, db.begin():
        await transfer.export_jsonl(db, principal, out)
    return out.getvalue()


async def test_export_imports_into_an_empty_database_and_exports_the_same(
    fresh_db,
    settings,
    tmp_path,  # noqa: ANN001
) -> None:
    source = await fresh_db()
    who = await users_in(source)
    admin = who["rt-admin"]
    now = datetime.now(UTC).replace(microsecond=123456)
    write_jsonl(
        tmp_path / "in.jsonl",
        {
            "external_id": "faq/1",
            "title": "-开头的标题: 需要引号",
            "body_markdown": "# 标题\n\n正文 *强调*\r\n第二行\n",
            "similar_questions": ["同义问 1", "null"],
            "tags": ["t1"],
            "category": "银行卡/挂失",
            "audience": "public",
            "owner": "rt-km",
            "effective_from": (now - timedelta(days=1)).isoformat(),
            "expires_at": (now + timedelta(days=365)).isoformat(),
            "verify_interval_days": 30,
        },
        {"external_id": "faq/2", "title": "斜杠类目", "category": r"A\/B/C", "language": "en"},
        {
            "external_id": "case-1",
            "title": "案例",
            "kind": "case",
            "case_fields": {"analysis": "分析", "problem": "问题"},
        },
        {"article_id": "bx-1", "text": "评测格式。"},
        {"external_id": "FAQ/1", "title": "大小写不同的另一篇"},
        {"external_id": "other/1", "title": "同名文件"},  # the same file name as FAQ/1: made unique
        {"external_id": "draft-only", "title": "不导出", "status": "draft"},
        {"external_id": "archived", "title": "归档后不导出"},
        {"external_id": "edited", "title": "导出在线版本", "body_markdown": "线上"},
    )
    async with source() as db, db.begin():
        report = await transfer.import_path(db, admin, settings, tmp_path / "in.jsonl")
        assert report.errors == [] and report.created == 9
        archived = await db.scalar(select(Article.id).where(Article.external_id == "archived"))
        await service.archive(db, admin, archived)
        edited = await db.scalar(select(Article.id).where(Article.external_id == "edited"))
        await service.save_draft(db, admin, edited, service.Content(title="导出在线版本", body_markdown="草稿中"))
        # An article made in the app has no external id: it is exported under a synthetic one.
        made = await service.create_article(
            db, admin, service.Content(title="界面里写的", body_markdown="无外部 id"), service.Placement()
        )
        await service.publish(db, admin, settings, made.article.id)

    exported = await export_text(source, admin)
    lines = [json.loads(line) for line in exported.splitlines()]
    ids = [r["external_id"] for r in lines]
    assert ids == sorted(ids) and "draft-only" not in ids and "archived" not in ids
    synthetic = [i for i in ids if i.startswith("kefu:")]
    assert len(synthetic) == 1 and len(ids) == 8
    assert next(r for r in lines if r["external_id"] == "edited")["body_markdown"] == "线上"
    first = next(r for r in lines if r["external_id"] == "faq/1")
    assert first["category"] == "银行卡/挂失" and first["owner"] == "rt-km"
    assert next(r for r in lines if r["external_id"] == "faq/2")["category"] == r"A\/B/C"
    async with source() as db, db.begin():
        await transfer.export_markdown(db, admin, tmp_path / "md")
    markdown = tree(tmp_path / "md")
    assert "银行卡/挂失/1.md" in markdown and "A_B/C/2.md" in markdown
    assert {"1.md", "1-2.md"} <= {name for name in markdown if "/" not in name}

    # Re-importing the export into its own database changes nothing (the synthetic id finds its article).
    async with source() as db, db.begin():
        again = await transfer.import_path(db, admin, settings, write_jsonl(tmp_path / "out.jsonl", exported))
    assert again.as_dict() == {"created": 0, "updated": 0, "unchanged": 8, "errors": []}
    async with source() as db, db.begin():
        md_again = await transfer.import_path(db, admin, settings, tmp_path / "md")
    assert (md_again.unchanged, md_again.errors) == (8, [])

    # The original file again: the archived article is reported, not revived; the rest is as it was.
    async with source() as db, db.begin():
        original = await transfer.import_path(db, admin, settings, tmp_path / "in.jsonl")
    assert error_pairs(original) == [(8, "external_id")] and "archived" in original.errors[0].message
    assert (original.created, original.updated, original.unchanged) == (0, 0, 8)

    # JSONL into an empty database and out again: the same bytes.
    target = await fresh_db()
    target_admin = (await users_in(target))["rt-admin"]
    async with target() as db, db.begin():
        imported = await transfer.import_path(db, target_admin, settings, tmp_path / "out.jsonl")
    assert (imported.created, imported.errors) == (8, [])
    assert await export_text(target, target_admin) == exported

    # Markdown into another empty database and out again: the same files, and the same JSONL too.
    target = await fresh_db()
    target_admin = (await users_in(target))["rt-admin"]
    async with target() as db, db.begin():
        imported = await transfer.import_path(db, target_admin, settings, tmp_path / "md")
    assert (imported.created, imported.errors) == (8, [])
    async with target() as db, db.begin():
        await transfer.export_markdown(db, target_admin, tmp_path / "md2")
    assert tree(tmp_path / "md2") == markdown
    assert await export_text(target, target_admin) == exported

    # Exporting into a folder that holds files is refused rather than mixing two exports.
    async with target() as db, db.begin():
        with pytest.raises(ApiError, match="empty folder"):
            await transfer.export_markdown(db, target_admin, tmp_path / "md2")


async def test_customers_export_only_public_live_articles(db_factory, settings, people, tmp_path) -> None:  # noqa: ANN001
    p = unique("pub")
    past = (datetime.now(UTC) - timedelta(days=2)).isoformat()
    yesterday = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    source = write_jsonl(
        tmp_path / "mix.jsonl",
        {"external_id": f"{p}-public", "title": "公开", "audience": "public"},
        {"external_id": f"{p}-internal", "title": "内部"},
        {"external_id": f"{p}-public-draft", "title": "公开草稿", "audience": "public", "status": "draft"},
        {
            "external_id": f"{p}-expired",
            "title": "过期",
            "audience": "public",
            "effective_from": past,
            "expires_at": yesterday,
        },
    )
    assert (await run_import(db_factory, principal_of(people["km"]), settings, source)).created == 4

    def ours(text: str) -> dict[str, dict[str, Any]]:
        records = [json.loads(line) for line in text.splitlines()]
        return {r["external_id"]: r for r in records if r["external_id"].startswith(p)}

    customer_text = await export_text(db_factory, principal_of(people["customer"]))
    assert set(ours(customer_text)) == {f"{p}-public"}
    records = [json.loads(line) for line in customer_text.splitlines()]
    assert records and all(r["audience"] == "public" and "owner" not in r for r in records)
    # Staff export every live article, internal and expired ones too, but never a draft.
    agent_export = ours(await export_text(db_factory, principal_of(people["agent"])))
    assert set(agent_export) == {f"{p}-public", f"{p}-internal", f"{p}-expired"}
    assert agent_export[f"{p}-public"]["owner"] == people["km"].username


# --- the command line --------------------------------------------------------------------------
def kefu(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEFU_")}
    env["KEFU_DATA_DIR"] = str(data_dir)
    return subprocess.run(
        [sys.executable, "-m", "kefu.cli", *args], env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def cli_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data_dir = tmp_path_factory.mktemp("kefu-cli")
    assert kefu(data_dir, "db", "upgrade").returncode == 0
    loaded = kefu(data_dir, "demo", "load")  # admin, km, agent, customer, ...
    assert loaded.returncode == 0, loaded.stderr
    return data_dir


def test_cli_import_and_export(cli_data_dir: Path, tmp_path: Path) -> None:
    source = write_jsonl(
        tmp_path / "kb.jsonl",
        {
            "external_id": "cli-1",
            "title": "公开问题",
            "body_markdown": "答案",
            "audience": "public",
            "category": "命令行/导入",
        },
        "{not json",
        {"external_id": "cli-3", "title": "内部问题", "kind": "unknown"},
        {"external_id": "cli-4", "title": "内部问题", "owner": "km"},
    )
    first = kefu(cli_data_dir, "kb", "import", str(source))
    assert first.returncode == 1, first.stderr
    report = json.loads(first.stdout)
    assert (report["created"], report["updated"], report["unchanged"]) == (2, 0, 0)
    assert [(e["line"], e["field"]) for e in report["errors"]] == [(2, None), (3, "kind")]
    assert all(e["message"] for e in report["errors"])

    clean = write_jsonl(tmp_path / "clean.jsonl", *(json.loads(line) for line in source.read_text().splitlines()[::3]))
    again = kefu(cli_data_dir, "kb", "import", str(clean))
    assert again.returncode == 0, again.stdout + again.stderr
    assert json.loads(again.stdout) == {"created": 0, "updated": 0, "unchanged": 2, "errors": []}

    drafted = kefu(
        cli_data_dir,
        "kb",
        "import",
        str(write_jsonl(tmp_path / "d.jsonl", {"external_id": "cli-d", "title": "草稿"})),
        "--as",
        "agent",
        "--draft",
    )
    assert drafted.returncode == 0 and json.loads(drafted.stdout)["created"] == 1
    nobody = kefu(cli_data_dir, "kb", "import", str(source), "--as", "nobody")
    assert nobody.returncode == 2 and "no active user" in nobody.stderr

    exported = kefu(cli_data_dir, "kb", "export", str(tmp_path / "out.jsonl"))
    assert exported.returncode == 0, exported.stderr
    assert json.loads(exported.stdout)["exported"] >= 2
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["external_id"] for r in records if r["external_id"].startswith("cli-")] == ["cli-1", "cli-4"]
    public = kefu(cli_data_dir, "kb", "export", "-", "--as", "customer")
    public_ids = [json.loads(line)["external_id"] for line in public.stdout.splitlines()]
    assert public.returncode == 0 and [i for i in public_ids if i.startswith("cli-")] == ["cli-1"]

    folder = tmp_path / "md"
    assert kefu(cli_data_dir, "kb", "export", str(folder), "--format", "markdown").returncode == 0
    files = {p.relative_to(folder).as_posix() for p in folder.rglob("*.md")}
    assert {"cli-4.md", "命令行/导入/cli-1.md"} <= files and "cli-d.md" not in files
    from_folder = kefu(cli_data_dir, "kb", "import", str(folder))
    assert from_folder.returncode == 0, from_folder.stdout
    assert json.loads(from_folder.stdout) == {"created": 0, "updated": 0, "unchanged": len(files), "errors": []}


@pytest.mark.skipif(not BAOXIAN_KB.exists(), reason="shared evaluation data not present")
def test_cli_imports_real_evaluation_data(cli_data_dir: Path, tmp_path: Path) -> None:
    # The first 300 articles of baoxianzhidao_faq (SophonPlus/ChineseNlpCorpus), read in place and cut
    # into a temporary file; never copied into the repository.
    with BAOXIAN_KB.open(encoding="utf-8") as kb:
        head = [next(kb) for _ in range(300)]
    sample = tmp_path / "baoxian-300.jsonl"
    sample.write_text("".join(head), encoding="utf-8")
    imported = kefu(cli_data_dir, "kb", "import", str(sample))
    assert imported.returncode == 0, imported.stdout[-2000:] + imported.stderr[-2000:]
    assert json.loads(imported.stdout) == {"created": 300, "updated": 0, "unchanged": 0, "errors": []}
    exported = kefu(cli_data_dir, "kb", "export", str(tmp_path / "out.jsonl"))
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    ids = {json.loads(line)["article_id"] for line in head}
    assert exported.returncode == 0 and ids <= {r["external_id"] for r in records}
    texts = {json.loads(line)["article_id"]: json.loads(line)["text"].strip() for line in head}
    assert all(r["body_markdown"] == texts[r["external_id"]] for r in records if r["external_id"] in ids)
