"""Text analysis for knowledge-base search: normalization, tokenization and highlighting.

Chinese text is indexed twice: as jieba words (precise where the dictionary knows the word) and as
overlapping character bigrams (robust where segmentation disagrees between question and article,
which is the common case for customer questions). Other scripts are split on non-word characters;
Latin words get a light suffix stemmer so that "card"/"cards", "charge"/"charged" meet.
"""

from __future__ import annotations

import functools
import html
import re
import threading
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import jieba

__all__ = ["Analysis", "Analyzer", "highlight", "normalize", "stem"]

# CJK ideographs (basic, extension A, compatibility). Kana and Hangul are space- or
# script-delimited enough to be handled as ordinary words.
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_TOKEN_RE = re.compile(rf"([{_CJK}]+)|((?:(?![{_CJK}])[^\W_])+(?:['’](?:(?![{_CJK}])[^\W_])+)?)")

# Function words that carry no topic. Negations and question words ("not", "why", "how") are kept:
# "why was my card declined" and "my card was not declined" are different questions.
# fmt: off
ENGLISH_STOP_WORDS = frozenset((
    "a", "an", "the", "of", "to", "in", "on", "at", "for", "from", "by", "with", "about", "as", "into",
    "is", "are", "was", "were", "be", "been", "being", "am", "do", "does", "did",
    "i", "me", "my", "we", "our", "you", "your", "he", "she", "it", "its", "they", "them", "their",
    "this", "that", "these", "those", "and", "or", "so", "if", "then", "there", "here", "just",
    "please", "hi", "hello", "thanks", "thank",
))
# Chinese particles and pronouns; the bigram channel still sees them inside longer phrases.
CHINESE_STOP_WORDS = frozenset((
    "的", "了", "吗", "呢", "吧", "啊", "呀", "哦", "嘛", "么", "着", "过",
    "我", "你", "您", "他", "她", "它", "我们", "你们", "他们", "请问", "一下", "和", "与", "及", "或",
))
# fmt: on

_tokenizer = jieba.Tokenizer()
_tokenizer_lock = threading.Lock()
jieba.setLogLevel(60)  # jieba logs dictionary loading at INFO on first use


def _jieba_words(run: str) -> list[str]:
    if not _tokenizer.initialized:
        with _tokenizer_lock:  # the dictionary load is not thread-safe and takes about a second
            _tokenizer.initialize()
    return _tokenizer.lcut(run)


def normalize(text: str) -> str:
    """Fold full-width forms to half-width (NFKC) and lower-case."""
    if text.isascii():
        return text.lower()
    return unicodedata.normalize("NFKC", text).lower()


@functools.lru_cache(maxsize=1 << 16)
def _fold_char(ch: str) -> str:
    return unicodedata.normalize("NFKC", ch).lower()


def _normalize_with_offsets(text: str) -> tuple[str, Sequence[int]]:
    """Normalize character by character, remembering each output character's source index.

    Used only for highlighting, where marks must land on the original text.
    """
    folded = [_fold_char(ch) for ch in text]
    norm = "".join(folded)
    if len(norm) == len(text):  # no character folded to several: positions are unchanged
        return norm, range(len(text))
    offsets: list[int] = []
    for i, piece in enumerate(folded):
        offsets.extend([i] * len(piece))
    return norm, offsets


def stem(word: str) -> str:
    """A light English suffix stripper (plural, -ing, -ed, final e).

    Deliberately weaker than Porter: over-stemming merges distinct intents ("general"/"generic")
    while this only joins inflections of one word.
    """
    if not word.isascii() or not word.isalpha() or len(word) <= 3:
        return word
    if word.endswith("ies") and len(word) > 4:
        word = word[:-3] + "y"
    elif word.endswith("sses"):
        word = word[:-2]
    elif word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]
    for suffix, min_len in (("ing", 6), ("ed", 5)):
        if word.endswith(suffix) and len(word) >= min_len:
            word = word[: -len(suffix)]
            # "transferred" -> "transferr" -> "transfer"
            if len(word) > 3 and word[-1] == word[-2] and word[-1] not in "lsz":
                word = word[:-1]
            break
    if word.endswith("e") and len(word) > 4:
        word = word[:-1]
    return word


@dataclass(frozen=True, slots=True)
class Analysis:
    """Index terms of one text, per channel.

    ``words``: jieba words and stemmed non-CJK words, stop words removed.
    ``grams``: CJK character bigrams (a lone character stands for itself) plus the same non-CJK
    words, since those are already delimited.
    """

    words: list[str]
    grams: list[str]


class Analyzer:
    """Turns text into index terms. Stateless apart from jieba's shared dictionary."""

    def analyze(self, text: str) -> Analysis:
        words: list[str] = []
        grams: list[str] = []
        for cjk, other in _TOKEN_RE.findall(normalize(text)):
            if cjk:
                words.extend(w for w in _jieba_words(cjk) if w not in CHINESE_STOP_WORDS)
                if len(cjk) == 1:
                    grams.append(cjk)
                else:
                    grams.extend(cjk[i : i + 2] for i in range(len(cjk) - 1))
            else:
                token = stem(other.replace("’", "'"))
                if token not in ENGLISH_STOP_WORDS:
                    words.append(token)
                    grams.append(token)
        return Analysis(words, grams)

    def features(self, text: str) -> list[str]:
        """Features for the learned question classifier.

        Adds what BM25 terms miss on short questions: word pairs ("not working" vs "working"),
        and character 3-5-grams of Latin words for typos and unseen inflections.
        """
        norm = normalize(text)
        words: list[str] = []
        feats: list[str] = []
        latin: list[str] = []
        for cjk, other in _TOKEN_RE.findall(norm):
            if cjk:
                words.extend(_jieba_words(cjk))
                feats.extend("b" + cjk[i : i + 2] for i in range(max(1, len(cjk) - 1)))
            else:
                other = other.replace("’", "'")
                words.append(stem(other))
                latin.append(other)
        feats.extend("w" + w for w in words)
        feats.extend(f"p{a} {b}" for a, b in zip(words, words[1:], strict=False))
        if latin:
            stream = f" {' '.join(latin)} "
            for n in (3, 4, 5):
                feats.extend("c" + stream[i : i + n] for i in range(len(stream) - n + 1))
        return feats


def _match_spans(norm: str, query: str) -> list[tuple[int, int]]:
    """Spans of ``norm`` (normalized text) that match a term of ``query``, merged and sorted."""
    cjk_grams: set[str] = set()
    latin: set[str] = set()
    for cjk, other in _TOKEN_RE.findall(normalize(query)):
        if cjk:
            # Bigrams of the question; a lone character only if it is not a particle.
            if len(cjk) == 1:
                if cjk not in CHINESE_STOP_WORDS:
                    cjk_grams.add(cjk)
            else:
                cjk_grams.update(cjk[i : i + 2] for i in range(len(cjk) - 1))
        else:
            token = stem(other.replace("’", "'"))
            if token not in ENGLISH_STOP_WORDS:
                latin.add(token)
    spans: list[tuple[int, int]] = []
    for m in _TOKEN_RE.finditer(norm):
        if m.group(1):
            run, base = m.group(1), m.start()
            for i in range(len(run)):
                if run[i : i + 2] in cjk_grams and i + 2 <= len(run):
                    spans.append((base + i, base + i + 2))
                elif run[i] in cjk_grams:
                    spans.append((base + i, base + i + 1))
        elif stem(m.group(2).replace("’", "'")) in latin:
            spans.append(m.span())
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def _best_window(spans: list[tuple[int, int]], length: int, width: int) -> int:
    """Start of a ``width``-character window holding the most matches, a little before the first."""
    if not spans or length <= width:
        return 0
    best_start, best_count, last = 0, 0, 0
    for first, (start, _) in enumerate(spans):
        while last < len(spans) and spans[last][1] <= start + width:
            last += 1
        if last - first > best_count:
            best_start, best_count = start, last - first
    return max(0, min(best_start - width // 5, length - width))


def highlight(text: str, query: str, *, max_chars: int | None = 160, tag: str = "mark") -> str:
    """HTML snippet of ``text`` with the query's terms wrapped in ``<tag>``.

    All text is HTML-escaped, so the result is safe to insert into a page. With ``max_chars`` the
    snippet is the window with the most matches, with an ellipsis where text was cut.
    """
    if not text:
        return ""
    norm, offsets = _normalize_with_offsets(text)
    spans = [(offsets[s], offsets[e - 1] + 1) for s, e in _match_spans(norm, query)]
    start, end = 0, len(text)
    if max_chars is not None and len(text) > max_chars:
        start = _best_window(spans, len(text), max_chars)
        end = start + max_chars
    parts: list[str] = ["…"] if start > 0 else []
    pos = start
    for s, e in spans:
        if e <= start or s >= end:
            continue
        s, e = max(s, start), min(e, end)
        parts.append(html.escape(text[pos:s]))
        parts.append(f"<{tag}>{html.escape(text[s:e])}</{tag}>")
        pos = e
    parts.append(html.escape(text[pos:end]))
    if end < len(text):
        parts.append("…")
    return "".join(parts)
