"""Work-order pages: lists with filters and saved views, the work order, its actions."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="", tags=["work orders"])
