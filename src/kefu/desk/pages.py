"""The agent desktop and customer 360 pages."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="", tags=["desk"])
