"""Migrations: they describe exactly the models, and go down and up again cleanly (on the suite's backend)."""

from __future__ import annotations

import asyncio

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from kefu.db.engine import make_engine
from kefu.db.migrate import downgrade, upgrade
from kefu.db.models import metadata

# Reflection cannot read expression indexes (lower(username)); they are checked by behaviour instead.
pytestmark = pytest.mark.filterwarnings("ignore:Skipped unsupported reflection")


def _diff(url: str) -> list:
    async def run() -> list:
        engine = make_engine(url)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(
                    lambda sync: compare_metadata(
                        MigrationContext.configure(sync, opts={"compare_type": True}), metadata
                    )
                )
        finally:
            await engine.dispose()

    return asyncio.run(run())


def test_models_and_migrations_agree(database_url: str) -> None:
    # Functional indexes (lower(username)) and triggers live only in the migration; everything the
    # models declare must already be there.
    differences = [d for d in _diff(database_url) if not (d[0] == "remove_index" and d[1].name.startswith("uq_users_"))]
    assert differences == []


def test_downgrade_and_upgrade_round_trip(tmp_path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'round.db'}"
    upgrade(url)
    downgrade(url, "base")
    upgrade(url)
    assert [d for d in _diff(url) if d[0] != "remove_index"] == []
