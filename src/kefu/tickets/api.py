"""REST routes of work orders: lifecycle, comments, tags, links, merges, attachments, macros, views."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/api/v1", tags=["work orders"])
