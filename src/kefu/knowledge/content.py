"""Article and message bodies: Markdown (raw HTML allowed) rendered once, then sanitized by an allow-list.

Whatever comes in — pasted rich text, an import, a feedback message — leaves as HTML that cannot run
script: no event handlers, no javascript: URLs, no style or iframe. Links get rel="noopener noreferrer".
"""

from __future__ import annotations

from html import unescape

import nh3
from markdown_it import MarkdownIt

MAX_BODY_CHARS = 200_000

_markdown = MarkdownIt("commonmark", {"html": True, "linkify": False, "breaks": True}).enable("table")

_ALLOWED_TAGS = {
    "a",
    "abbr",
    "b",
    "blockquote",
    "br",
    "code",
    "dd",
    "del",
    "div",
    "dl",
    "dt",
    "em",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "hr",
    "i",
    "img",
    "ins",
    "kbd",
    "li",
    "mark",
    "ol",
    "p",
    "pre",
    "s",
    "small",
    "span",
    "strong",
    "sub",
    "sup",
    "table",
    "tbody",
    "td",
    "tfoot",
    "th",
    "thead",
    "tr",
    "u",
    "ul",
}
_ALLOWED_ATTRIBUTES = {
    "a": {"href", "title"},
    "img": {"src", "alt", "title", "width", "height"},
    "td": {"colspan", "rowspan", "align"},
    "th": {"colspan", "rowspan", "align"},
    "ol": {"start"},
    "code": {"class"},
    "span": {"class"},
}


def sanitize_html(html: str) -> str:
    return nh3.clean(
        html,
        tags=_ALLOWED_TAGS,
        attributes=_ALLOWED_ATTRIBUTES,
        url_schemes={"http", "https", "mailto", "tel"},
        link_rel="noopener noreferrer",
        strip_comments=True,
    )


def render_markdown(source: str) -> str:
    """Markdown (with any embedded HTML) to safe HTML."""
    return sanitize_html(_markdown.render(source))


def plain_text(html: str) -> str:
    """Text content of sanitized HTML, for search indexing and snippets."""
    return " ".join(unescape(nh3.clean(html, tags=set())).split())
