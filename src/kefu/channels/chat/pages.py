"""HTML pages of the web chat: a demo host page that embeds the widget with its one script tag (what a
customer's site does), and the chat's WebSockets (socket.py)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from kefu.channels.chat import socket
from kefu.core.policy import Principal, authorize
from kefu.web.pages import render

router = APIRouter(prefix="", tags=["chat"], include_in_schema=False)
router.include_router(socket.router)


@router.get("/chat/demo")
async def demo_page(request: Request, principal: Principal = authorize("chat_widget", "read")) -> Response:
    """A stand-in for a customer's web page: some content and the widget's script tag."""
    return render(request, "chat/demo.html", principal, widget="default")
