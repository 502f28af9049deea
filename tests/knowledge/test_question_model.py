"""The question model of search (fast question vectors learned from the embedding model): its vocabulary,
how a question is turned into a vector, the fitted map, storage, rebuilding, and how the engine uses it.
The embedder here is a deterministic stand-in (a hash of the text picks the vector) so that these checks
are exact and fast; tests/knowledge/test_search_embeddings.py runs the real model end to end."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from conftest import is_postgres
from kefu.knowledge.search.engine import Document, SearchEngine
from kefu.knowledge.search.question_model import (
    QuestionModel,
    build_question_model,
    fit_mapping,
    term_statistics,
    training_fragments,
)

pytestmark = pytest.mark.skipif(is_postgres(), reason="no database involved; runs in the SQLite run")

DIMENSION = 16
PASSAGES = [
    "犹豫期内退保\n犹豫期内退保可以全额退还保费。犹豫期过后退保只退现金价值。",
    "车险理赔需要哪些材料\n车险理赔需要驾驶证、行驶证和事故认定书。保险公司核定损失后赔付。",
    "少儿重疾险怎么买\n新生儿出生满28天即可投保少儿重疾险。父母作为投保人，孩子是被保险人。",
    "How do I reset my card PIN?\nYou can reset your card PIN in the app under Cards, then Security.",
]


class HashEmbedder:
    """A stand-in model: each text's vector is fixed by its hash; counts the texts it embeds."""

    name = "hash-model"
    dimension = DIMENSION

    def __init__(self) -> None:
        self.embedded: list[str] = []

    def _vector(self, text: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        vector = np.random.default_rng(seed).standard_normal(DIMENSION).astype(np.float32)
        return vector / np.linalg.norm(vector)

    def queries(self, texts):  # noqa: ANN001, ANN201
        self.embedded.extend(texts)
        return np.stack([self._vector(t) for t in texts])

    def passages(self, texts):  # noqa: ANN001, ANN201
        return np.stack([self._vector("passage: " + t) for t in texts])


def test_the_vocabulary_is_the_words_and_chinese_characters_of_the_articles() -> None:
    stats = term_statistics(PASSAGES)
    assert stats.documents == 4
    df = dict(zip(stats.terms, stats.document_frequency, strict=True))
    assert df["退保"] == 1 and df["理赔"] == 1 and df["pin"] == 1
    assert df["保"] == 3  # as a character: in every Chinese passage with 保 anywhere
    assert "犹" in df and "驾" in df  # every Chinese character, the fallback for unknown words
    # Capped words, all characters kept.
    capped = term_statistics(PASSAGES, max_words=2)
    words = [t for t in capped.terms if len(t) > 1]
    assert len(words) == 2 and "犹" in capped.terms


def test_fragments_are_question_length_clauses_of_the_articles() -> None:
    fragments = training_fragments(PASSAGES)
    assert fragments and all(6 <= len(f) <= 40 for f in fragments)
    assert set(fragments) <= {p.strip() for text in PASSAGES for p in _clauses(text)}
    assert training_fragments(PASSAGES) == fragments  # a fixed choice
    assert len(training_fragments(PASSAGES * 50, limit=7)) == 7


def _clauses(text: str) -> list[str]:
    import re

    return re.split(r"[。！？!?；;\n]+", text)


def test_a_question_becomes_a_unit_vector_from_its_known_words_or_their_characters() -> None:
    model = build_question_model(HashEmbedder(), PASSAGES)
    vector = model.encode("退保能退多少钱")
    assert vector is not None and vector.shape == (DIMENSION,)
    assert abs(float(np.linalg.norm(vector)) - 1) < 1e-5
    # An unknown word falls back to its known characters: 退货 is no word of the base, 退 is a character.
    assert model.rows("退货") == [model.index["退"]]
    # Nothing known at all: no vector (search then asks the model itself).
    assert model.encode("zzzz qqqq") is None and model.encode("") is None


def test_the_map_is_fitted_to_the_models_own_question_vectors() -> None:
    rng = np.random.default_rng(3)
    inputs = rng.standard_normal((200, 6))
    truth = rng.standard_normal((7, 4))
    targets = np.hstack([inputs, np.ones((200, 1))]) @ truth
    fitted = fit_mapping(inputs, targets, ridge=1e-9)
    np.testing.assert_allclose(fitted, truth, atol=1e-4)


def test_a_rebuild_embeds_only_new_terms() -> None:
    first = HashEmbedder()
    model = build_question_model(first, PASSAGES[:2])
    terms_before = set(model.terms)
    second = HashEmbedder()
    rebuilt = build_question_model(second, PASSAGES, previous=model)
    new_terms = set(rebuilt.terms) - terms_before
    assert new_terms and set(second.embedded) - set(training_fragments(PASSAGES)) == new_terms
    row = rebuilt.index["退保"]
    np.testing.assert_array_equal(rebuilt.vectors[row], model.vectors[model.index["退保"]])
    # Another embedding model's vectors are never reused.
    other = HashEmbedder()
    other.name = "another-model"
    build_question_model(other, PASSAGES, previous=model)
    assert terms_before <= set(other.embedded)


def test_the_stored_model_encodes_the_same() -> None:
    model = build_question_model(HashEmbedder(), PASSAGES)
    loaded = QuestionModel.from_bytes(model.to_bytes())
    assert (loaded.model, loaded.articles, loaded.terms) == (model.model, model.articles, model.terms)
    np.testing.assert_allclose(loaded.encode("车险理赔材料"), model.encode("车险理赔材料"), atol=2e-3)
    with pytest.raises(ValueError, match="inconsistent"):
        QuestionModel("m", ["a"], np.zeros((2, 4)), np.zeros(1), np.zeros((9, 4)), articles=1)


def test_a_damaged_image_is_a_clear_error() -> None:
    image = build_question_model(HashEmbedder(), PASSAGES).to_bytes()
    for damaged in (b"", b"not a model", image[: len(image) // 2], image[:-40] + bytes(40)):
        with pytest.raises(ValueError, match="unreadable question model"):
            QuestionModel.from_bytes(damaged)


def test_too_little_text_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no text"):
        build_question_model(HashEmbedder(), ["", "   "])


def test_the_engine_takes_question_vectors_from_the_model_and_falls_back_to_the_embedder() -> None:
    embedder = HashEmbedder()
    engine = SearchEngine(embedder=embedder)
    engine.add_many(Document(id=str(n), body=text) for n, text in enumerate(PASSAGES))
    model = build_question_model(embedder, engine.passages())
    assert engine.set_question_model(model)
    embedder.embedded.clear()
    np.testing.assert_allclose(engine.question_vector("退保"), model.encode("退保"))
    assert embedder.embedded == []  # no model call for a question the question model knows
    engine.question_vector("zzzz")
    assert embedder.embedded == ["zzzz"]
    for doc_id, key, text in engine.missing_vectors():
        engine.set_vector(doc_id, key, embedder.passages([text])[0])
    assert engine.search("犹豫期退保")  # the cosine re-scoring runs on the question model's vector
    # A model made with another embedding model is refused.
    stranger = HashEmbedder()
    stranger.name = "another-model"
    assert not engine.set_question_model(build_question_model(stranger, PASSAGES))
    assert engine.question_model is model


def test_a_build_stops_between_batches_when_told() -> None:
    """The app's index tells a build running in its thread to stop (at shutdown) through ``progress``."""

    class Stop(Exception):
        pass

    seen: list[int] = []

    def progress(done: int) -> None:
        seen.append(done)
        raise Stop

    embedder = HashEmbedder()
    with pytest.raises(Stop):
        build_question_model(embedder, PASSAGES * 30, progress=progress)
    assert seen == [64] and len(embedder.embedded) == 64  # one batch, then no more model calls


def test_an_unknown_question_vectors_choice_is_a_clear_error(tmp_path) -> None:  # noqa: ANN001
    from kefu.knowledge.search.evaluation import InputError, run

    with pytest.raises(InputError, match="question vectors must be static or model"):
        run(tmp_path / "kb.jsonl", tmp_path / "q.jsonl", question_vectors="fast")
