"""In-memory knowledge-base search: BM25F-style ranking, filters, highlights, suggestions.

Layout (Lucene-like, sized for 100k articles on one core):

* Every stored document version gets a *slot* (a row number). Updating a document retires its slot
  and gives the new version a fresh one, so index segments never change after they are built.
* Postings live in immutable numpy *segments*: per term, the slots containing it and a precomputed
  impact (the field-weighted, length-normalized, saturated term frequency). Scoring a query is one
  vectorized gather-add per query term and segment, times the term's idf, which is computed at query
  time from live document frequencies so that removals and additions keep it exact.
* New documents go to a small *delta* segment that is rebuilt on each change (bounded by
  ``SearchConfig.delta_max_docs``), so a change is searchable at once without a full rebuild. Full
  deltas are frozen into segments and neighbouring segments of similar size are merged, which keeps
  the segment count logarithmic while big merges stay rare.
* Optionally a question classifier learned from the articles' similar questions (what agents linked
  questions to) re-ranks the top candidates.
* Optionally a sentence-embedding model (``embedding``) re-scores them by the cosine of question and
  article. Article vectors are set from outside (computed once, stored by the caller) and used only
  while they match the article's current text.
"""

from __future__ import annotations

import bisect
import math
import re
import threading
from array import array
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.optimize import minimize

from kefu.knowledge.search.analyzer import Analyzer, _jieba_words, highlight, normalize
from kefu.knowledge.search.embedding import Embedder, passage_key, passage_text
from kefu.knowledge.search.question_model import QuestionModel

__all__ = [
    "Document",
    "FieldParams",
    "QuestionClassifier",
    "SearchConfig",
    "SearchEngine",
    "SearchFilters",
    "SearchHit",
    "Suggestion",
]

# Index fields. "lead" is derived from the body: its first clause, where answers tend to restate
# the question ("可以退保，犹豫期内..."), so matching there is stronger evidence than deep in the body.
_FIELDS = ("title", "similar_questions", "body", "lead")
_KINDS = ("words", "grams")
_KIND_PREFIX = ("\x01", "\x02")  # keeps a word and an identical bigram apart in one term dictionary
_CLAUSE_END = re.compile(r"[。！？!?；;\n，,：:]|\.(?:\s|$)")


@dataclass(frozen=True, slots=True)
class Document:
    """A searchable article. ``tags`` is multi-valued; the other filter fields are single values."""

    id: str
    title: str = ""
    body: str = ""
    similar_questions: tuple[str, ...] = ()
    category: str | None = None
    tags: tuple[str, ...] = ()
    language: str | None = None
    audience: str | None = None
    status: str | None = None


@dataclass(frozen=True, slots=True)
class FieldParams:
    weight: float
    b: float  # BM25 length normalization: 0 ignores length, 1 fully normalizes


@dataclass(frozen=True, slots=True)
class SearchConfig:
    """Ranking parameters. The defaults were tuned on one half of the development queries only."""

    k1: float = 1.2
    # Not tuned (neither data set has real titles): a title states the article's topic, so a match
    # there counts double, as in common BM25F settings.
    title: FieldParams = FieldParams(2.0, 0.5)
    similar_questions: FieldParams = FieldParams(1.0, 0.75)
    body: FieldParams = FieldParams(1.0, 0.75)
    lead: FieldParams = FieldParams(0.8, 0.5)
    lead_clauses: int = 3
    # Bigrams are the primary Chinese channel; words add precision when the dictionary segments
    # question and article alike.
    words_weight: float = 0.8
    grams_weight: float = 1.0
    rerank_depth: int = 50
    classifier_weight: float = 2.0
    # An article no query word matched enters the results on the classifier's word alone only when
    # it is this sure: otherwise every query, even one the knowledge base cannot answer, would show
    # "results" (and the search-gap report would never see it).
    classifier_min_probability: float = 0.3
    classifier_l2: float = 3e-6
    classifier_max_iter: int = 200
    classifier_max_params: int = 30_000_000
    # With an embedding model: how many keyword candidates it re-scores, and the share of the cosine in
    # the final score (the rest is the max-normalized keyword score). e5's cosines of a question with
    # related and unrelated answers differ by a few hundredths, so the cosine needs most of the weight
    # to move ranks; tuned on the tune half (0.95: MRR@10 0.425 -> 0.503 there).
    dense_depth: int = 100
    dense_weight: float = 0.95
    delta_max_docs: int = 256
    bulk_chunk_docs: int = 8192  # bulk loads are indexed in chunks of this size to bound memory

    def field_params(self) -> tuple[FieldParams, ...]:
        return (self.title, self.similar_questions, self.body, self.lead)


@dataclass(frozen=True, slots=True)
class SearchFilters:
    """Restricts results. ``category``/``language``/``audience``/``status`` match any listed value;
    ``tags`` requires all listed tags."""

    category: str | Sequence[str] | None = None
    tags: Sequence[str] = ()
    language: str | Sequence[str] | None = None
    audience: str | Sequence[str] | None = None
    status: str | Sequence[str] | None = None


@dataclass(frozen=True, slots=True)
class SearchHit:
    id: str
    score: float
    title: str = ""  # HTML, escaped, query terms in <mark>
    snippet: str = ""  # HTML, escaped, query terms in <mark>


@dataclass(frozen=True, slots=True)
class Suggestion:
    text: str
    id: str


class _Segment:
    """Immutable postings: for each term key, a run of (slot, impact) pairs."""

    __slots__ = ("keys", "starts", "slots", "impacts")

    def __init__(self, keys: np.ndarray, slots: np.ndarray, impacts: np.ndarray) -> None:
        """``keys`` must be sorted; one entry per posting."""
        # Keys are sorted, so runs start where the key changes (cheaper than np.unique's re-sort).
        keys = np.asarray(keys)
        firsts = np.concatenate(([0], np.flatnonzero(np.diff(keys)) + 1)) if len(keys) else np.zeros(0, np.int64)
        self.keys = keys[firsts].astype(np.int32)
        self.starts = np.append(firsts, len(keys)).astype(np.int64)
        self.slots = slots.astype(np.int32, copy=False)
        self.impacts = impacts.astype(np.float32, copy=False)

    @property
    def size(self) -> int:
        return len(self.slots)

    def posting_keys(self) -> np.ndarray:
        return np.repeat(self.keys, np.diff(self.starts))

    @staticmethod
    def merge(segments: Sequence[_Segment], alive: np.ndarray) -> _Segment:
        keys = np.concatenate([s.posting_keys() for s in segments])
        slots = np.concatenate([s.slots for s in segments])
        impacts = np.concatenate([s.impacts for s in segments])
        live = alive[slots]  # drop postings of removed or replaced documents
        keys, slots, impacts = keys[live], slots[live], impacts[live]
        order = np.argsort(keys, kind="stable")
        return _Segment(keys[order], slots[order], impacts[order])


class _GrowableArray:
    """A numpy array with amortized O(1) append by capacity doubling."""

    def __init__(self, dtype: type | np.dtype, fill: float = 0, width: int = 0) -> None:
        self._fill = fill
        self._shape_tail = (width,) if width else ()
        self.data = np.full((64, *self._shape_tail), fill, dtype=dtype)

    def ensure(self, n: int) -> None:
        if n > len(self.data):
            grown = np.full((max(n, 2 * len(self.data)), *self._shape_tail), self._fill, dtype=self.data.dtype)
            grown[: len(self.data)] = self.data
            self.data = grown


class _Ingest:
    """Flattened analysis of a batch: one row per (document, channel, distinct term).

    Typed arrays, not lists: a 100k-article bulk load has ~50M rows.
    """

    def __init__(self) -> None:
        self.keys = array("i")
        self.slots = array("i")
        self.channels = array("b")
        self.tfs = array("i")


def _split_lead(body: str, clauses: int) -> tuple[str, str]:
    """Split ``body`` after its first ``clauses`` non-empty clauses.

    The cut falls on punctuation, which no token spans, so analysing both parts gives exactly the
    terms of the whole body: the lead costs no second segmentation.
    """
    seen = 0
    last = 0
    for m in _CLAUSE_END.finditer(body):
        if body[last : m.start()].strip():
            seen += 1
            if seen == clauses:
                return body[: m.end()], body[m.end() :]
        last = m.end()
    return body, ""


class SearchEngine:
    """In-memory search over knowledge articles. Writes are serialized; searches may run concurrently."""

    def __init__(
        self, config: SearchConfig | None = None, analyzer: Analyzer | None = None, embedder: Embedder | None = None
    ) -> None:
        self.config = config or SearchConfig()
        self.analyzer = analyzer or Analyzer()
        self.embedder = embedder
        # With an embedder: each document's passage key, and its vector with the key it was made from.
        self._passage_keys: dict[str, str] = {}
        self._vectors: dict[str, tuple[str, np.ndarray]] = {}
        self._lock = threading.RLock()
        self._docs: dict[str, Document] = {}
        self._slot_of: dict[str, int] = {}
        self._id_of_slot: list[str | None] = []
        self._alive = _GrowableArray(np.bool_, False)
        n_channels = len(_KINDS) * len(_FIELDS)
        # Per slot and channel (kind x field): number of terms, for length normalization.
        self._lengths = _GrowableArray(np.float32, 0, width=n_channels)
        self._length_sum = np.zeros(n_channels)
        self._length_docs = np.zeros(n_channels)
        self._term_ids: dict[str, int] = {}
        self._df = _GrowableArray(np.int32, 0)
        self._segments: list[_Segment] = []
        self._delta_parts: list[_Segment] = []
        self._delta_docs = 0
        self._delta: _Segment | None = None
        # Filters: per-slot codes for single-valued fields, slot sets for tags.
        self._codes: dict[str, dict[str, int]] = {"category": {}, "language": {}, "audience": {}, "status": {}}
        self._code_arrays = {name: _GrowableArray(np.int32, -1) for name in self._codes}
        self._tag_slots: dict[str, set[int]] = {}
        self._tag_arrays: dict[str, np.ndarray] = {}
        # Suggestions: sorted (normalized phrase, phrase, id) and (word, normalized phrase, phrase, id).
        self._phrases: list[tuple[str, str, str]] = []
        self._phrase_words: list[tuple[str, str, str, str]] = []
        self._classifier: QuestionClassifier | None = None
        # With an embedder: the fast stand-in for its question vectors, once built (question_model.py).
        self.question_model: QuestionModel | None = None

    # ------------------------------------------------------------------ writing

    def __len__(self) -> int:
        return len(self._docs)

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self._docs

    def get(self, doc_id: str) -> Document | None:
        return self._docs.get(doc_id)

    def add(self, doc: Document) -> None:
        """Add or replace one document; it is searchable when this returns."""
        self.add_many([doc])

    def add_many(self, docs: Iterable[Document]) -> None:
        """Add or replace documents. A large batch becomes its own segment (bulk load)."""
        batch: dict[str, Document] = {d.id: d for d in docs}  # last version of a duplicate wins
        if not batch:
            return
        with self._lock:
            for doc_id in batch:
                if doc_id in self._docs:
                    self._retire(doc_id)
            docs_in_order = list(batch.values())
            chunk = max(self.config.bulk_chunk_docs, self.config.delta_max_docs)
            for start in range(0, len(docs_in_order), chunk):
                self._ingest(docs_in_order[start : start + chunk])
            self._add_suggestions(docs_in_order)

    def remove(self, doc_id: str) -> bool:
        """Remove a document; returns whether it existed."""
        with self._lock:
            if doc_id not in self._docs:
                return False
            self._retire(doc_id)
            self._passage_keys.pop(doc_id, None)
            self._vectors.pop(doc_id, None)
            return True

    def compact(self) -> None:
        """Merge everything into one segment, dropping removed documents' postings.

        Not needed for correctness; useful after a bulk load or heavy churn, e.g. from a nightly job.
        """
        with self._lock:
            self._freeze_delta()
            if len(self._segments) > 1 or (self._segments and not self._alive.data[self._segments[0].slots].all()):
                self._segments = [_Segment.merge(self._segments, self._alive.data)]

    def _ingest(self, docs: list[Document]) -> None:
        first_slot = len(self._id_of_slot)
        ingest = _Ingest()
        for offset, doc in enumerate(docs):
            self._register(doc, first_slot + offset, ingest)
        segment = self._build_segment(ingest)
        if len(docs) >= self.config.delta_max_docs:
            self._segments.append(segment)
            self._merge_segments()
        else:
            self._delta_parts.append(segment)
            self._delta_docs += len(docs)
            self._delta = None
            if self._delta_docs >= self.config.delta_max_docs:
                self._freeze_delta()

    def _register(self, doc: Document, slot: int, ingest: _Ingest) -> None:
        self._docs[doc.id] = doc
        if self.embedder is not None:
            self._passage_keys[doc.id] = passage_key(self.passage_of(doc))
        self._slot_of[doc.id] = slot
        self._id_of_slot.append(doc.id)
        for arr in (self._alive, self._lengths, *self._code_arrays.values()):
            arr.ensure(slot + 1)
        self._alive.data[slot] = True
        for name, value in (
            ("category", doc.category),
            ("language", doc.language),
            ("audience", doc.audience),
            ("status", doc.status),
        ):
            if value is not None:
                codes = self._codes[name]
                self._code_arrays[name].data[slot] = codes.setdefault(value, len(codes))
        for tag in set(doc.tags):
            self._tag_slots.setdefault(tag, set()).add(slot)
            self._tag_arrays.pop(tag, None)
        lengths, terms = self._analyze(doc)
        self._lengths.data[slot] = lengths
        self._length_sum += lengths
        self._length_docs += lengths > 0
        distinct: set[int] = set()
        for channel, counts in enumerate(terms):
            ingest.keys.extend(counts.keys())
            ingest.tfs.extend(counts.values())
            ingest.slots.extend([slot] * len(counts))
            ingest.channels.extend([channel] * len(counts))
            distinct.update(counts)
        keys = np.fromiter(distinct, dtype=np.int64, count=len(distinct))
        self._df.ensure(len(self._term_ids))
        self._df.data[keys] += 1

    def _retire(self, doc_id: str) -> None:
        """Take a document's slot out of results and statistics (its postings stay until a merge)."""
        doc = self._docs.pop(doc_id)
        slot = self._slot_of.pop(doc_id)
        self._id_of_slot[slot] = None
        self._alive.data[slot] = False
        lengths = self._lengths.data[slot].astype(np.float64)
        self._length_sum -= lengths
        self._length_docs -= lengths > 0
        for tag in set(doc.tags):
            self._tag_slots[tag].discard(slot)
            self._tag_arrays.pop(tag, None)
        # Re-analysis is cheaper than keeping every document's term list in memory.
        _, terms = self._analyze(doc)
        keys = {key for counts in terms for key in counts}
        self._df.data[np.fromiter(keys, dtype=np.int64, count=len(keys))] -= 1
        self._remove_suggestions(doc)

    def _analyze(self, doc: Document) -> tuple[np.ndarray, list[Counter[int]]]:
        """Term counts per channel (kind-major, then field) and the channel lengths."""
        analyze = self.analyzer.analyze
        lead, rest = _split_lead(doc.body, self.config.lead_clauses)
        lead_analysis = [analyze(lead)] if lead else []
        per_field = (
            [analyze(doc.title)] if doc.title else [],
            [analyze(q) for q in doc.similar_questions if q],
            lead_analysis + ([analyze(rest)] if rest else []),
            lead_analysis,
        )
        lengths = np.zeros(len(_KINDS) * len(_FIELDS))
        terms: list[Counter[int]] = []
        ids = self._term_ids
        for k, prefix in enumerate(_KIND_PREFIX):
            for f, analyses in enumerate(per_field):
                counts: Counter[int] = Counter()
                for analysis in analyses:
                    tokens = analysis.words if k == 0 else analysis.grams
                    for tok in tokens:
                        key = ids.setdefault(prefix + tok, len(ids))
                        counts[key] += 1
                    lengths[k * len(_FIELDS) + f] += len(tokens)
                terms.append(counts)
        return lengths, terms

    def _build_segment(self, ingest: _Ingest) -> _Segment:
        """Impacts for a batch: sum over fields of weight * saturated, length-normalized tf."""
        cfg = self.config
        keys = np.frombuffer(ingest.keys, dtype=np.int32).astype(np.int64)
        slots = np.frombuffer(ingest.slots, dtype=np.int32).astype(np.int64)
        channels = np.frombuffer(ingest.channels, dtype=np.int8).astype(np.int64)
        tf = np.frombuffer(ingest.tfs, dtype=np.int32).astype(np.float64)
        params = cfg.field_params() * len(_KINDS)
        weight = np.array([p.weight for p in params])[channels]
        b = np.array([p.b for p in params])[channels]
        avg = np.where(self._length_docs > 0, self._length_sum / np.maximum(self._length_docs, 1), 1.0)
        length = self._lengths.data[slots, channels]
        norm = 1 - b + b * length / avg[channels]
        contribution = weight * tf * (cfg.k1 + 1) / (tf + cfg.k1 * norm)
        # One posting per (term, slot): sum the field contributions.
        code = keys << 32 | slots
        unique, inverse = np.unique(code, return_inverse=True)
        impacts = np.bincount(inverse, weights=contribution, minlength=len(unique))
        return _Segment(unique >> 32, unique & 0xFFFFFFFF, impacts)

    def _freeze_delta(self) -> None:
        if self._delta_parts:
            self._segments.append(_Segment.merge(self._delta_parts, self._alive.data))
            self._delta_parts, self._delta_docs, self._delta = [], 0, None
            self._merge_segments()

    def _merge_segments(self) -> None:
        # Merge while the newest segment is at least a quarter of the one before it: sizes then
        # grow geometrically, so there are O(log n) segments and each posting is rewritten O(log n) times.
        while len(self._segments) >= 2 and 4 * self._segments[-1].size >= self._segments[-2].size:
            merged = _Segment.merge(self._segments[-2:], self._alive.data)
            self._segments[-2:] = [merged]

    # ------------------------------------------------------------------ searching

    def _current_segments(self) -> list[_Segment]:
        with self._lock:
            if self._delta is None and self._delta_parts:
                self._delta = (
                    self._delta_parts[0]
                    if len(self._delta_parts) == 1
                    else _Segment.merge(self._delta_parts, self._alive.data)
                )
                self._delta_parts = [self._delta]
            return self._segments + ([self._delta] if self._delta is not None else [])

    def _query_terms(self, query: str) -> tuple[np.ndarray, np.ndarray]:
        """Known term keys of the query and their weights (channel weight x idf)."""
        analysis = self.analyzer.analyze(query)
        n_docs = max(len(self._docs), 1)
        keys: list[int] = []
        weights: list[float] = []
        for prefix, tokens, kind_weight in (
            (_KIND_PREFIX[0], analysis.words, self.config.words_weight),
            (_KIND_PREFIX[1], analysis.grams, self.config.grams_weight),
        ):
            for tok in dict.fromkeys(tokens):
                key = self._term_ids.get(prefix + tok)
                if key is None:
                    continue
                df = int(self._df.data[key])
                if df <= 0:
                    continue
                keys.append(key)
                weights.append(kind_weight * math.log(1 + (n_docs - df + 0.5) / (df + 0.5)))
        return np.asarray(keys, dtype=np.int64), np.asarray(weights, dtype=np.float32)

    def _bm25(self, query: str) -> np.ndarray:
        keys, weights = self._query_terms(query)
        segments = self._current_segments()
        scores = np.zeros(len(self._id_of_slot), dtype=np.float32)
        if not len(keys):
            return scores
        for seg in segments:
            if not len(seg.keys):
                continue
            pos = np.searchsorted(seg.keys, keys)
            pos[pos == len(seg.keys)] = 0
            for i in np.flatnonzero(seg.keys[pos] == keys):
                lo, hi = seg.starts[pos[i]], seg.starts[pos[i] + 1]
                # A slot occurs once per term in a segment, so fancy-index += is exact here.
                scores[seg.slots[lo:hi]] += weights[i] * seg.impacts[lo:hi]
        return scores

    def _filter(self, slots: np.ndarray, filters: SearchFilters | None) -> np.ndarray:
        """Boolean mask over ``slots``: alive and passing the filters."""
        keep = self._alive.data[slots]
        if filters is None:
            return keep
        for name in ("category", "language", "audience", "status"):
            wanted = getattr(filters, name)
            if wanted is None:
                continue
            values = [wanted] if isinstance(wanted, str) else list(wanted)
            codes = [self._codes[name][v] for v in values if v in self._codes[name]]
            keep &= np.isin(self._code_arrays[name].data[slots], codes)
        for tag in filters.tags:
            tagged = self._tag_arrays.get(tag)
            if tagged is None:
                with self._lock:
                    tagged = np.fromiter(self._tag_slots.get(tag, ()), dtype=np.int64)
                    self._tag_arrays[tag] = tagged
            keep &= np.isin(slots, tagged)
        return keep

    def search(
        self,
        query: str,
        *,
        top_k: int = 10,
        filters: SearchFilters | None = None,
        highlights: bool = True,
    ) -> list[SearchHit]:
        """The ``top_k`` best documents for ``query`` that pass ``filters``."""
        if top_k <= 0 or not query.strip():
            return []
        scores = self._bm25(query)
        candidates = np.flatnonzero(scores)
        candidates = candidates[self._filter(candidates, filters)]
        depth = max(top_k, self.config.rerank_depth if self._classifier else top_k)
        if self.embedder is not None and self._vectors:
            depth = max(depth, self.config.dense_depth)
        if len(candidates) > depth:
            candidates = candidates[np.argpartition(-scores[candidates], depth - 1)[:depth]]
        ranked = self._rerank(query, candidates, scores, filters)[:top_k]
        hits = []
        for doc_id, score in ranked:
            doc = self._docs.get(doc_id)
            if doc is None:  # removed while this search ran
                continue
            hits.append(
                SearchHit(
                    id=doc_id,
                    score=score,
                    title=highlight(doc.title, query, max_chars=None) if highlights else "",
                    snippet=highlight(doc.body, query) if highlights else "",
                )
            )
        return hits

    def _rerank(
        self, query: str, candidates: np.ndarray, scores: np.ndarray, filters: SearchFilters | None
    ) -> list[tuple[str, float]]:
        """Order candidates: BM25, blended with the classifier's probability when one is trained, then
        with the embedding cosine when vectors are there."""
        # A concurrent removal may have emptied a slot since filtering: skip it.
        bm25 = {doc_id: float(scores[s]) for s in candidates if (doc_id := self._id_of_slot[s]) is not None}
        scored = self._with_classifier(query, bm25, filters)
        if self.embedder is not None and self._vectors:
            scored = self._with_cosine(query, scored)
        return sorted(scored.items(), key=lambda kv: (-kv[1], kv[0]))

    def _with_cosine(self, query: str, scored: dict[str, float]) -> dict[str, float]:
        """(1 - w) x the max-normalized score + w x the cosine of question and article. An article
        without a vector yet (published a moment ago; its vector follows within about a second) counts
        as close as the closest candidate, so it competes on keywords alone instead of being buried."""
        assert self.embedder is not None
        ids, vectors = [], []
        for doc_id in scored:
            vector = self.vector_of(doc_id)
            if vector is not None:
                ids.append(doc_id)
                vectors.append(vector)
        if not vectors:
            return scored
        question = self.question_vector(query)
        cosines = dict(zip(ids, (np.stack(vectors) @ question).tolist(), strict=True))
        fill = max(cosines.values())
        top = max(scored.values(), default=0.0) or 1.0
        w = self.config.dense_weight
        return {doc_id: (1 - w) * s / top + w * cosines.get(doc_id, fill) for doc_id, s in scored.items()}

    def _with_classifier(self, query: str, bm25: dict[str, float], filters: SearchFilters | None) -> dict[str, float]:
        classifier = self._classifier
        if classifier is None:
            return bm25
        top = max(bm25.values(), default=0.0) or 1.0
        blended = {doc_id: s / top for doc_id, s in bm25.items()}
        predicted = [
            (doc_id, p)
            for doc_id, p in classifier.predict(query, top=self.config.rerank_depth)
            if doc_id in self._slot_of
        ]
        if predicted:
            slots = np.array([self._slot_of[d] for d, _ in predicted])
            passing = self._filter(slots, filters)
            for (doc_id, p), ok in zip(predicted, passing, strict=True):
                if ok and (doc_id in blended or p >= self.config.classifier_min_probability):
                    blended[doc_id] = blended.get(doc_id, 0.0) + self.config.classifier_weight * p
        return blended

    # ------------------------------------------------------------------ embeddings

    def question_vector(self, query: str) -> np.ndarray:
        """The question's vector: from the question model when there is one and it knows a word of the
        question (a fraction of a millisecond), else from the embedding model itself (tens of ms)."""
        assert self.embedder is not None
        model = self.question_model  # set_question_model admits only one made with this embedder
        if model is not None:
            vector = model.encode(query)
            if vector is not None:
                return vector
        return self.embedder.queries([query])[0]

    def set_question_model(self, model: QuestionModel | None) -> bool:
        """Use ``model`` for question vectors (None: the embedding model itself); False if it was made
        with another embedding model or dimension."""
        if model is not None and (
            self.embedder is None or model.model != self.embedder.name or model.dimension != self.embedder.dimension
        ):
            return False
        self.question_model = model
        return True

    @staticmethod
    def passage_of(doc: Document) -> str:
        return passage_text(doc.title, doc.similar_questions, doc.body)

    def vector_of(self, doc_id: str) -> np.ndarray | None:
        """The document's vector, if one was set for its current text."""
        stored = self._vectors.get(doc_id)
        if stored is None or stored[0] != self._passage_keys.get(doc_id):
            return None
        return stored[1]

    def passages(self) -> list[str]:
        """Every document's passage text (what articles are embedded from)."""
        with self._lock:
            docs = list(self._docs.values())
        return [self.passage_of(doc) for doc in docs]

    def missing_vectors(self) -> list[tuple[str, str, str]]:
        """(id, passage key, passage text) of every document without a vector for its current text."""
        with self._lock:
            missing = [
                (doc_id, key, doc)
                for doc_id, doc in self._docs.items()
                if (key := self._passage_keys.get(doc_id)) is not None and self.vector_of(doc_id) is None
            ]
        return [(doc_id, key, self.passage_of(doc)) for doc_id, key, doc in missing]

    def set_vector(self, doc_id: str, key: str, vector: np.ndarray) -> bool:
        """Use ``vector`` for the document while its passage key is ``key``; False if the document is gone
        or changed meanwhile (the vector was made from an older text) or the dimension is wrong."""
        if self.embedder is None or vector.shape != (self.embedder.dimension,):
            return False
        with self._lock:
            if self._passage_keys.get(doc_id) != key:
                return False
            self._vectors[doc_id] = (key, np.asarray(vector, dtype=np.float32))
            return True

    @property
    def vector_count(self) -> int:
        return sum(1 for doc_id in self._docs if self.vector_of(doc_id) is not None)

    # ------------------------------------------------------------------ learning

    def train_reranker(self) -> bool:
        """(Re)train the question classifier from the current documents' titles and similar questions.

        Only documents with similar questions take part: they are the resolved question -> article
        links. Returns whether a classifier is now active. Cost grows with examples x articles, so run
        it after bulk loads or periodically rather than on every change.
        """
        with self._lock:
            examples: list[tuple[str, str]] = []
            for doc in self._docs.values():
                if doc.similar_questions:
                    examples.extend((q, doc.id) for q in doc.similar_questions)
                    if doc.title:
                        examples.append((doc.title, doc.id))
        classifier = QuestionClassifier.train(examples, self.analyzer, self.config)
        with self._lock:
            self._classifier = classifier
        return classifier is not None

    # ------------------------------------------------------------------ suggestions

    @staticmethod
    def _phrase_tokens(norm: str) -> set[str]:
        tokens: set[str] = set()
        for token in re.findall(r"\w+", norm):
            tokens.add(token)
            if not token.isascii():
                tokens.update(_jieba_words(token))
        return tokens

    def _suggestion_entries(self, doc: Document) -> tuple[list[tuple[str, str, str]], list[tuple[str, str, str, str]]]:
        phrases = []
        words = []
        for phrase in dict.fromkeys([doc.title, *doc.similar_questions]):
            norm = normalize(phrase).strip()
            if norm:
                phrases.append((norm, phrase, doc.id))
                words.extend((w, norm, phrase, doc.id) for w in self._phrase_tokens(norm) if w != norm)
        return phrases, words

    def _add_suggestions(self, docs: Iterable[Document]) -> None:
        phrases: list[tuple[str, str, str]] = []
        words: list[tuple[str, str, str, str]] = []
        for doc in docs:
            p, w = self._suggestion_entries(doc)
            phrases += p
            words += w
        if len(phrases) > 64:  # bulk load: one sort beats many insertions
            self._phrases = sorted(self._phrases + phrases)
            self._phrase_words = sorted(self._phrase_words + words)
        else:
            for item in phrases:
                bisect.insort(self._phrases, item)
            for word_item in words:
                bisect.insort(self._phrase_words, word_item)

    def _remove_suggestions(self, doc: Document) -> None:
        phrases, words = self._suggestion_entries(doc)
        for entries, items in ((self._phrases, phrases), (self._phrase_words, words)):
            for item in items:
                i = bisect.bisect_left(entries, item)
                if i < len(entries) and entries[i] == item:
                    del entries[i]

    def suggest(self, prefix: str, *, limit: int = 8, filters: SearchFilters | None = None) -> list[Suggestion]:
        """Titles and similar questions completing what the user has typed so far.

        First phrases starting with the typed text, then phrases containing all typed words where the
        last, unfinished word may be a prefix.
        """
        typed = normalize(prefix).lstrip()
        if not typed.strip() or limit <= 0:
            return []
        found: dict[str, Suggestion] = {}
        allowed: dict[str, bool] = {}

        def accept(phrase: str, doc_id: str) -> bool:
            if doc_id not in allowed:
                slot = self._slot_of.get(doc_id)
                allowed[doc_id] = slot is not None and bool(self._filter(np.array([slot]), filters)[0])
            if allowed[doc_id] and phrase not in found:
                found[phrase] = Suggestion(phrase, doc_id)
            return len(found) >= limit

        phrases = self._phrases
        start = bisect.bisect_left(phrases, (typed,))
        for i in range(start, min(len(phrases), start + 10_000)):
            norm, phrase, doc_id = phrases[i]
            if not norm.startswith(typed) or accept(phrase, doc_id):
                break
        if len(found) < limit:
            tokens = re.findall(r"\w+", typed)
            if tokens:
                *complete, partial = tokens
                entries = self._phrase_words
                start = bisect.bisect_left(entries, (partial,))
                # Bounded scan: a one-letter prefix may match a large part of the vocabulary.
                for word, norm, phrase, doc_id in entries[start : start + 2_000]:
                    if not word.startswith(partial):
                        break
                    if all(t in norm for t in complete) and accept(phrase, doc_id):
                        break
        return list(found.values())[:limit]


class QuestionClassifier:
    """Softmax regression from question features to article ids, trained on resolved questions.

    Lexical search scores each article against one query; the classifier also learns which words
    separate similar articles (e.g. "pending" vs "declined" card payments) from many examples.
    """

    def __init__(
        self, analyzer: Analyzer, vocabulary: dict[str, int], idf: np.ndarray, weights: np.ndarray, labels: list[str]
    ) -> None:
        self._analyzer = analyzer
        self._vocabulary = vocabulary
        self._idf = idf
        self._weights = weights.astype(np.float32)  # (features + 1 bias row) x classes
        self._labels = labels

    @classmethod
    def train(
        cls, examples: Sequence[tuple[str, str]], analyzer: Analyzer, config: SearchConfig
    ) -> QuestionClassifier | None:
        """Fit on (question, article id) pairs; ``None`` when there is too little to learn or too much to fit."""
        labels = sorted({doc_id for _, doc_id in examples})
        if len(labels) < 2:
            return None
        label_index = {label: i for i, label in enumerate(labels)}
        features = [Counter(analyzer.features(text)) for text, _ in examples]
        df = Counter(f for feats in features for f in feats)
        # With many examples, a feature seen in one question only is mostly noise; dropping those
        # halves training time (measured on banking77 with no loss of accuracy).
        min_df = 2 if len(examples) >= 1000 else 1
        while len([f for f, n in df.items() if n >= min_df]) * len(labels) > config.classifier_max_params:
            min_df += 1  # drop rare features until the weight matrix fits
            if min_df > 5:
                return None
        vocabulary = {f: i for i, f in enumerate(sorted(f for f, n in df.items() if n >= min_df))}
        idf = np.zeros(len(vocabulary))
        for f, i in vocabulary.items():
            idf[i] = math.log((1 + len(examples)) / (1 + df[f])) + 1
        x = cls._vectorize(features, vocabulary, idf)
        y = np.array([label_index[doc_id] for _, doc_id in examples])
        n, d, c = x.shape[0], x.shape[1], len(labels)
        xt = x.T.tocsr()
        rows = np.arange(n)

        def loss_and_grad(flat: np.ndarray) -> tuple[float, np.ndarray]:
            w = flat.reshape(d + 1, c)
            z = x @ w[:-1] + w[-1]
            z -= z.max(axis=1, keepdims=True)
            p = np.exp(z)
            p /= p.sum(axis=1, keepdims=True)
            loss = -np.log(p[rows, y] + 1e-12).mean() + config.classifier_l2 * float((w[:-1] ** 2).sum())
            p[rows, y] -= 1  # p becomes the gradient of the loss w.r.t. z, times n
            p /= n
            grad = np.vstack([xt @ p + 2 * config.classifier_l2 * w[:-1], p.sum(axis=0)])
            return loss, grad.ravel()

        result = minimize(
            loss_and_grad,
            np.zeros((d + 1) * c),
            jac=True,
            method="L-BFGS-B",
            options={"maxiter": config.classifier_max_iter},
        )
        return cls(analyzer, vocabulary, idf, result.x.reshape(d + 1, c), labels)

    @staticmethod
    def _vectorize(features: Sequence[Counter[str]], vocabulary: dict[str, int], idf: np.ndarray) -> sparse.csr_matrix:
        """Sublinear tf-idf rows, L2-normalized, as a CSR matrix."""
        rows, cols, vals = [], [], []
        for r, counts in enumerate(features):
            for f, n in counts.items():
                i = vocabulary.get(f)
                if i is not None:
                    rows.append(r)
                    cols.append(i)
                    vals.append((1 + math.log(n)) * idf[i])
        x = sparse.csr_matrix((vals, (rows, cols)), shape=(len(features), len(vocabulary)))
        norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
        return (sparse.diags(1 / np.maximum(norms, 1e-12)) @ x).tocsr()

    def predict(self, text: str, *, top: int = 10) -> list[tuple[str, float]]:
        """The ``top`` most probable article ids with their probabilities."""
        counts = Counter(f for f in self._analyzer.features(text) if f in self._vocabulary)
        if not counts:  # nothing learned applies: the class prior alone is no evidence
            return []
        idx = np.array([self._vocabulary[f] for f in counts])
        vals = np.array([(1 + math.log(n)) for n in counts.values()]) * self._idf[idx]
        vals /= np.linalg.norm(vals)
        z = self._weights[-1] + vals @ self._weights[idx]
        p = np.exp(z - z.max())
        p /= p.sum()
        best = np.argsort(-p)[:top]
        return [(self._labels[i], float(p[i])) for i in best]
