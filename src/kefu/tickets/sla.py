"""SLA clocks on business calendars. (Interface fixed; the implementation is being written.)"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from kefu.tickets.models import WorkOrder


async def start_clocks(db: AsyncSession, work_order: WorkOrder, now: datetime) -> None:
    """On creation: choose the policy, set the due times."""


async def on_status_change(db: AsyncSession, work_order: WorkOrder, old: str, new: str, now: datetime) -> None:
    """Pending pauses, leaving pending resumes (due times move by the paused business time)..."""


async def on_first_response(db: AsyncSession, work_order: WorkOrder, now: datetime) -> None:
    """The first public reply by staff stops the first-response clock."""


async def on_classification_change(db: AsyncSession, work_order: WorkOrder, now: datetime) -> None:
    """Type, priority or team changed: the matching policy may differ; due times follow it."""
