"""Shared API types: text that is safe to store on every database, strict request models."""

from __future__ import annotations

import re
import unicodedata
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import Path, Query
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints


class RequestModel(BaseModel):
    """Request bodies refuse unknown fields: a typo must fail loudly, not be ignored."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class ResponseModel(BaseModel):
    model_config = ConfigDict(from_attributes=True)


_ALLOWED_CONTROLS_MULTILINE = {"\n", "\t", "\r"}


def _storable(value: str, *, multiline: bool) -> str:
    # Lone surrogates cannot be encoded as UTF-8, and PostgreSQL refuses NUL in text: refuse both
    # here with a clear 422 instead of a database error later.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text contains invalid Unicode (lone surrogates)") from None
    allowed = _ALLOWED_CONTROLS_MULTILINE if multiline else set()
    for ch in value:
        if unicodedata.category(ch) == "Cc" and ch not in allowed:
            raise ValueError(f"text contains a control character (U+{ord(ch):04X})")
    return value


def single_line(value: str) -> str:
    return _storable(value, multiline=False)


def multi_line(value: str) -> str:
    return _storable(value, multiline=True)


def _time_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r}") from None
    return value


_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,189}\.[^@\s.]{1,63}$")


def _email(value: str) -> str:
    if not _EMAIL.match(value):
        raise ValueError("not an email address")
    return value.lower()


Name = Annotated[str, StringConstraints(min_length=1, max_length=128), AfterValidator(single_line)]
ShortText = Annotated[str, StringConstraints(max_length=1000), AfterValidator(multi_line)]
Username = Annotated[str, StringConstraints(min_length=2, max_length=64, pattern=r"^[A-Za-z0-9._@-]+$")]
Email = Annotated[str, StringConstraints(max_length=254), AfterValidator(single_line), AfterValidator(_email)]
TimeZone = Annotated[str, StringConstraints(max_length=64), AfterValidator(_time_zone)]
LanguageTag = Annotated[
    str, StringConstraints(min_length=2, max_length=16, pattern=r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$")
]
Password = Annotated[str, StringConstraints(max_length=256), AfterValidator(single_line)]

# Ids fit a signed 64-bit integer: a larger number is a 422, never a database overflow.
MAX_ID = 2**63 - 1
DbId = Annotated[int, Field(ge=1, le=MAX_ID)]
IdParam = Annotated[int, Path(ge=1, le=MAX_ID)]
IdQuery = Annotated[int, Query(ge=1, le=MAX_ID)]


def query_text(max_length: int, *, min_length: int = 0) -> object:
    """A free-text query parameter, refused (422) with control characters or invalid Unicode."""
    return Annotated[str, Query(min_length=min_length, max_length=max_length), AfterValidator(single_line)]
