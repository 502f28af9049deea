"""Reading mails without a database: charsets, encoded words, addresses, loop classification, HTML,
quoted history, reply tokens, limits."""

from __future__ import annotations

import base64

import pytest

from kefu.channels.email import parse
from kefu.channels.email.ingest import parse_reply_token, reply_token
from kefu.channels.email.models import AutoKind
from kefu.settings import Settings

LIMITS = parse.Limits()


def msg(headers: str, body: str = "hello") -> bytes:
    return (headers.strip() + "\r\n\r\n" + body).replace("\n", "\r\n").replace("\r\r", "\r").encode()


@pytest.mark.parametrize(
    ("data", "declared", "expected"),
    [
        ("退款申请".encode("gbk"), "gb2312", "退款申请"),
        ("镕喆".encode("gbk"), "gb2312", "镕喆"),  # GBK-only characters under a GB2312 label
        ("𠀋字".encode("gb18030"), "gb18030", "𠀋字"),
        ("請問退貨流程".encode("big5"), "big5", "請問退貨流程"),
        ("請問退貨流程，謝謝".encode("big5"), None, "請問退貨流程，謝謝"),  # undeclared Big5
        ("快递一直显示派送中".encode("gbk"), None, "快递一直显示派送中"),  # undeclared GBK
        ("发票抬头错了".encode(), "gb2312", "发票抬头错了"),  # UTF-8 mislabelled as GB2312
        ("订单没有发货，请查询".encode("gbk"), "iso-8859-1", "订单没有发货，请查询"),  # GBK labelled latin-1
        ("café – René".encode("cp1252"), "iso-8859-1", "café – René"),
        ("内容".encode("gbk"), "x-no-such-charset", "内容"),
        (b"plain ascii", "utf-8", "plain ascii"),
    ],
)
def test_charsets_are_decoded_right(data: bytes, declared: str | None, expected: str) -> None:
    assert parse.decode_bytes(data, declared) == expected


def test_encoded_words_including_broken_ones() -> None:
    word = "电子发票".encode()
    first = base64.b64encode(word[:4]).decode().rstrip("=")  # a character split across words, no padding
    second = base64.b64encode(word[4:]).decode()
    assert parse.decode_header_text(f"=?UTF-8?B?{first}?=\r\n =?UTF-8?B?{second}?=") == "电子发票"
    assert parse.decode_header_text("=?gb2312?B?" + base64.b64encode("订单".encode("gbk")).decode() + "?=") == "订单"
    assert parse.decode_header_text("=?utf-8?q?=E9=80=80=E6=AC=BE?=进度") == "退款进度"
    assert parse.decode_header_text("Re: =?utf-8?B?5Y+R56Wo?= now") == "Re: 发票 now"
    assert parse.decode_header_text("=?utf-8*zh?B?5Y+R56Wo?=") == "发票"  # RFC 2231 language
    assert parse.decode_header_text("=?utf-8?B?5Y+R56Wo") == "发票"  # no closing ?=
    assert parse.decode_header_text("plain\r\n folded") == "plain folded"
    raw_gbk = "快递".encode("gbk").decode("ascii", "surrogateescape")
    assert parse.decode_header_text(raw_gbk) == "快递"


def test_message_ids_and_addresses() -> None:
    assert parse.normalize_message_id(" <abc@host> ") == "abc@host"
    assert parse.normalize_message_id("abc@host") == "abc@host"
    assert parse.normalize_message_id("") is None
    long_id = parse.normalize_message_id("<" + "x" * 400 + "@h>")
    assert long_id is not None and long_id.startswith("sha256:") and len(long_id) < 255
    assert parse.message_ids_in("<a@x> <b@x>\r\n <a@x>") == ["a@x", "b@x"]
    message = parse.read_message(
        msg('From: "=?utf-8?B?546LLCDlsI/mmI4=?=" <WXM@Example.CN>\nTo: a@x.cn, "B, C" <b@x.cn>')
    )
    assert parse.addresses(message, "From") == [("王, 小明", "wxm@example.cn")]
    assert [a for _, a in parse.addresses(message, "To")] == ["a@x.cn", "b@x.cn"]


@pytest.mark.parametrize(
    ("headers", "kind"),
    [
        ("From: a@x.cn\nSubject: hi", AutoKind.none),
        ("From: a@x.cn\nAuto-Submitted: no\nSubject: hi", AutoKind.none),
        ("From: a@x.cn\nAuto-Submitted: auto-replied\nSubject: hi", AutoKind.auto_reply),
        ("From: a@x.cn\nSubject: 自动回复: 您的邮件", AutoKind.auto_reply),
        ("From: a@x.cn\nSubject: Out of Office: back Monday", AutoKind.auto_reply),
        ("From: a@x.cn\nX-Autoreply: yes\nSubject: hi", AutoKind.auto_reply),
        ("From: a@x.cn\nList-Id: <dev.lists.x>\nSubject: hi", AutoKind.list),
        ("From: a@x.cn\nPrecedence: list\nSubject: hi", AutoKind.list),
        ("From: a@x.cn\nPrecedence: bulk\nSubject: hi", AutoKind.bulk),
        ("From: a@x.cn\nAuto-Submitted: auto-generated\nSubject: hi", AutoKind.bulk),
        ("From: MAILER-DAEMON@x.cn\nSubject: Undelivered Mail Returned to Sender", AutoKind.bounce),
        ("From: a@x.cn\nReturn-Path: <>\nSubject: 系统退信", AutoKind.bounce),
        ("From: a@x.cn\nX-Failed-Recipients: b@y.cn\nSubject: hi", AutoKind.bounce),
        ("From: a@x.cn\nContent-Type: multipart/report; report-type=delivery-status; boundary=b", AutoKind.bounce),
        ("From: a@x.cn\nX-Loop: support@kefu.test\nSubject: hi", AutoKind.loop),
        ("From: a@x.cn\nX-Loop: someone-else@x.cn\nSubject: hi", AutoKind.none),
    ],
)
def test_classify(headers: str, kind: AutoKind) -> None:
    assert parse.classify(parse.read_message(msg(headers)), {"support@kefu.test"}) == kind


def test_html_is_sanitized_and_gives_the_text() -> None:
    html = (
        '<style>p{}</style><script>alert(1)</script><p onclick="x()" style="position:fixed">订单 <b>A1</b></p>'
        '<img src="https://tracker.example/p.gif"><img src="cid:logo@x"><a href="javascript:alert(1)">x</a>'
        '<a href="https://ok.example/">ok</a><iframe src="https://evil.example"></iframe>'
    )
    clean = parse.sanitize_html(html)
    for bad in ("<script", "alert", "onclick", "style", "tracker.example", "javascript:", "<iframe"):
        assert bad not in clean
    assert 'src="cid:logo@x"' in clean and 'href="https://ok.example/"' in clean and "noopener" in clean
    assert parse.html_to_text("<p>第一段</p><p>第二&amp;段<br>换行</p>") == "第一段\n第二&段\n换行"


def test_quoted_history_is_left_out_of_replies() -> None:
    assert parse.strip_quoted("新的内容\n\nOn Mon, 1 Dec 2025 Zhang wrote:\n> old") == "新的内容"
    assert parse.strip_quoted("好的\n\n------------------ 原始邮件 ------------------\n旧的") == "好的"
    assert parse.strip_quoted("收到\n\n在 2025年12月1日，张三 写道：\n旧") == "收到"
    assert parse.strip_quoted("收到\n-----Original Message-----\nFrom: x") == "收到"
    assert parse.strip_quoted("only new text") == "only new text"
    assert parse.strip_quoted("> all quoted\n> more") == "> all quoted\n> more"


def test_reply_tokens_are_signed() -> None:
    settings = Settings(secret_key="k1")
    token = reply_token(settings, 42)
    assert token.startswith("[#WO-42-") and parse_reply_token(settings, f"Re: 发票 {token}") == 42
    assert parse_reply_token(settings, token.upper()) == 42
    assert parse_reply_token(Settings(secret_key="k2"), token) is None
    assert parse_reply_token(settings, token.replace("[#WO-42-", "[#WO-43-")) is None
    assert parse_reply_token(settings, "no token") is None


def test_limits_reject_with_a_reason() -> None:
    small = parse.Limits(max_message_bytes=100, max_parts=3, max_depth=1, max_attachment_bytes=10)
    with pytest.raises(parse.MailRejected) as caught:
        parse.parse_mail(msg("From: a@x.cn\nSubject: big", "x" * 200), small)
    assert caught.value.reason == "too_large" and caught.value.headers.subject == "big"
    assert parse.parse_mail(msg("From: a@x.cn\nSubject: big", "x" * 200), small, ignore={"too_large"}).text
    parts = "".join(f"--b\nContent-Type: text/plain\n\n{i}\n" for i in range(4)) + "--b--\n"
    many = msg("From: a@x.cn\nContent-Type: multipart/mixed; boundary=b", parts)
    with pytest.raises(parse.MailRejected, match="too_many_parts"):
        parse.parse_mail(many, parse.Limits(max_parts=3))
    attached = msg(
        "From: a@x.cn\nContent-Type: multipart/mixed; boundary=b",
        "--b\nContent-Type: text/plain\n\nhi\n--b\nContent-Type: application/pdf; name=a.pdf\n\n"
        + "x" * 50
        + "\n--b--\n",
    )
    with pytest.raises(parse.MailRejected, match="attachment_too_large"):
        parse.parse_mail(attached, parse.Limits(max_attachment_bytes=10))
    assert parse.parse_mail(attached, parse.Limits(max_attachment_bytes=10), ignore={"attachment_too_large"})


def test_hostile_input_never_raises_anything_but_a_rejection() -> None:
    import random

    rnd = random.Random(7)
    samples = [bytes(rnd.getrandbits(8) for _ in range(rnd.randint(0, 2000))) for _ in range(40)]
    samples += [b"", b"\r\n\r\n", b"From: a@x.cn\r\nContent-Type: multipart/mixed\r\n\r\nno boundary"]
    samples += [("Content-Type: multipart/mixed; boundary=a\r\n\r\n--a\r\n" * 3000).encode()]
    for raw in samples:
        try:
            parse.parse_mail(raw, LIMITS)
        except parse.MailRejected as rejected:
            assert rejected.reason in {r.value for r in parse.QuarantineReason}
