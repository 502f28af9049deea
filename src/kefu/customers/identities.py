"""Identity normalization: one way to write each phone number, address or handle, so that looking a
customer up by any identity is one exact, indexed query on ``(kind, value)``.

    phone    E.164 (``+8613812345678``, ``+862088776655``); national numbers are read as Chinese
    email    trimmed and lower-cased
    chat     a web-chat visitor id: trimmed, printable, bounded
    sms      an SMS gateway's handle: the same rules as chat
    social   ``<network>:<handle>`` (``wechat:wxid_abc``); the network lower-cased
    crm      ``<system>:<id>`` (``salesforce:0031x00000AbCdE``); the system lower-cased
"""

from __future__ import annotations

import re
import unicodedata

import phonenumbers

from kefu.core.errors import Invalid
from kefu.customers.models import IdentityKind

DEFAULT_REGION = "CN"
MAX_RAW_CHARS = 254  # what any input may be before normalization
MAX_HANDLE_CHARS = 200
KINDS = tuple(kind.value for kind in IdentityKind)

_PHONE_CHARS = re.compile(r"^\(?\+?[0-9 ()./-]+$")
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,189}\.[^@\s.]{1,63}$")
_EMAIL_DOMAIN = re.compile(r"^[a-z0-9\u00a0-\uffff]([a-z0-9\u00a0-\uffff-]*[a-z0-9\u00a0-\uffff])?$")
_PREFIX = re.compile(r"^[a-z][a-z0-9_.-]{0,31}$")
# Chinese landline: an area code (2-3 digits, not starting with 1) and a 7-8 digit local number.
# Some still valid 7-digit numbers are missing from libphonenumber's metadata, so these are accepted
# when they are possible numbers of that shape.
_CN_LANDLINE = re.compile(r"^[2-9][0-9]{8,10}$")


def _printable(value: str, what: str) -> str:
    value = value.strip()
    if not value:
        raise Invalid(f"{what} must not be empty")
    if len(value) > MAX_HANDLE_CHARS:
        raise Invalid(f"{what} is longer than {MAX_HANDLE_CHARS} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise Invalid(f"{what} contains invalid Unicode") from None
    if not value.isprintable():
        raise Invalid(f"{what} contains control or invisible characters")
    return value


def normalize_phone(value: str, region: str = DEFAULT_REGION) -> str:
    """``"138 1234 5678"``, ``"+86 138..."``, ``"0086 138..."``, ``"(0755)12345678"`` -> E.164."""
    text = unicodedata.normalize("NFKC", value).strip()  # full-width digits and brackets too
    if not text:
        raise Invalid("a phone number must not be empty")
    if len(text) > 40 or not _PHONE_CHARS.match(text) or sum(ch.isdigit() for ch in text) < 3:
        raise Invalid(f"not a phone number: {value[:40]!r} (digits, spaces, +, -, ( ) only)")
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        raise Invalid(f"not a phone number: {value[:40]!r}") from None
    valid = phonenumbers.is_valid_number(number)
    if not valid and number.country_code == 86 and phonenumbers.is_possible_number(number):
        valid = bool(_CN_LANDLINE.match(phonenumbers.national_significant_number(number)))
    if not valid:
        raise Invalid(f"not a valid phone number: {value[:40]!r}")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normalize_email(value: str) -> str:
    text = value.strip()
    if len(text) > MAX_RAW_CHARS or not text.isprintable() or not _EMAIL.match(text):
        raise Invalid(f"not an email address: {value[:60]!r}")
    text = text.lower()
    local, domain = text.rsplit("@", 1)
    if any(not _EMAIL_DOMAIN.match(label) for label in domain.split(".")):
        raise Invalid(f"not an email address: {value[:60]!r}")
    return f"{local}@{domain}"


def _prefixed(value: str, kind: str, prefix_name: str) -> str:
    text = _printable(value, f"a {kind} identity")
    prefix, sep, rest = text.partition(":")
    prefix, rest = prefix.strip().lower(), rest.strip()
    if not sep or not rest or not _PREFIX.match(prefix):
        raise Invalid(f"a {kind} identity is written <{prefix_name}>:<id>, e.g. {_EXAMPLES[kind]!r}")
    if any(ch.isspace() for ch in rest):
        raise Invalid(f"a {kind} id must not contain spaces")
    return f"{prefix}:{rest}"


_EXAMPLES = {"social": "wechat:wxid_abc123", "crm": "salesforce:0031x00000AbCdE"}


def normalize_identity(kind: str, value: str) -> str:
    """The one stored form of ``value`` as an identity of ``kind``; ``Invalid`` (422) with the reason."""
    if not isinstance(value, str):
        raise Invalid("an identity value must be text")
    if len(value) > MAX_RAW_CHARS:
        raise Invalid(f"an identity value is longer than {MAX_RAW_CHARS} characters")
    if kind == IdentityKind.phone:
        return normalize_phone(value)
    if kind == IdentityKind.email:
        return normalize_email(value)
    if kind in (IdentityKind.chat, IdentityKind.sms):
        return _printable(value, f"a {kind} id")
    if kind == IdentityKind.social:
        return _prefixed(value, "social", "network")
    if kind == IdentityKind.crm:
        return _prefixed(value, "crm", "system")
    raise Invalid(f"unknown identity kind {str(kind)[:20]!r}; one of {', '.join(KINDS)}")


def guess_identities(text: str) -> list[tuple[str, str]]:
    """Every ``(kind, normalized value)`` that ``text`` (typed into a search box) could be."""
    found: list[tuple[str, str]] = []
    for kind in KINDS:
        try:
            found.append((kind, normalize_identity(kind, text)))
        except Invalid:
            continue
    return found
