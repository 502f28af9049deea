"""REST routes of business calendars, SLA policies, escalations and the escalation report."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/api/v1", tags=["sla"])
