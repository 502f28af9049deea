"""Identity normalization: every usual way of writing a number or address ends as one stored value."""

from __future__ import annotations

import pytest

from kefu.core.errors import Invalid
from kefu.customers.identities import guess_identities, normalize_identity

SAME_MOBILE = [
    "13812345678",
    "138 1234 5678",
    "138-1234-5678",
    " 138.1234.5678 ",
    "+86 13812345678",
    "+86 138 1234 5678",
    "+86-138-1234-5678",
    "008613812345678",
    "0086 138 1234 5678",
    "86 138 1234 5678",
    "8613812345678",
    "１３８１２３４５６７８",  # full-width digits, as typed with a Chinese input method
    "(+86) 138 1234 5678",
]

LANDLINES = [
    ("010-12345678", "+861012345678"),
    ("(010) 1234 5678", "+861012345678"),
    ("+86 10 1234 5678", "+861012345678"),
    ("+86 (0)10 1234 5678", "+861012345678"),
    ("0086 10 12345678", "+861012345678"),
    ("(0755)12345678", "+8675512345678"),
    ("(0755)1234567", "+867551234567"),
    ("0755-1234567", "+867551234567"),
    ("021 6123 4567", "+862161234567"),
    ("+86 20 8877 6655", "+862088776655"),
    ("020-88776655", "+862088776655"),
    ("0571-88888888", "+8657188888888"),
    ("400-810-8888", "+864008108888"),
]

INTERNATIONAL = [
    ("+1 650 253 0000", "+16502530000"),
    ("+44 20 7946 0958", "+442079460958"),
    ("+852 2123 4567", "+85221234567"),
    ("001 650 253 0000", "+16502530000"),
]

JUNK_PHONES = [
    "",
    "   ",
    "12345",
    "110",
    "abc",
    "1-800-FLOWERS",
    "138123456789999",
    "+0 123",
    "13812345678 ext 5",
    "138\x001234",
    "+86 138 1234 5678 +1",
    "1" * 60,
    "<script>",
    "95588",
]


@pytest.mark.parametrize("raw", SAME_MOBILE)
def test_chinese_mobiles_in_every_shape(raw: str) -> None:
    assert normalize_identity("phone", raw) == "+8613812345678"


@pytest.mark.parametrize(("raw", "e164"), LANDLINES + INTERNATIONAL)
def test_landlines_and_international_numbers(raw: str, e164: str) -> None:
    assert normalize_identity("phone", raw) == e164


@pytest.mark.parametrize("raw", JUNK_PHONES)
def test_junk_phone_numbers_are_refused_with_a_reason(raw: str) -> None:
    with pytest.raises(Invalid) as caught:
        normalize_identity("phone", raw)
    assert "phone number" in caught.value.message


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Li.Lei@Example.COM", "li.lei@example.com"),
        ("  wang@example.cn ", "wang@example.cn"),
        ("a+tag@sub.example.org", "a+tag@sub.example.org"),
        ("张三@例子.中国", "张三@例子.中国"),
    ],
)
def test_emails_are_trimmed_and_lower_cased(raw: str, expected: str) -> None:
    assert normalize_identity("email", raw) == expected


@pytest.mark.parametrize(
    "raw", ["", "plain", "a@b", "a@@b.com", "a b@example.com", "a@exa mple.com", "a@-x.com", "x" * 300 + "@e.com"]
)
def test_bad_emails_are_refused(raw: str) -> None:
    with pytest.raises(Invalid):
        normalize_identity("email", raw)


def test_chat_and_sms_ids_are_trimmed_printable_and_bounded() -> None:
    assert normalize_identity("chat", "  visitor-42 ") == "visitor-42"
    assert normalize_identity("sms", "gw:1069-0001") == "gw:1069-0001"
    for bad in ("", "   ", "a\x1bb", "\u200bzero", "x" * 201):
        with pytest.raises(Invalid):
            normalize_identity("chat", bad)


def test_social_and_crm_are_prefixed_handles() -> None:
    assert normalize_identity("social", " WeChat : wxid_AbC ") == "wechat:wxid_AbC"
    assert normalize_identity("crm", "Salesforce:0031x00000AbCdE") == "salesforce:0031x00000AbCdE"
    for bad in ("wxid_abc", ":abc", "wechat:", "we chat:abc", "wechat:a b", "1wechat:abc"):
        with pytest.raises(Invalid) as caught:
            normalize_identity("social", bad)
        assert caught.value.message
    with pytest.raises(Invalid, match="<system>:<id>"):
        normalize_identity("crm", "no-system")


def test_unknown_kind_and_huge_values_are_refused() -> None:
    with pytest.raises(Invalid, match="unknown identity kind"):
        normalize_identity("fax", "123")
    with pytest.raises(Invalid, match="longer than"):
        normalize_identity("chat", "x" * 1000)


def test_guessing_what_a_search_box_holds() -> None:
    assert ("phone", "+8613812345678") in guess_identities("138-1234-5678")
    assert ("email", "a@example.com") in guess_identities("A@Example.com")
    assert ("social", "wechat:wxid_1") in guess_identities("wechat:wxid_1")
    assert not any(kind == "phone" for kind, _ in guess_identities("张三"))
