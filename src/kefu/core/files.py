"""Uploaded files, whatever they are attached to: clean names, a short allow-list of content types,
size checks and the headers that serve them only as downloads.

Served files carry ``Content-Disposition: attachment``, ``nosniff`` and a sandboxing CSP, and a content
type from ``SAFE_TYPES`` (anything else, HTML and SVG included, is sent as ``application/octet-stream``),
so an uploaded file can never run as a page of kefu's origin.
"""

from __future__ import annotations

import mimetypes
import unicodedata
from urllib.parse import quote

from kefu.core.errors import ApiError, Invalid

SAFE_TYPES = frozenset(
    {
        "application/pdf",
        "image/png",
        "image/jpeg",
        "image/gif",
        "image/webp",
        "text/plain",
        "text/csv",
        "application/zip",
        "application/msword",
        "application/vnd.ms-excel",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    }
)


def clean_filename(name: str) -> str:
    """The last path component, without control characters, at most 200 characters."""
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in unicodedata.normalize("NFC", name) if unicodedata.category(ch)[0] != "C")
    name = name.strip().strip(".")
    return name[:200] or "attachment"


def content_type_for(filename: str) -> str:
    guessed, _ = mimetypes.guess_type(filename)
    return guessed if guessed in SAFE_TYPES else "application/octet-stream"


def check_size(data: bytes, max_bytes: int) -> None:
    """Refuse an empty file (422) or one over ``max_bytes`` (413)."""
    if len(data) > max_bytes:
        raise ApiError(413, "payload_too_large", f"the file is larger than {max_bytes} bytes")
    if not data:
        raise Invalid("the file is empty")


def download_headers(filename: str) -> dict[str, str]:
    ascii_name = filename.encode("ascii", "ignore").decode().replace('"', "") or "attachment"
    return {
        "Content-Disposition": f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename)}",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "sandbox; default-src 'none'",
        "Cache-Control": "private, max-age=0",
    }
