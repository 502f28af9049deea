"""One process at a time: the claim is taken without waiting, held while the work runs, let go after."""

from __future__ import annotations

import pytest

from conftest import is_postgres
from kefu.db.claims import advisory_key, one_process


@pytest.mark.skipif(is_postgres(), reason="no database involved; runs in the SQLite run")
def test_keys_are_stable_and_distinct() -> None:
    assert advisory_key("kefu.chat.sweep") == advisory_key("kefu.chat.sweep")
    assert advisory_key("kefu.chat.sweep") != advisory_key("kefu.kb.embeddings:m")
    assert 0 <= advisory_key("x") < 2**63


async def test_a_held_claim_is_refused_to_others_until_let_go(app) -> None:  # noqa: ANN001
    factory = app.state.session_factory
    async with one_process(factory, "test.claim") as first:
        assert first
        async with one_process(factory, "test.claim") as second:
            # PostgreSQL: another transaction holds it. SQLite serves one process: always granted.
            assert second is (not is_postgres())
        async with one_process(factory, "test.other-claim") as other:
            assert other
    async with one_process(factory, "test.claim") as again:
        assert again
