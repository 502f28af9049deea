#!/usr/bin/env python3
"""Asterisk Manager Interface (AMI) -> kefu CTI events.

Connects to Asterisk's AMI, follows each call by its Linkedid and posts kefu's call events, signed, to
``POST /api/v1/cti/events`` (see docs/integrations/asterisk.md). Standard library only: runs on the PBX host
with any Python >= 3.9.

    KEFU_URL=https://kefu.example.cn KEFU_CTI_SECRET=... [KEFU_PBX=default] \\
    AMI_HOST=127.0.0.1 AMI_PORT=5038 AMI_USER=kefu AMI_SECRET=... python3 kefu_ami_bridge.py

AMI event -> kefu event (calls are followed from the caller's channel, Uniqueid == Linkedid):
    Newchannel (first channel of a Linkedid)  -> call_new (CallerIDNum, Exten)
    QueueCallerJoin                           -> queued (Queue)
    UserEvent KefuQueue (Queue)               -> queued: the dialplan hands the call to a kefu queue
    UserEvent KefuIvrInput (Digits)           -> ivr_input
    DialBegin                                 -> ringing (extension from DestChannel, "PJSIP/8001-0000002a")
    DialEnd with DialStatus ANSWER            -> answered
    Hold / Unhold                             -> held / unheld
    BlindTransfer                             -> transferred (to_extension = Extension)
    VarSet MIXMONITOR_FILENAME                -> remembered; recording_available (path) after the hang-up
    Hangup of the caller's channel            -> hung_up (Cause-txt)

Events carry ``seq`` 1, 2, 3... per call and ``event_id`` "<Linkedid>-<seq>"; a failed post is retried
(kefu stores each event once, in any order). The numbering lives in memory: calls in progress while the
bridge restarts are numbered anew, and kefu refuses the clashing events (409; logged here).
Set ``timestampevents = yes`` in manager.conf so events carry Asterisk's own time.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger("kefu_ami_bridge")
Event = dict[str, Any]
_CHANNEL = re.compile(r"^[A-Za-z0-9]+/(?P<ext>[^-@;/]+)")


def extension_of(channel: str) -> str | None:
    """ "PJSIP/8001-0000002a" -> "8001"; "Local/8001@agents-00000003;1" -> "8001"."""
    found = _CHANNEL.match(channel or "")
    return found.group("ext") if found else None


def sign(secret: str, timestamp: str, payload: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + payload, hashlib.sha256).hexdigest()


@dataclass
class _Call:
    seq: int = 0
    recording: str | None = None


class Translator:
    """AMI events in, kefu events out. Pure (no I/O): tested on its own."""

    def __init__(self) -> None:
        self.calls: dict[str, _Call] = {}

    def _event(self, linkedid: str, type_: str, at: str, **fields: Any) -> Event:
        call = self.calls[linkedid]
        call.seq += 1
        body = {"event_id": f"{linkedid}-{call.seq}", "call_id": linkedid, "seq": call.seq, "type": type_, "at": at}
        body.update({k: v for k, v in fields.items() if v is not None})
        return body

    @staticmethod
    def _at(ami: dict[str, str]) -> str:
        stamp = ami.get("Timestamp")
        moment = float(stamp) if stamp else time.time()
        return datetime.fromtimestamp(moment, UTC).isoformat()

    def feed(self, ami: dict[str, str]) -> list[Event]:
        name = ami.get("Event", "")
        linkedid = ami.get("Linkedid") or ami.get("TransfereeLinkedid") or ""
        at = self._at(ami)
        if name == "Newchannel":
            if ami.get("Uniqueid") == linkedid and linkedid not in self.calls:
                self.calls[linkedid] = _Call()
                caller = ami.get("CallerIDNum")
                return [
                    self._event(
                        linkedid,
                        "call_new",
                        at,
                        caller=None if caller in (None, "", "<unknown>") else caller,
                        called=ami.get("Exten") or None,
                    )
                ]
            return []
        if linkedid not in self.calls:
            return []  # a channel of a call that started before the bridge: not followed
        if name == "QueueCallerJoin" or (name == "UserEvent" and ami.get("UserEvent") == "KefuQueue"):
            return [self._event(linkedid, "queued", at, queue=ami.get("Queue"))]
        if name == "UserEvent" and ami.get("UserEvent") == "KefuIvrInput":
            return [self._event(linkedid, "ivr_input", at, digits=ami.get("Digits") or None)]
        if name == "DialBegin":
            extension = extension_of(ami.get("DestChannel", ""))
            return [self._event(linkedid, "ringing", at, extension=extension)] if extension else []
        if name == "DialEnd" and ami.get("DialStatus") == "ANSWER":
            extension = extension_of(ami.get("DestChannel", ""))
            return [self._event(linkedid, "answered", at, extension=extension)]
        if name == "Hold":
            return [self._event(linkedid, "held", at)]
        if name == "Unhold":
            return [self._event(linkedid, "unheld", at)]
        if name == "BlindTransfer" and ami.get("Extension"):
            return [self._event(linkedid, "transferred", at, to_extension=ami["Extension"])]
        if name == "VarSet" and ami.get("Variable") == "MIXMONITOR_FILENAME" and ami.get("Value"):
            self.calls[linkedid].recording = ami["Value"]
            return []
        if name == "Hangup" and ami.get("Uniqueid") == linkedid:
            events = [self._event(linkedid, "hung_up", at, cause=(ami.get("Cause-txt") or None))]
            recording = self.calls[linkedid].recording
            if recording:
                events.append(self._event(linkedid, "recording_available", at, path=recording))
            del self.calls[linkedid]
            return events
        return []


# --- AMI protocol -----------------------------------------------------------------------------------
async def read_message(reader: asyncio.StreamReader) -> dict[str, str] | None:
    """One AMI message ("Key: Value" lines up to a blank line); None when the connection closed."""
    message: dict[str, str] = {}
    while True:
        line = await reader.readline()
        if not line:
            return None
        text = line.decode("utf-8", "replace").rstrip("\r\n")
        if not text:
            if message:
                return message
            continue
        key, sep, value = text.partition(":")
        if sep:
            message[key.strip()] = value.strip()


def action(**fields: str) -> bytes:
    return "".join(f"{k}: {v}\r\n" for k, v in fields.items()).encode() + b"\r\n"


# --- posting to kefu --------------------------------------------------------------------------------
def post_event(url: str, secret: str, pbx: str, event: Event, timeout: float = 10) -> int:
    body = json.dumps(event, separators=(",", ":")).encode()
    ts = str(int(time.time()))
    request = urllib.request.Request(  # noqa: S310 - the configured kefu URL
        url.rstrip("/") + "/api/v1/cti/events",
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "X-Kefu-Timestamp": ts,
            "X-Kefu-Signature": sign(secret, ts, body),
            "X-Kefu-Pbx": pbx,
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - the configured URL
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


Sender = Callable[[Event], Awaitable[int]]


async def deliver(send: Sender, event: Event, *, attempts: int = 8, first_delay: float = 0.5) -> bool:
    """Post until kefu answers; 4xx other than 401/429 are not retried (the event itself is refused)."""
    delay = first_delay
    for attempt in range(attempts):
        try:
            status = await send(event)
        except OSError as exc:
            status = 0
            log.warning("kefu unreachable: %s", exc)
        if 200 <= status < 300:
            return True
        if status in (400, 404, 409, 422):
            log.error("kefu refused event %s: HTTP %s", event.get("event_id"), status)
            return False
        if attempt + 1 < attempts:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30)
    log.error("event %s not delivered after %s attempts", event.get("event_id"), attempts)
    return False


async def run(host: str, port: int, username: str, secret: str, send: Sender, *, stop_after: int | None = None) -> int:
    """Follow AMI until the connection closes; returns how many kefu events were delivered."""
    reader, writer = await asyncio.open_connection(host, port)
    delivered = 0
    try:
        banner = await reader.readline()
        if not banner.startswith(b"Asterisk Call Manager"):
            raise ConnectionError(f"not an AMI server: {banner[:60]!r}")
        writer.write(action(Action="Login", Username=username, Secret=secret, Events="call,agent,dtmf"))
        await writer.drain()
        answer = await read_message(reader)
        if not answer or answer.get("Response") != "Success":
            raise PermissionError("AMI login refused")
        translator = Translator()
        pending: list[asyncio.Task[bool]] = []
        while True:
            message = await read_message(reader)
            if message is None:
                break
            if "Event" not in message:
                continue
            for event in translator.feed(message):
                # Posted concurrently: kefu orders a call's events by seq, whatever order they arrive in.
                pending.append(asyncio.ensure_future(deliver(send, event)))
            if stop_after is not None and len(pending) >= stop_after:
                break
        results = await asyncio.gather(*pending)
        delivered = sum(1 for ok in results if ok)
    finally:
        writer.close()
    return delivered


def main() -> None:  # pragma: no cover - configuration from the environment
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    url, kefu_secret, pbx = os.environ["KEFU_URL"], os.environ["KEFU_CTI_SECRET"], os.environ.get("KEFU_PBX", "default")

    async def send(event: Event) -> int:
        return await asyncio.get_running_loop().run_in_executor(None, post_event, url, kefu_secret, pbx, event)

    while True:
        try:
            asyncio.run(
                run(
                    os.environ.get("AMI_HOST", "127.0.0.1"),
                    int(os.environ.get("AMI_PORT", "5038")),
                    os.environ["AMI_USER"],
                    os.environ["AMI_SECRET"],
                    send,
                )
            )
            log.warning("AMI connection closed; reconnecting")
        except (OSError, ConnectionError) as exc:
            log.warning("AMI: %s; reconnecting in 5 s", exc)
        time.sleep(5)


if __name__ == "__main__":
    main()
