"""Background parts of this channel started with the app (none yet)."""

from __future__ import annotations

from typing import Any


async def start(app: Any) -> None:
    return None


async def stop(app: Any) -> None:
    return None
