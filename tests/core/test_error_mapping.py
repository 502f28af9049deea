"""Overload answers 503 with Retry-After (a retryable condition), never a 500."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as SqlPoolTimeout

from kefu.app import create_app


@pytest.fixture(scope="module")
def failing_app(settings):  # noqa: ANN001, ANN201
    # A separate app instance with test-only routes; the shared app keeps only real routes.
    app = create_app(settings)

    @app.get("/boom/pool")
    async def pool() -> None:
        raise SqlPoolTimeout("QueuePool limit of size 10 overflow 20 reached")

    @app.get("/boom/locked")
    async def locked() -> None:
        raise OperationalError("INSERT ...", {}, Exception("database is locked"))

    @app.get("/boom/other")
    async def other() -> None:
        raise OperationalError("SELECT ...", {}, Exception("no such column: x"))

    return app


@pytest.mark.parametrize(("path", "status"), [("/boom/pool", 503), ("/boom/locked", 503), ("/boom/other", 500)])
async def test_database_overload_is_retryable(failing_app, path: str, status: int) -> None:  # noqa: ANN001
    transport = httpx.ASGITransport(app=failing_app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get(path)
    assert response.status_code == status
    assert set(response.json()) == {"error"}
    if status == 503:
        assert response.headers["Retry-After"] == "1"
        assert response.json()["error"]["code"] == "unavailable"
