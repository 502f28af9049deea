"""Helpers of the webhook channel tests: channels, signed posts, a real HTTP receiver on loopback, and a
job runner that drives deliveries without waiting out real backoff delays."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

from kefu.channels.intake import CHANNEL_PRINCIPAL
from kefu.channels.webhooks import service
from kefu.channels.webhooks.models import WebhookChannel
from kefu.channels.webhooks.schemas import ChannelCreate
from kefu.core import jobs

SECRET = "s3cret-for-tests-0123456789"


def code() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


def prefix() -> str:
    return f"n{uuid.uuid4().hex[:10]}"


async def make_channel(app: Any, **overrides: Any) -> WebhookChannel:
    spec = {"code": code(), "kind": "social", "name": "测试渠道", "secret": SECRET, "identity_prefix": prefix()}
    spec.update(overrides)
    async with app.state.session_factory() as db, db.begin():
        return await service.create_channel(db, CHANNEL_PRINCIPAL, ChannelCreate.model_validate(spec))


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """Written out here on purpose (not kefu's helper): the tests check kefu against the definition."""
    return "sha256=" + hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def body_of(messages: Any) -> bytes:
    return json.dumps(messages, ensure_ascii=False).encode()


async def post_signed(
    client: httpx.AsyncClient,
    channel_code: str,
    messages: Any,
    *,
    secret: str = SECRET,
    timestamp: int | None = None,
    raw: bytes | None = None,
) -> httpx.Response:
    body = raw if raw is not None else body_of(messages)
    ts = int(time.time()) if timestamp is None else timestamp
    headers = {
        "X-Kefu-Timestamp": str(ts),
        "X-Kefu-Signature": sign(secret, ts, body),
        "Content-Type": "application/json",
    }
    return await client.post(f"/api/v1/channels/{channel_code}/messages", content=body, headers=headers)


def message(message_id: str, sender: str, sent_at: str, text: str = "你好", **extra: Any) -> dict[str, Any]:
    return {"message_id": message_id, "from": sender, "to": "10690000", "text": text, "sent_at": sent_at, **extra}


# --- a real receiver ------------------------------------------------------------------------------------
@dataclass
class Received:
    path: str
    delivery_id: str
    event: str
    body: dict[str, Any]
    signature_ok: bool
    answered: int


@dataclass
class Receiver:
    """An HTTP server on 127.0.0.1 that checks signatures, fails the first ``fail_first`` attempts of each
    delivery with 503 (or always answers ``status``), and records everything it was sent."""

    secret: str = SECRET
    fail_first: int = 0
    status: int = 200
    requests: list[Received] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> Receiver:
        receiver = self
        seen: Counter[str] = Counter()
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                ts = self.headers.get("X-Kefu-Timestamp", "")
                ok = ts.isdigit() and hmac.compare_digest(
                    sign(receiver.secret, int(ts), body), self.headers.get("X-Kefu-Signature", "")
                )
                delivery_id = self.headers.get("X-Kefu-Delivery-Id", "")
                with lock:
                    seen[delivery_id] += 1
                    answer = 401 if not ok else (503 if seen[delivery_id] <= receiver.fail_first else receiver.status)
                    receiver.requests.append(
                        Received(
                            self.path, delivery_id, self.headers.get("X-Kefu-Event", ""), json.loads(body), ok, answer
                        )
                    )
                self.send_response(answer)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"ok" if answer < 300 else b"try later")

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def effective(self, delivery_id: str | None = None) -> list[Received]:
        """Requests the receiver accepted (2xx), after dropping repeats of a delivery id it had accepted."""
        accepted: dict[str, Received] = {}
        for r in self.requests:
            if 200 <= r.answered < 300 and r.delivery_id not in accepted:
                accepted[r.delivery_id] = r
        return [r for d, r in accepted.items() if delivery_id is None or d == delivery_id]


async def run_jobs(app: Any, settings: Any, *, rounds: int = 12, **overrides: Any) -> int:
    """Run due jobs until none is left (retry delays of 0 s by default, so no test waits them out)."""
    fast = settings.model_copy(update={"webhooks_retry_base_seconds": 0, **overrides})
    ran = 0
    for _ in range(rounds):
        count = await jobs.run_due_jobs(app.state.session_factory, fast, worker="webhooks-test", limit=50)
        ran += count
        if not count:
            break
    return ran
