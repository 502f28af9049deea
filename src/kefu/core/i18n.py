"""Message catalogues (Babel ``.po`` files, zh_CN and en) and the choice of language per request."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from babel.messages.pofile import read_po
from fastapi import Request

LOCALES_DIR = Path(__file__).resolve().parent.parent / "locales"
SUPPORTED_LOCALES = ("zh_CN", "en")
LANG_COOKIE = "kefu_lang"


@lru_cache
def catalogue(locale: str) -> dict[str, str]:
    """msgid -> translation. Read straight from the .po file: no compile step to forget."""
    path = LOCALES_DIR / locale / "LC_MESSAGES" / "messages.po"
    if not path.exists():
        return {}
    with path.open("rb") as handle:
        cat = read_po(handle, locale=locale)
    return {str(m.id): str(m.string) for m in cat if m.id and m.string and not m.fuzzy}


class Translator:
    def __init__(self, locale: str) -> None:
        self.locale = locale if locale in SUPPORTED_LOCALES else SUPPORTED_LOCALES[0]
        self._messages = catalogue(self.locale)

    def gettext(self, message: str) -> str:
        return self._messages.get(message, message)

    def format(self, message: str, **values: object) -> str:
        """``_("Welcome, %(name)s", name=...)`` in templates: translate, then fill in the values."""
        translated = self.gettext(message)
        return translated % values if values else translated

    def ngettext(self, singular: str, plural: str, n: int) -> str:
        return self.gettext(singular if n == 1 else plural)


def _from_accept_language(header: str) -> str | None:
    for part in header.split(","):
        tag = part.split(";")[0].strip().lower()
        if tag.startswith("zh"):
            return "zh_CN"
        if tag.startswith("en"):
            return "en"
    return None


def request_locale(request: Request, user_locale: str | None, default: str) -> str:
    """The signed-in user's choice, else the language cookie, else the browser's, else the default."""
    for candidate in (
        user_locale,
        request.cookies.get(LANG_COOKIE),
        _from_accept_language(request.headers.get("accept-language", "")),
    ):
        if candidate in SUPPORTED_LOCALES:
            return candidate
    return default
