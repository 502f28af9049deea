"""HMAC-SHA256 request signatures: one implementation for inbound webhooks, CTI events and outbound deliveries.

The signed text is ``f"{timestamp}.".encode() + raw_body``; the signature travels as
``X-Kefu-Signature: sha256=<hex>`` next to ``X-Kefu-Timestamp: <unix seconds>``. The timestamp is part
of what is signed, so a captured request cannot be replayed after the tolerance window, and the
comparison is constant-time. Secrets are never logged or put into error messages.
"""

from __future__ import annotations

import hashlib
import hmac
import time

TIMESTAMP_HEADER = "X-Kefu-Timestamp"
SIGNATURE_HEADER = "X-Kefu-Signature"
DELIVERY_HEADER = "X-Kefu-Delivery-Id"
EVENT_HEADER = "X-Kefu-Event"
SCHEME = "sha256="
DEFAULT_TOLERANCE_SECONDS = 300


class SignatureProblem(Exception):
    """Why a request's signature was refused: ``missing``, ``malformed``, ``stale`` or ``invalid``."""

    def __init__(self, code: str, message: str, header: str = SIGNATURE_HEADER) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.header = header


def signature(secret: str, timestamp: int | str, body: bytes) -> str:
    """``sha256=<hex>`` of ``f"{timestamp}.{body}"`` under ``secret``."""
    digest = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return SCHEME + digest


def signed_headers(secret: str, body: bytes, *, now: float | None = None) -> dict[str, str]:
    """The two headers that sign ``body`` now."""
    timestamp = int(time.time() if now is None else now)
    return {TIMESTAMP_HEADER: str(timestamp), SIGNATURE_HEADER: signature(secret, timestamp, body)}


def verify(
    secret: str,
    timestamp_header: str | None,
    signature_header: str | None,
    body: bytes,
    *,
    now: float | None = None,
    tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS,
) -> None:
    """Raise ``SignatureProblem`` unless ``signature_header`` signs ``body`` at a fresh ``timestamp_header``."""
    if not timestamp_header:
        raise SignatureProblem("missing", f"the {TIMESTAMP_HEADER} header is missing", TIMESTAMP_HEADER)
    if not signature_header:
        raise SignatureProblem("missing", f"the {SIGNATURE_HEADER} header is missing", SIGNATURE_HEADER)
    text = timestamp_header.strip()
    if not text.isdigit() or len(text) > 12:
        raise SignatureProblem("malformed", f"{TIMESTAMP_HEADER} must be whole unix seconds", TIMESTAMP_HEADER)
    timestamp = int(text)
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_seconds:
        raise SignatureProblem(
            "stale", f"{TIMESTAMP_HEADER} is more than {tolerance_seconds} s away from now", TIMESTAMP_HEADER
        )
    given = signature_header.strip()
    if not given.startswith(SCHEME):
        raise SignatureProblem("malformed", f"{SIGNATURE_HEADER} must look like sha256=<hex>")
    expected = signature(secret, timestamp, body)
    # Constant-time over bytes: the time taken says nothing about how much of the signature matched.
    if not hmac.compare_digest(expected.encode("ascii"), given.encode("utf-8", "replace")):
        raise SignatureProblem("invalid", "the signature does not match the body")
