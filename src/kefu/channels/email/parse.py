"""Reading an inbound mail: structure limits, headers, charsets, bodies, attachments, loop protection.

Everything here is pure (no database). ``parse_mail`` either returns a ``ParsedMail`` or raises
``MailRejected`` with a quarantine reason; it never lets another exception out for a bad mail (a parser
surprise is reported as ``malformed``).

Charsets: the declared charset is honoured, but real Chinese mail is often mislabelled, so
- GB2312/GBK (and their aliases) are read as GB18030 (a superset), Big5 as Big5-HKSCS (a superset);
- bytes that are valid UTF-8 are read as UTF-8 whatever the label says (random GBK/Big5 text is
  practically never valid UTF-8, the reverse is common: UTF-8 mail labelled gb2312 or latin-1);
- undeclared or undecodable text is tried as UTF-8, then GB18030 and Big5, the CJK candidate with more
  common characters winning;
- RFC 2047 encoded words are decoded leniently (adjacent words of one charset are joined before
  decoding, so a character split across two words survives; missing padding and a missing ``?=`` at
  the end are tolerated); raw 8-bit header bytes go through the same guessing; RFC 2231 parameters.
HTML is sanitized with an allow-list (nh3): no script, style, event handlers or CSS; images only from
``cid:`` (parts of the mail itself), remote images are dropped so opening a mail tells no tracker.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import hashlib
import mimetypes
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import errors as mail_errors
from email import policy as mail_policy
from email.message import Message
from email.parser import BytesParser
from html import unescape
from typing import Any

import nh3

from kefu.channels.email.models import MESSAGE_ID_MAX, AutoKind, QuarantineReason
from kefu.core import files
from kefu.core.errors import Invalid


# =====================================================================================================
# Limits and results
# =====================================================================================================
@dataclass(frozen=True)
class Limits:
    max_message_bytes: int = 25 * 1024 * 1024
    max_parts: int = 200
    max_depth: int = 20
    max_attachment_bytes: int = 20 * 1024 * 1024
    max_body_chars: int = 200_000

    @classmethod
    def from_settings(cls, settings: Any) -> Limits:
        return cls(
            max_message_bytes=settings.email_max_message_bytes,
            max_parts=settings.email_max_parts,
            max_depth=settings.email_max_depth,
            max_attachment_bytes=settings.email_max_attachment_bytes,
            max_body_chars=settings.email_max_body_chars,
        )


class MailRejected(Exception):
    """The mail goes to quarantine with ``reason`` (a ``QuarantineReason``)."""

    def __init__(self, reason: str, detail: str, headers: HeaderSummary | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.headers = headers


@dataclass
class HeaderSummary:
    """What can be said about a mail even when it is rejected (for the quarantine list)."""

    message_id: str | None = None
    from_address: str = ""
    subject: str = ""


@dataclass
class Attachment:
    filename: str
    content_type: str
    data: bytes
    inline: bool = False
    content_id: str | None = None


@dataclass
class BounceInfo:
    original_message_ids: list[str] = field(default_factory=list)
    recipients: list[str] = field(default_factory=list)
    action: str = ""
    status: str = ""
    diagnostic: str = ""


@dataclass
class ParsedMail:
    message: Message
    message_id: str | None
    in_reply_to: str | None
    references: list[str]
    from_address: str | None  # normalized (lower case); None only when released without a sender
    from_name: str
    to: list[str]
    cc: list[str]
    subject: str
    date: datetime | None
    text: str
    html: str  # sanitized
    attachments: list[Attachment]
    auto_kind: AutoKind
    bounce: BounceInfo | None
    part_count: int
    depth: int
    notes: list[str] = field(default_factory=list)  # tolerated defects

    @property
    def summary(self) -> HeaderSummary:
        return HeaderSummary(self.message_id, self.from_address or "", self.subject)


# =====================================================================================================
# Charsets
# =====================================================================================================
_CHARSET_ALIASES = {
    **dict.fromkeys(
        (
            "gb2312",
            "gbk",
            "x-gbk",
            "cp936",
            "ms936",
            "windows-936",
            "gb_2312-80",
            "gb2312-80",
            "gb_2312",
            "euc-cn",
            "euccn",
            "x-euc-cn",
            "csgb2312",
            "chinese",
            "iso-ir-58",
            "gb18030",
            "gb-18030",
        ),
        "gb18030",
    ),
    **dict.fromkeys(
        ("big5", "big-5", "x-big5", "cn-big5", "csbig5", "big5-hkscs", "big5hkscs", "cp950", "ms950"), "big5hkscs"
    ),
    **dict.fromkeys(("utf8", "utf-8", "x-utf8", "unicode-1-1-utf-8"), "utf-8"),
    **dict.fromkeys(
        ("us-ascii", "ascii", "iso-8859-1", "latin1", "latin-1", "iso8859-1", "cp1252", "windows-1252"), "cp1252"
    ),
    **dict.fromkeys(("ks_c_5601-1987", "ks_c_5601", "euc-kr", "cp949"), "cp949"),
    **dict.fromkeys(("unknown-8bit", "x-unknown", "unknown", "default", "x-user-defined", "8bit", ""), ""),
}
_WESTERN = frozenset({"cp1252", "latin-1"})
_CJK = frozenset({"gb18030", "big5hkscs"})

# Frequent characters of Chinese text (simplified and traditional forms) for telling GB18030 from Big5.
_COMMON = frozenset(
    "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产"
    "种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业"
    "本去把性好应开它合还因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利"
    "比或但质气第向道命此变条只没结解问意建月公无系军很情者最立代想已通并提直题党程展五果料象员革位入常文"
    "总次品式活设及管特件长求老头基资边流路级少图山统接知较将组见计别她手角期根论运农指几九区强放决西被干"
    "做必战先回则任取据处世车您好谢请订单退款发票快递物流客服账号密码货换付支收商司已经联系电话地址时间"
    "這個們來為國說時會過學對裡後發與麼從當開應還現體電點動種實長問關機經進樣單號價錢買賣謝請訂貨寄送產"
    "網頁帳戶您好謝請訂單退款發票快遞物流客服帳號密碼退貨換貨付款支付收到商品聯繫電話地址時間處理謝謝"
    "，。、：；？！「」『』（）《》—…“”"
)


def normalize_charset(declared: str | None) -> str | None:
    """Python codec name for a declared charset; None when undeclared or unknown."""
    if not declared:
        return None
    name = declared.strip().strip("\"'").lower()
    name = name.split("*", 1)[0]  # RFC 2231 language suffix
    if name in _CHARSET_ALIASES:
        return _CHARSET_ALIASES[name] or None
    try:
        import codecs

        return codecs.lookup(name).name
    except LookupError:
        return None


def _cjk_score(text: str) -> float:
    wide = [ch for ch in text if ord(ch) > 0x7F]
    if not wide:
        return 0.0
    bad = sum(1 for ch in wide if 0xE000 <= ord(ch) <= 0xF8FF or ch == "\ufffd")
    return (sum(1 for ch in wide if ch in _COMMON) - 2 * bad) / len(wide)


def _guess_cjk(data: bytes) -> tuple[str, float] | None:
    best: tuple[str, float] | None = None
    for codec in ("gb18030", "big5hkscs"):
        try:
            text = data.decode(codec)
        except UnicodeDecodeError:
            continue
        score = _cjk_score(text)
        if best is None or score > best[1]:
            best = (text, score)
    return best


def decode_bytes(data: bytes, declared: str | None = None) -> str:
    """Text of ``data`` in its declared charset, with the repairs described in the module docstring."""
    if not data:
        return ""
    if data.isascii():
        return data.decode("ascii")
    charset = normalize_charset(declared)
    if charset is None or not charset.startswith(("utf-16", "utf-32", "utf_16", "utf_32")):
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            pass
    if charset in _WESTERN:
        # A single-byte label decodes anything: old Chinese mailers label GBK as latin-1.
        guess = _guess_cjk(data)
        if guess is not None and guess[1] >= 0.5:
            return guess[0]
    if charset and charset != "utf-8":
        try:
            text = data.decode(charset)
        except (UnicodeDecodeError, LookupError):
            pass
        else:
            if charset in _CJK and _cjk_score(text) < 0.2:
                guess = _guess_cjk(data)
                if guess is not None and guess[1] >= 0.5:
                    return guess[0]
            return text
    guess = _guess_cjk(data)
    if guess is not None and guess[1] > 0:
        return guess[0]
    try:
        return data.decode(charset or "utf-8", errors="replace")
    except LookupError:
        return data.decode("utf-8", errors="replace")


# =====================================================================================================
# Headers
# =====================================================================================================
_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?(.*?)(?:\?=|$)", re.DOTALL)
_FOLD = re.compile(r"\r?\n[ \t]")


def _has_surrogates(text: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def _unbroken(text: str) -> str:
    """Raw 8-bit header bytes (kept by the parser as surrogates) decoded by guessing."""
    if _has_surrogates(text):
        return decode_bytes(text.encode("ascii", "surrogateescape"))
    return text


def _word_bytes(encoding: str, payload: str) -> bytes:
    if encoding in "bB":
        cleaned = re.sub(r"[^A-Za-z0-9+/]", "", payload)
        cleaned += "=" * (-len(cleaned) % 4)
        try:
            return base64.b64decode(cleaned)
        except (binascii.Error, ValueError):
            return b""
    return binascii.a2b_qp(payload.encode("ascii", "replace"), header=True)


def decode_words(value: str) -> str:
    """RFC 2047 encoded words decoded (leniently), the rest kept as it is."""
    if "=?" not in value:
        return value
    out: list[str] = []
    pending: list[tuple[str | None, bytes]] = []  # adjacent words, joined per charset before decoding
    position = 0

    def flush() -> None:
        charset: str | None = None
        chunk = b""
        for cs, data in pending + [("\x00", b"")]:
            if cs != charset and chunk:
                out.append(decode_bytes(chunk, charset))
                chunk = b""
            charset = cs
            chunk += data
        pending.clear()

    for match in _ENCODED_WORD.finditer(value):
        gap = value[position : match.start()]
        if gap and not (pending and gap.isspace()):
            flush()
            out.append(gap)
        charset = normalize_charset(match.group(1)) or match.group(1).lower()
        pending.append((charset, _word_bytes(match.group(2), match.group(3))))
        position = match.end()
    flush()
    out.append(value[position:])
    return "".join(out)


_CONTROLS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def storable(text: str) -> str:
    """Text every database stores: no NUL or other control characters (tab and newlines kept), no
    lone surrogates."""
    text = _CONTROLS.sub("", text)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text


def decode_header_text(value: str | None) -> str:
    if value is None:
        return ""
    text = _FOLD.sub(" ", str(value)).replace("\r", "").replace("\n", " ")
    text = decode_words(_unbroken(text))
    return storable("".join(ch for ch in text if ch.isprintable() or ch == " ")).strip()


def raw_header(message: Message, name: str) -> str | None:
    """The first raw value of header ``name`` (8-bit bytes kept as surrogates), unfolded."""
    wanted = name.lower()
    for key, value in message.raw_items():
        if key.lower() == wanted:
            return _FOLD.sub(" ", str(value)).strip()
    return None


def raw_headers(message: Message, name: str) -> list[str]:
    wanted = name.lower()
    return [_FOLD.sub(" ", str(value)).strip() for key, value in message.raw_items() if key.lower() == wanted]


_MSGID = re.compile(r"<([^<>\s]{1,2000})>")


def normalize_message_id(value: str | None) -> str | None:
    """``<abc@host>`` -> ``abc@host``; absurdly long ids become a hash so they still fit and compare."""
    if not value:
        return None
    value = _unbroken(value)
    found = _MSGID.search(value)
    text = found.group(1) if found else value.strip()
    if not text or any(ch.isspace() for ch in text):
        return None
    text = "".join(ch for ch in text if ch.isprintable())
    if len(text) > MESSAGE_ID_MAX - 10:
        text = "sha256:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return text or None


def message_ids_in(value: str | None, limit: int = 50) -> list[str]:
    if not value:
        return []
    ids = [normalize_message_id(f"<{found}>") for found in _MSGID.findall(_unbroken(value))]
    unique = list(dict.fromkeys(i for i in ids if i))
    return unique[-limit:]


def normalize_address(value: str) -> str | None:
    from kefu.customers.identities import normalize_email

    try:
        return normalize_email(value.strip().strip("<>"))
    except Invalid:
        return None


def addresses(message: Message, name: str) -> list[tuple[str, str]]:
    """(display name, normalized address) of every valid address in header ``name``."""
    values = [_unbroken(v) for v in raw_headers(message, name)]
    result: list[tuple[str, str]] = []
    try:
        pairs = email.utils.getaddresses(values)
    except Exception:  # noqa: BLE001 - a header the address parser chokes on has no usable address
        pairs = []
    for display, address in pairs:
        normalized = normalize_address(address) if address else None
        if normalized:
            result.append((decode_header_text(display).strip("\"' "), normalized))
    return result


def _date(message: Message) -> datetime | None:
    value = raw_header(message, "Date")
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(_unbroken(value))
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed is None:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except (OverflowError, ValueError):
        return None


def summary_of(message: Message) -> HeaderSummary:
    froms = addresses(message, "From")
    return HeaderSummary(
        normalize_message_id(raw_header(message, "Message-ID")),
        froms[0][1] if froms else "",
        decode_header_text(raw_header(message, "Subject"))[:500],
    )


# =====================================================================================================
# Loop protection
# =====================================================================================================
_AUTO_SUBJECT = re.compile(
    r"^\s*(auto(matic)?[ -]?(reply|response|antwort)|autoreply|out of (the )?office|abwesenheit|"
    r"自动回复|自動回覆|自动答复|自動答覆|休假|外出)\b|^\s*(auto|自动回复|自動回覆)\s*[:：]",
    re.IGNORECASE,
)
_BOUNCE_SUBJECT = re.compile(
    r"(undeliver(able|ed)|delivery status notification|delivery (has )?failed|failure notice|"
    r"mail delivery (failed|failure|subsystem)|returned mail|non[- ]?delivery|could not be delivered|"
    r"系统退信|退信|投递失败|未送达|無法投遞|传递失败)",
    re.IGNORECASE,
)
_DAEMON = re.compile(r"^(mailer-daemon|postmaster|mail-daemon|mailerdaemon)@", re.IGNORECASE)


def _content_type_param(message: Message, name: str) -> str:
    value = message.get_param(name, header="content-type")
    if isinstance(value, tuple):
        value = value[2]
    return str(value or "").lower()


def classify(message: Message, own_addresses: Iterable[str] = ()) -> AutoKind:
    """What kind of mail this is for loop protection (see ``AutoKind``); order: loop, bounce,
    auto-reply, list, bulk."""
    own = {a.lower() for a in own_addresses}
    for value in raw_headers(message, "X-Loop"):
        for _, address in email.utils.getaddresses([_unbroken(value)]):
            if address.lower() in own:
                return AutoKind.loop
        if any(a in value.lower() for a in own):
            return AutoKind.loop
    content_type = message.get_content_type()
    if content_type == "multipart/report" and _content_type_param(message, "report-type") in (
        "delivery-status",
        "",
    ):
        return AutoKind.bounce
    if message.is_multipart():
        for part in message.get_payload():
            if isinstance(part, Message) and part.get_content_type() in (
                "message/delivery-status",
                "message/global-delivery-status",
            ):
                return AutoKind.bounce
    from_value = (raw_header(message, "From") or "").lower()
    subject = decode_header_text(raw_header(message, "Subject"))
    from_daemon = any(_DAEMON.match(a) for _, a in email.utils.getaddresses([_unbroken(from_value)]))
    return_path = (raw_header(message, "Return-Path") or "").replace(" ", "")
    if raw_header(message, "X-Failed-Recipients") or (
        (from_daemon or return_path == "<>") and _BOUNCE_SUBJECT.search(subject)
    ):
        return AutoKind.bounce
    auto_submitted = (raw_header(message, "Auto-Submitted") or "no").split(";")[0].strip().lower()
    precedence = (raw_header(message, "Precedence") or "").strip().lower()
    suppress = (raw_header(message, "X-Auto-Response-Suppress") or "").lower()
    if (
        auto_submitted == "auto-replied"
        or raw_header(message, "X-Autoreply") is not None
        or raw_header(message, "X-Autorespond") is not None
        or precedence == "auto_reply"
        or _AUTO_SUBJECT.search(subject)
        or ("oof" in suppress and auto_submitted != "no")
    ):
        return AutoKind.auto_reply
    if precedence == "list" or raw_header(message, "List-Id") or raw_header(message, "List-Post"):
        return AutoKind.list
    if auto_submitted != "no" or precedence in ("bulk", "junk") or from_daemon:
        return AutoKind.bulk
    return AutoKind.none


# =====================================================================================================
# HTML
# =====================================================================================================
_HTML_TAGS = {
    "a", "abbr", "b", "big", "blockquote", "br", "caption", "center", "code", "dd", "del", "div", "dl", "dt",
    "em", "font", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "img", "ins", "kbd", "li", "ol", "p", "pre",
    "q", "s", "small", "span", "strike", "strong", "sub", "sup", "table", "tbody", "td", "tfoot", "th", "thead",
    "tr", "u", "ul",
}  # fmt: skip
_HTML_ATTRIBUTES = {
    "a": {"href", "title"},
    "img": {"src", "alt", "title", "width", "height"},
    "td": {"colspan", "rowspan", "align", "valign"},
    "th": {"colspan", "rowspan", "align", "valign"},
    "table": {"border", "cellpadding", "cellspacing"},
    "font": {"color"},
    "ol": {"start"},
    "p": {"align"},
    "div": {"align"},
}


def _attribute_filter(element: str, attribute: str, value: str) -> str | None:
    if element == "img" and attribute == "src":
        # Only parts of the mail itself: a remote image would tell the sender the mail was opened.
        return value if value.lower().startswith("cid:") else None
    return value


_CLEANER = nh3.Cleaner(
    tags=_HTML_TAGS,
    clean_content_tags={"script", "style", "title", "head", "noscript", "template", "iframe", "object"},
    attributes=_HTML_ATTRIBUTES,
    attribute_filter=_attribute_filter,
    url_schemes={"http", "https", "mailto", "tel", "cid"},
    link_rel="noopener noreferrer nofollow",
    strip_comments=True,
)
_TEXT_ONLY = nh3.Cleaner(tags=set(), clean_content_tags={"script", "style", "title", "head", "noscript", "template"})
_BLOCK_END = re.compile(r"(?i)<\s*(br\s*/?|/\s*(p|div|tr|li|h[1-6]|blockquote|table|pre|ul|ol|dt|dd)\s*)>")


def sanitize_html(html: str) -> str:
    return _CLEANER.clean(html)


def html_to_text(html: str) -> str:
    marked = _BLOCK_END.sub(lambda m: m.group(0) + "\n", html)
    text = unescape(_TEXT_ONLY.clean(marked)).replace("\xa0", " ")
    lines = [" ".join(line.split()) for line in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


# =====================================================================================================
# The MIME tree
# =====================================================================================================
_FATAL_DEFECTS = (mail_errors.StartBoundaryNotFoundDefect, mail_errors.NoBoundaryInMultipartDefect)


def _children(part: Message) -> list[Message]:
    if not part.is_multipart():
        return []
    payload = part.get_payload()
    return [p for p in payload if isinstance(p, Message)] if isinstance(payload, list) else []


def measure(message: Message) -> tuple[int, int, list[str]]:
    """(parts, deepest nesting, fatal structure defects) without recursion."""
    parts, deepest, fatal = 0, 0, []
    stack: list[tuple[Message, int]] = [(message, 0)]
    while stack:
        part, depth = stack.pop()
        parts += 1
        deepest = max(deepest, depth)
        for defect in part.defects:
            if isinstance(defect, _FATAL_DEFECTS):
                fatal.append(type(defect).__name__)
        stack.extend((child, depth + 1) for child in _children(part))
    return parts, deepest, fatal


def _disposition(part: Message) -> str:
    value = raw_header(part, "Content-Disposition") or ""
    return value.split(";", 1)[0].strip().lower()


def _param_text(part: Message, name: str, header: str) -> str | None:
    raw = raw_header(part, header)
    if raw is None:
        return None
    # Raw 8-bit bytes in a parameter (common: unencoded GBK or UTF-8 file names) are decoded first;
    # the parser's own view of such a header has them replaced already.
    holder = Message()
    holder[header] = _unbroken(raw)
    try:
        value = holder.get_param(name, header=header)
    except Exception:  # noqa: BLE001 - a broken parameter list has no usable value
        return None
    if value is None:
        return None
    if isinstance(value, tuple):  # RFC 2231: (charset, language, text as latin-1)
        charset, _language, text = value
        return decode_bytes(str(text).encode("latin-1", "replace"), charset or None)
    return decode_header_text(str(value).strip("\"'"))


def _filename(part: Message) -> str | None:
    name = _param_text(part, "filename", "content-disposition") or _param_text(part, "name", "content-type")
    return name or None


def _payload_bytes(part: Message, strict: bool) -> bytes:
    try:
        data = part.get_payload(decode=True)
    except Exception as exc:  # noqa: BLE001
        if strict:
            raise MailRejected(QuarantineReason.malformed, f"a part cannot be decoded: {type(exc).__name__}") from exc
        payload = part.get_payload()
        return payload.encode("utf-8", "surrogateescape") if isinstance(payload, str) else b""
    if strict and any(isinstance(d, mail_errors.InvalidBase64LengthDefect) for d in part.defects):
        raise MailRejected(QuarantineReason.malformed, "a base64 part cannot be decoded (invalid length)")
    if data is None:
        return b""
    return data if isinstance(data, bytes) else bytes(data)


class _Walker:
    def __init__(self, limits: Limits, strict: bool) -> None:
        self.limits = limits
        self.strict = strict
        self.attachments: list[Attachment] = []
        self.notes: list[str] = []
        self.delivery_status: list[Message] = []
        self.returned_headers: list[Message] = []

    def text_of(self, part: Message) -> str:
        charset = _param_text(part, "charset", "content-type")
        return decode_bytes(_payload_bytes(part, self.strict), charset)

    def attach(self, part: Message, *, inline: bool) -> None:
        data = _payload_bytes(part, self.strict)
        if len(data) > self.limits.max_attachment_bytes:
            raise MailRejected(
                QuarantineReason.attachment_too_large,
                f"an attachment of {len(data)} bytes is over the limit of {self.limits.max_attachment_bytes}",
            )
        content_type = part.get_content_type()
        name = _filename(part)
        if not name:
            extension = mimetypes.guess_extension(content_type) or ".bin"
            stem = "image" if content_type.startswith("image/") else "attachment"
            name = f"{stem}-{len(self.attachments) + 1}{extension}"
        content_id = normalize_message_id(raw_header(part, "Content-ID"))
        self.attachments.append(
            Attachment(files.clean_filename(name), content_type, data, inline=inline, content_id=content_id)
        )

    def collect(self, part: Message) -> tuple[list[str], list[str]]:
        """(text bodies, html bodies) of ``part``; everything else becomes an attachment."""
        content_type = part.get_content_type()
        maintype = part.get_content_maintype()
        disposition = _disposition(part)
        children = _children(part)
        if content_type in ("message/rfc822", "message/global") and children:
            return [self.forwarded(children[0])], []
        if content_type in ("message/delivery-status", "message/global-delivery-status"):
            self.delivery_status.extend(children or [])
            if not children:
                self.delivery_status.extend(_status_blocks(self.text_of(part)))
            return [], []
        if content_type in ("text/rfc822-headers", "message/rfc822-headers", "message/global-headers"):
            self.returned_headers.append(BytesParser(policy=mail_policy.compat32).parsebytes(
                _payload_bytes(part, False), headersonly=True
            ))  # fmt: skip
            return [], []
        if maintype == "multipart" and children:
            return self.multipart(content_type, children)
        if maintype == "multipart":  # broken boundaries (released anyway): the body as text
            return [self.text_of(part)], []
        is_attachment = disposition == "attachment" or (_filename(part) is not None and disposition != "inline")
        if content_type == "text/plain" and not is_attachment:
            return [self.text_of(part)], []
        if content_type == "text/html" and not is_attachment:
            return [], [self.text_of(part)]
        if content_type in ("text/plain", "text/html") and _filename(part) is None and disposition == "inline":
            return ([self.text_of(part)], []) if content_type == "text/plain" else ([], [self.text_of(part)])
        inline = disposition == "inline" or (disposition == "" and raw_header(part, "Content-ID") is not None)
        self.attach(part, inline=inline)
        return [], []

    def multipart(self, content_type: str, children: list[Message]) -> tuple[list[str], list[str]]:
        if content_type == "multipart/alternative":
            texts: list[str] = []
            htmls: list[str] = []
            for child in children:  # the last alternative of each kind is the richest
                child_texts, child_htmls = self.collect(child)
                if child_texts and child.get_content_type() != "text/html":
                    texts = child_texts
                if child_htmls:
                    htmls = child_htmls
            return texts, htmls
        if content_type == "multipart/report":
            # The human-readable part; the machine part and the returned mail inform the bounce.
            texts, htmls = self.collect(children[0])
            for child in children[1:]:
                if child.get_content_type() in ("message/rfc822", "message/global"):
                    inner = _children(child)
                    if inner:
                        self.returned_headers.append(inner[0])
                    continue
                self.collect(child)
            return texts, htmls
        texts, htmls = [], []
        for child in children:
            child_texts, child_htmls = self.collect(child)
            texts.extend(child_texts)
            htmls.extend(child_htmls)
        return texts, htmls

    def forwarded(self, inner: Message) -> str:
        lines = ["---------- Forwarded message ----------"]
        for name in ("From", "Date", "Subject", "To", "Cc"):
            value = raw_header(inner, name)
            if value:
                lines.append(f"{name}: {decode_header_text(value)}")
        texts, htmls = self.collect(inner)
        body = "\n\n".join(t.strip("\n") for t in texts if t.strip())
        if not body and htmls:
            body = html_to_text("".join(htmls))
        return "\n".join(lines) + "\n\n" + body


def _status_blocks(text: str) -> list[Message]:
    blocks = re.split(r"\r?\n\r?\n", text)
    return [BytesParser(policy=mail_policy.compat32).parsebytes(b.encode(), headersonly=True) for b in blocks if b]


_BODY_MSGID = re.compile(r"(?im)^\s*message-id:\s*(<[^<>\s]+>)")


def _bounce_info(message: Message, walker: _Walker, text: str, own_id: str | None) -> BounceInfo:
    info = BounceInfo()
    ids: list[str] = []
    for headers in walker.returned_headers:
        found = normalize_message_id(raw_header(headers, "Message-ID"))
        if found:
            ids.append(found)
    for match in _BODY_MSGID.finditer(text):
        found = normalize_message_id(match.group(1))
        if found and found != own_id:
            ids.append(found)
    ids.extend(message_ids_in(raw_header(message, "In-Reply-To")))
    ids.extend(message_ids_in(raw_header(message, "References")))
    info.original_message_ids = list(dict.fromkeys(i for i in ids if i != own_id))
    for block in walker.delivery_status:
        recipient = raw_header(block, "Final-Recipient") or raw_header(block, "Original-Recipient")
        if recipient:
            info.recipients.append(recipient.split(";")[-1].strip())
        info.action = info.action or (raw_header(block, "Action") or "")
        info.status = info.status or (raw_header(block, "Status") or "")
        info.diagnostic = info.diagnostic or decode_header_text(raw_header(block, "Diagnostic-Code") or "")
    for value in raw_headers(message, "X-Failed-Recipients"):
        info.recipients.extend(a for _, a in email.utils.getaddresses([value]) if a)
    info.recipients = list(dict.fromkeys(info.recipients))
    return info


# =====================================================================================================
# The whole mail
# =====================================================================================================
_KNOWN_HEADERS = ("from", "to", "subject", "date", "message-id", "received", "mime-version", "sender", "return-path")


def read_message(raw: bytes) -> Message:
    return BytesParser(policy=mail_policy.compat32).parsebytes(raw)


def parse_mail(
    raw: bytes, limits: Limits, *, own_addresses: Iterable[str] = (), ignore: Iterable[str] = ()
) -> ParsedMail:
    """Read ``raw``; ``MailRejected`` when it must be quarantined. ``ignore``: quarantine reasons a
    person waived when releasing the mail (its checks are skipped, the mail read as well as possible)."""
    try:
        return _parse_mail(raw, limits, frozenset(own_addresses), frozenset(ignore))
    except MailRejected:
        raise
    except RecursionError as exc:
        raise MailRejected(QuarantineReason.too_deep, "the MIME structure is nested too deeply to read") from exc
    except Exception as exc:  # noqa: BLE001 - any parser surprise on hostile input is a malformed mail
        raise MailRejected(QuarantineReason.malformed, f"the mail could not be read: {type(exc).__name__}") from exc


def _parse_mail(raw: bytes, limits: Limits, own: frozenset[str], ignore: frozenset[str]) -> ParsedMail:
    R = QuarantineReason
    if len(raw) > limits.max_message_bytes and R.too_large not in ignore:
        head = read_message(raw[:65536].split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0] + b"\n\n")
        raise MailRejected(
            R.too_large, f"{len(raw)} bytes is over the limit of {limits.max_message_bytes}", summary_of(head)
        )
    message = read_message(raw)
    summary = summary_of(message)
    strict = R.malformed not in ignore
    present = {key.lower() for key in message}
    if strict and not present.intersection(_KNOWN_HEADERS):
        raise MailRejected(R.malformed, "no mail headers found (not a mail)", summary)
    parts, depth, fatal = measure(message)
    if parts > limits.max_parts and R.too_many_parts not in ignore:
        raise MailRejected(R.too_many_parts, f"{parts} MIME parts is over the limit of {limits.max_parts}", summary)
    if depth > limits.max_depth and R.too_deep not in ignore:
        raise MailRejected(R.too_deep, f"MIME nesting {depth} is over the limit of {limits.max_depth}", summary)
    if fatal and strict:
        raise MailRejected(R.malformed, "broken MIME structure: " + ", ".join(sorted(set(fatal))), summary)

    froms = addresses(message, "From") or addresses(message, "Sender")
    if not froms and R.no_sender not in ignore:
        raise MailRejected(R.no_sender, "no valid sender address (From)", summary)
    from_name, from_address = froms[0] if froms else ("", None)

    walker_limits = limits
    if R.attachment_too_large in ignore:
        walker_limits = Limits(max_attachment_bytes=limits.max_message_bytes * 64)
    walker = _Walker(walker_limits, strict)
    try:
        texts, htmls = walker.collect(message)
    except MailRejected as rejected:
        rejected.headers = summary
        raise
    text = "\n\n".join(t.strip("\r\n") for t in texts if t and t.strip())
    html_source = "\n".join(h for h in htmls if h)
    html = sanitize_html(html_source) if html_source else ""
    if not text and html:
        text = html_to_text(html)
    text = storable(text.replace("\r\n", "\n").replace("\r", "\n"))[: limits.max_body_chars]
    html = storable(html)[: limits.max_body_chars * 2]

    message_id = summary.message_id
    auto_kind = classify(message, own)
    bounce = _bounce_info(message, walker, text, message_id) if auto_kind == AutoKind.bounce else None
    return ParsedMail(
        message=message,
        message_id=message_id,
        in_reply_to=(message_ids_in(raw_header(message, "In-Reply-To")) or [None])[0],
        references=message_ids_in(raw_header(message, "References")),
        from_address=from_address,
        from_name=from_name[:255],
        to=[a for _, a in addresses(message, "To")][:100],
        cc=[a for _, a in addresses(message, "Cc")][:100],
        subject=summary.subject,
        date=_date(message),
        text=text,
        html=html,
        attachments=walker.attachments,
        auto_kind=auto_kind,
        bounce=bounce,
        part_count=parts,
        depth=depth,
        notes=walker.notes,
    )


# =====================================================================================================
# Replies: the new text without the quoted history
# =====================================================================================================
_QUOTE_HEADER = re.compile(
    r"^\s*("
    r"on .{1,200}wrote:\s*$"
    r"|在\s*.{1,200}(写道|寫道)\s*[:：]\s*$"
    r"|-{2,}\s*(original message|原始邮件|原始郵件|原邮件|forwarded message|转发邮件)\s*-{2,}"
    r"|(from|发件人|寄件者|發件人)\s*[:：].{1,300}$"
    r"|_{10,}\s*$"
    r")",
    re.IGNORECASE,
)


def strip_quoted(text: str) -> str:
    """The part of a reply above the quoted earlier mail (the whole text when nothing is quoted)."""
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if index == 0:
            continue
        quoted_tail = line.startswith(">") and all(not rest.strip() or rest.startswith(">") for rest in lines[index:])
        if quoted_tail or _QUOTE_HEADER.match(line):
            head = lines[:index]
            if any(h.strip() and not h.startswith(">") for h in head):
                return "\n".join(head).rstrip()
            return text
    return text
