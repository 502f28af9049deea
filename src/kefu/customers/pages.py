"""Customer pages: search, create, edit, merge."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="", tags=["customers"])
