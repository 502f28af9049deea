"""Customer import/export: CSV (UTF-8, BOM, GB18030) and JSONL, idempotent by external id, bad rows
reported by line while the rest import, nothing half-written; the export imports back unchanged."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest
from sqlalchemy import func, select

from conftest import REPO, principal_of, unique
from kefu.core.audit import AuditEntry
from kefu.core.errors import ApiError, Invalid
from kefu.core.policy import Principal
from kefu.customers import importer, service
from kefu.customers.models import Customer, Organisation


@pytest.fixture
async def supervisor(make) -> Principal:  # noqa: ANN001
    return principal_of(await make.user("supervisor"))


def mobile() -> str:
    return f"137{abs(hash(unique())) % 10**8:08d}"


async def run(app, principal: Principal, data: bytes, fmt: importer.Format = "csv") -> importer.ImportReport:  # noqa: ANN001
    async with app.state.session_factory() as db, db.begin():
        return await importer.import_bytes(db, principal, data, fmt)


async def by_external_id(app, external_id: str) -> Customer | None:  # noqa: ANN001
    async with app.state.session_factory() as db:
        return await db.scalar(select(Customer).where(Customer.external_id == external_id))


async def test_csv_import_is_idempotent(app, supervisor) -> None:  # noqa: ANN001
    tag = unique("imp")
    phone1, phone2 = mobile(), mobile()
    org = unique("公司")
    text = (
        "external_id,display_name,organisation,language,preferred_channel,phone,email,attr.会员等级,attr.products\n"
        f"{tag}-1,张三,{org},zh-CN,phone,{phone1[:3]}-{phone1[3:7]}-{phone1[7:]};010-12345678,{tag}@Example.com,金卡,A;B\n"
        f'{tag}-2,"Li, Lei",{org},,chat,+86 {phone2},,,\n'
    )
    first = await run(app, supervisor, text.encode())
    assert (first.created, first.updated, first.unchanged, first.errors) == (2, 0, 0, [])
    again = await run(app, supervisor, text.encode())
    assert (again.created, again.updated, again.unchanged, again.errors) == (0, 0, 2, [])

    one = await by_external_id(app, f"{tag}-1")
    assert one is not None and one.display_name == "张三" and one.language == "zh-CN"
    assert sorted((i.kind, i.value) for i in one.identities) == [
        ("email", f"{tag}@example.com".lower()),
        ("phone", "+861012345678"),
        ("phone", f"+86{phone1}"),
    ]
    assert one.attributes == {"会员等级": "金卡", "products": "A;B"}
    async with app.state.session_factory() as db:
        assert await db.scalar(select(func.count()).select_from(Organisation).where(Organisation.name == org)) == 1
        found = await service.find_by_identity(db, "phone", phone2)
        assert found is not None and found.display_name == "Li, Lei"

    # A changed row updates; empty cells keep what is there; attributes merge.
    changed = (
        "external_id,display_name,language,attr.会员等级,email\n"
        f"{tag}-1,张三丰,,白金卡,second-{tag}@example.com\n"
        f"{tag}-2,Li Lei,,,\n"
    )
    third = await run(app, supervisor, changed.encode())
    assert (third.created, third.updated, third.unchanged, third.errors) == (0, 2, 0, [])
    one = await by_external_id(app, f"{tag}-1")
    assert one is not None and one.display_name == "张三丰" and one.language == "zh-CN"
    assert one.attributes == {"会员等级": "白金卡", "products": "A;B"}
    assert len(one.identities) == 4
    async with app.state.session_factory() as db:
        entry = await db.scalar(
            select(AuditEntry).where(AuditEntry.action == "customer.import").order_by(AuditEntry.id.desc())
        )
        assert entry is not None and entry.details["updated"] == 2


async def test_bad_rows_are_reported_by_line_and_the_rest_import(app, supervisor) -> None:  # noqa: ANN001
    tag = unique("bad")
    taken = mobile()
    owner = await run(app, supervisor, f"external_id,display_name,phone\n{tag}-owner,Owner,{taken}\n".encode())
    assert owner.created == 1
    org = unique("半写公司")
    text = (
        "\ufeffExternal_ID,Display_Name,phone,organisation\n"  # a BOM and header case are fine
        f"{tag}-ok1,好,{mobile()},\n"  # line 2
        f"{tag}-junk,坏号码,12345,\n"  # line 3: junk phone
        f'{tag}-multi,"两行\n的名字",,\n'  # lines 4-5: a quoted cell over two lines (a name is one line)
        f"{tag}-noname,,{mobile()},\n"  # line 6: a new customer needs a name
        f"{tag}-taken,抢号,{taken},{org}\n"  # line 7: someone else's number (and a new organisation)
        f"{tag}-ok1,重复,,\n"  # line 8: duplicate external id
        ",没有编号,,\n"  # line 9: no external id
        f"{tag}-ok2,好二,,,extra\n"  # line 10: too many cells
        "\n"  # blank lines are skipped but counted
        f"{tag}-ok3,好三,,\n"  # line 12
    )
    report = await run(app, supervisor, text.encode("utf-8"))
    assert (report.created, report.updated, report.unchanged) == (2, 0, 0), json.dumps(
        report.as_dict(), ensure_ascii=False
    )
    lines = [e.line for e in report.errors]
    assert lines == [3, 4, 6, 7, 8, 9, 10], report.as_dict()
    messages = {e.line: e.message for e in report.errors}
    assert "phone" in messages[3] and "12345" in messages[3]
    assert "display_name" in messages[6]
    assert str((await by_external_id(app, f"{tag}-owner")).id) in messages[7]  # type: ignore[union-attr]
    assert "line 2" in messages[8]
    assert "external_id" in messages[9]
    # Nothing of a failed row is left behind: not the customer, not the organisation it named.
    assert await by_external_id(app, f"{tag}-taken") is None
    async with app.state.session_factory() as db:
        assert await db.scalar(select(Organisation).where(Organisation.name == org)) is None
    assert "control character" in messages[4]
    assert await by_external_id(app, f"{tag}-ok3") is not None


async def test_gb18030_csv(app, supervisor) -> None:  # noqa: ANN001
    tag = unique("gb")
    text = f"external_id,display_name,attr.地址\n{tag},欧阳娜娜,北京市朝阳区𠮷野家\n"
    report = await run(app, supervisor, text.encode("gb18030"))
    assert report.created == 1, report.as_dict()
    customer = await by_external_id(app, tag)
    assert customer is not None and customer.display_name == "欧阳娜娜"
    assert customer.attributes == {"地址": "北京市朝阳区𠮷野家"}


async def test_jsonl_import(app, supervisor) -> None:  # noqa: ANN001
    tag = unique("jl")
    number = mobile()
    lines = [
        json.dumps(
            {
                "external_id": f"{tag}-1",
                "display_name": "赵六",
                "phone": [number, "+1 650 253 0000"],
                "social": "wechat:wxid_" + tag,
                "attributes": {"vip": True, "score": 9.5},
                "attr.level": 3,
            },
            ensure_ascii=False,
        ),
        "not json",
        json.dumps({"external_id": f"{tag}-2", "display_name": "x", "colour": "red"}),
        "[1, 2]",
        json.dumps({"external_id": f"{tag}-3", "display_name": "y", "attributes": {"bad": [1]}}),
    ]
    report = await run(app, supervisor, "\n".join(lines).encode(), "jsonl")
    assert report.created == 1
    assert [e.line for e in report.errors] == [2, 3, 4, 5], report.as_dict()
    assert "colour" in report.errors[1].message
    customer = await by_external_id(app, f"{tag}-1")
    assert customer is not None
    assert customer.attributes == {"vip": True, "score": 9.5, "level": 3}
    assert {i.value for i in customer.identities} == {f"+86{number}", "+16502530000", f"wechat:wxid_{tag}"}
    # null clears an optional field; a missing key keeps it.
    await run(app, supervisor, json.dumps({"external_id": f"{tag}-1", "language": "en"}).encode(), "jsonl")
    await run(app, supervisor, json.dumps({"external_id": f"{tag}-1", "preferred_channel": None}).encode(), "jsonl")
    customer = await by_external_id(app, f"{tag}-1")
    assert customer is not None and customer.language == "en" and customer.preferred_channel is None


async def test_whole_file_problems_are_refused(app, supervisor, make) -> None:  # noqa: ANN001
    for data, message in (
        (b"display_name\nx\n", "external_id column"),
        (b"external_id,shoe_size\nx,42\n", "unknown column"),
        (b"external_id,phone,phone\n", "twice"),
        (b"", "empty"),
    ):
        with pytest.raises(Invalid, match=message):
            await run(app, supervisor, data)
    agent = principal_of(await make.user("agent"))
    with pytest.raises(ApiError) as caught:
        await run(app, agent, b"external_id\nx\n")
    assert caught.value.status == 403


async def test_export_imports_back_unchanged(app, supervisor) -> None:  # noqa: ANN001
    tag = unique("exp")
    await run(
        app,
        supervisor,
        f"external_id,display_name,phone,attr.k\n{tag},导出,{mobile()},v\n".encode(),
    )
    async with app.state.session_factory() as db, db.begin():
        bare = await service.create_customer(db, supervisor, display_name=unique("无编号"))
    async with app.state.session_factory() as db:
        lines = [line async for line in importer.export_lines(db)]
    records = [json.loads(line) for line in lines]
    mine = [r for r in records if r["external_id"] == tag or r["display_name"] == bare.display_name]
    assert len(mine) == 2
    assert mine[0]["attributes"] == {"k": "v"} and mine[0]["phone"][0].startswith("+86")
    assert mine[1]["external_id"].startswith(f"kefu:{bare.id}:")
    again = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in mine).encode()
    report = await run(app, supervisor, again, "jsonl")
    assert (report.created, report.updated, report.unchanged, report.errors) == (0, 0, 2, [])


async def test_command_line_import_and_export(app, settings, make, tmp_path) -> None:  # noqa: ANN001
    supervisor = await make.user("supervisor")
    tag = unique("cli")
    source = tmp_path / "customers.csv"
    source.write_text(f"external_id,display_name,email\n{tag},命令行,{tag}@example.com\n{tag}-bad,x,nope\n")
    env = {"KEFU_DATABASE_URL": settings.resolved_database_url, "KEFU_SECRET_KEY": "x", "PATH": "/usr/bin:/bin"}
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "kefu.cli", "customers", "import", str(source), "--as", supervisor.username],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr  # one row failed
    report = json.loads(done.stdout)
    assert report["created"] == 1 and [e["line"] for e in report["errors"]] == [3]
    out = tmp_path / "out.jsonl"
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "kefu.cli", "customers", "export", str(out), "--as", supervisor.username],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert any(json.loads(line)["external_id"] == tag for line in out.read_text().splitlines())
