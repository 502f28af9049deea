"""``/ws``: pushes the events that concern the signed-in user to their browser."""

from __future__ import annotations

import asyncio
import contextlib
import json

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from kefu.core.auth import resolve_principal
from kefu.core.errors import ApiError
from kefu.core.policy import Authorize

router = APIRouter()
_subscribe = Authorize("event", "subscribe")
PING_SECONDS = 25


@router.websocket("/ws")
async def events_socket(websocket: WebSocket) -> None:
    # Browsers send cookies with the upgrade; refuse foreign origins so another site's page
    # cannot read a signed-in user's events (WebSockets are not covered by CORS).
    origin = websocket.headers.get("origin")
    settings = websocket.app.state.settings
    if origin and origin.rstrip("/") not in _allowed_origins(websocket, settings.base_url):
        await _refuse(websocket, 4403)
        return
    try:
        principal = await resolve_principal(websocket)  # type: ignore[arg-type]
        from kefu.core.policy import check

        check(principal, _subscribe.obj, _subscribe.action)
    except ApiError as exc:
        await _refuse(websocket, 4401 if exc.status == 401 else 4403)
        return
    bus = websocket.app.state.event_bus
    subscription = bus.subscribe()
    await websocket.accept()
    await websocket.send_text(json.dumps({"type": "hello", "data": {"user_id": principal.user_id}}))

    async def pump() -> None:
        while True:
            try:
                event = await asyncio.wait_for(subscription.get(), timeout=PING_SECONDS)
            except TimeoutError:
                await websocket.send_text('{"type":"ping"}')
                continue
            if event.concerns(principal.user_id or -1, principal.roles):
                await websocket.send_text(event.to_json())

    async def drain() -> None:
        # The client sends nothing we need; reading detects the disconnect.
        while True:
            await websocket.receive_text()

    tasks = [asyncio.create_task(pump()), asyncio.create_task(drain())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    except WebSocketDisconnect:
        pass
    finally:
        subscription.close()
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, Exception):
                await task


async def _refuse(websocket: WebSocket, code: int) -> None:
    # Closed before accept(), the handshake fails with a bare HTTP 403 that browser code only sees as
    # 1006; accepting first delivers the reason (4401: sign in, 4403: forbidden). Nothing is sent.
    await websocket.accept()
    await websocket.close(code=code)


def _allowed_origins(websocket: WebSocket, base_url: str) -> set[str]:
    host = websocket.headers.get("host", "")
    return {base_url, f"http://{host}", f"https://{host}"}


# The route-coverage test reads this: WebSocket routes have no dependency to carry it.
events_socket.__kefu_permission__ = _subscribe  # type: ignore[attr-defined]
