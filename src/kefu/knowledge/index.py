"""The search index of one app process, kept equal to the database in every process.

At start each process loads every live article into its in-memory ``SearchEngine``; afterwards it
follows the ``kb_index_changes`` feed (written in the same transaction as each publish, archive or
settings change) by id: at once when an index-change event arrives over the event bus, and every
``kb_index_poll_seconds`` regardless. So all processes converge within one poll interval at worst,
on SQLite or PostgreSQL, and a lost message can delay a change but never lose it.

With an embedding model (``KEFU_KB_EMBEDDING_MODEL``), articles also need vectors. Each process takes
those already stored in ``kb_article_vectors`` (for the same model and text) and computes the missing
ones in a background thread, storing them for the others; until an article has its vector, search ranks
it by keywords alone. A change is searchable at once either way. The same round then keeps a question
model (search/question_model.py: question vectors in a fraction of a millisecond) fitting the knowledge
base, stored in ``kb_question_models``; until there is one, questions are embedded by the model itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import unicodedata
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from sqlalchemy import case, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from kefu.core.events import EventBus
from kefu.core.policy import Principal
from kefu.db.base import dialect_insert, utcnow
from kefu.db.claims import one_process
from kefu.knowledge.content import plain_text
from kefu.knowledge.models import Article, ArticleVector, ArticleVersion, IndexChange, QuestionModelRow, SearchLog
from kefu.knowledge.search import Document, SearchEngine, SearchFilters, SearchHit, Suggestion
from kefu.knowledge.search.embedding import Embedder
from kefu.knowledge.search.question_model import QuestionModel, build_question_model
from kefu.knowledge.service import CASE_FIELDS, INDEX_EVENT, is_staff

log = logging.getLogger(__name__)

# Articles embedded per round trip to the model and the database.
EMBED_BATCH = 8
# After a failed embedding round, wait this long before the next (a broken model must not spin).
EMBED_RETRY_SECONDS = 60.0
# While another process makes the vectors and the question model (one at a time: a first start of a
# large base takes minutes of CPU), look again this often for what it has stored. A few articles
# (one batch, an edit) every process embeds at once itself: tens of milliseconds, no wait.
OTHER_BUILDER_RETRY_SECONDS = 5.0
# The question model is built again when the knowledge base grew or shrank by more than this share of
# the size it was built from: new words until then fall back on their characters, and the map stays
# valid as the vocabulary grows. (A rebuild embeds only new words; a small base rebuilds in seconds.)
QUESTION_MODEL_REBUILD_SHARE = 0.25


class _Stopped(Exception):
    """The index is stopping: a question-model build in its thread gives up."""


def _question_model_fits(model: QuestionModel | None, articles: int) -> bool:
    """There is a model, built from a base about this size (see QUESTION_MODEL_REBUILD_SHARE)."""
    return model is not None and abs(articles - model.articles) <= QUESTION_MODEL_REBUILD_SHARE * model.articles


def _batched(items: list, size: int) -> list[list]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def _vector(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f4").astype(np.float32)


@dataclass(frozen=True)
class Validity:
    effective_from: datetime | None
    expires_at: datetime | None

    def in_force(self, now: datetime) -> bool:
        return (self.effective_from is None or self.effective_from <= now) and (
            self.expires_at is None or self.expires_at > now
        )


def document_of(article: Article, version: ArticleVersion) -> Document:
    case_text = " ".join(str(version.case_fields.get(name, "")) for name in CASE_FIELDS)
    return Document(
        id=str(article.id),
        title=version.title,
        body=" ".join(filter(None, (plain_text(version.body_html), case_text))),
        similar_questions=tuple(version.similar_questions),
        category=str(article.category_id) if article.category_id else None,
        tags=tuple(version.tags),
        language=article.language,
        audience=article.audience,
        status="published",
    )


def normalize_query(query: str) -> str:
    """How the gap report groups queries: width, case and spacing do not make a new query."""
    return " ".join(unicodedata.normalize("NFKC", query).lower().split())[:500]


class KnowledgeIndex:
    def __init__(
        self,
        factory: async_sessionmaker[AsyncSession],
        *,
        poll_seconds: float = 0.5,
        bus: EventBus | None = None,
        retrain_seconds: float = 1800,
        embedder: Embedder | None = None,
        question_vectors: str = "static",
    ) -> None:
        self.factory = factory
        self.embedder = embedder
        # "static": questions get their vectors from a question model built in the background.
        self.question_vectors = question_vectors
        self._stopping = threading.Event()
        self._embedding: asyncio.Task[int] | None = None
        self._vectors_wanted = embedder is not None
        self._next_round_at = 0.0  # monotonic time: no embedding round before it (after a failure)
        self._look_again_at: float | None = None  # a round then, for what another process builds
        self.other_builder_retry_seconds = OTHER_BUILDER_RETRY_SECONDS
        self.poll_seconds = poll_seconds
        self.bus = bus
        self.retrain_seconds = retrain_seconds
        self._trained_at: float | None = None
        self._changes_since_training = 0
        self._training: asyncio.Task[bool] | None = None
        self._wake = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None
        self.engine = SearchEngine(embedder=embedder)
        self.validity: dict[str, Validity] = {}
        self.last_change_id = 0
        self._task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()

    # --- keeping up with the database -----------------------------------------------------------
    async def _live(self, db: AsyncSession, article_ids: list[int] | None) -> list[tuple[Article, ArticleVersion]]:
        stmt = (
            select(Article, ArticleVersion)
            .join(ArticleVersion, ArticleVersion.id == Article.published_version_id)
            .where(Article.archived_at.is_(None))
        )
        if article_ids is not None:
            stmt = stmt.where(Article.id.in_(article_ids))
        return [(a, v) for a, v in (await db.execute(stmt)).all()]

    async def rebuild(self) -> int:
        """Load every live article. The feed position is read first, so no change can fall between."""
        async with self.factory() as db:
            last = await db.scalar(select(func.coalesce(func.max(IndexChange.id), 0)))
            rows = await self._live(db, None)
        engine = SearchEngine(self.engine.config, embedder=self.embedder)
        engine.set_question_model(self.engine.question_model)  # still fits: it is rebuilt by size, not content
        engine.add_many(document_of(a, v) for a, v in rows)
        self.validity = {str(a.id): Validity(a.effective_from, a.expires_at) for a, _ in rows}
        self.engine, self.last_change_id = engine, int(last or 0)
        return len(rows)

    async def catch_up(self) -> int:
        """Apply the feed since the last position; returns how many articles changed."""
        async with self.factory() as db:
            changes = (
                await db.execute(
                    select(IndexChange.id, IndexChange.article_id)
                    .where(IndexChange.id > self.last_change_id)
                    .order_by(IndexChange.id)
                    .limit(5000)
                )
            ).all()
            if not changes:
                return 0
            article_ids = sorted({article_id for _, article_id in changes})
            live = {a.id: (a, v) for a, v in await self._live(db, article_ids)}
        docs = []
        for article_id in article_ids:
            if article_id in live:
                article, version = live[article_id]
                docs.append(document_of(article, version))
                self.validity[str(article_id)] = Validity(article.effective_from, article.expires_at)
            else:
                self.engine.remove(str(article_id))
                self.validity.pop(str(article_id), None)
        self.engine.add_many(docs)
        self.last_change_id = changes[-1][0]
        self._vectors_wanted = self.embedder is not None
        return len(article_ids)

    async def _follow(self) -> None:
        while True:
            try:
                if not self.ready.is_set():
                    await self.rebuild()
                    self.ready.set()
                while changed := await self.catch_up():
                    self._changes_since_training += changed
                self._maybe_retrain()
                self._maybe_embed()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - database away: keep the old index, retry
                log.warning("knowledge index could not refresh; retrying", exc_info=True)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll_seconds)

    def _maybe_retrain(self) -> None:
        """Retrain the question re-ranker in a thread: after the first load, then at most every
        ``retrain_seconds`` when articles changed. It learns from the similar questions (the resolved
        question -> article links), so new links reach the ranking without a restart."""
        if self._training is not None and not self._training.done():
            return
        now = asyncio.get_running_loop().time()
        due = self._trained_at is None or (
            self._changes_since_training and now - self._trained_at >= self.retrain_seconds
        )
        if not due:
            return
        self._trained_at, self._changes_since_training = now, 0
        self._training = asyncio.create_task(asyncio.to_thread(self.engine.train_reranker))

    def _maybe_embed(self) -> None:
        """Start a round of making the missing article vectors, unless one runs or none can be missing."""
        now = time.monotonic()
        if self._look_again_at is not None and now >= self._look_again_at:
            self._look_again_at, self._vectors_wanted = None, True
        if not self._vectors_wanted or (self._embedding is not None and not self._embedding.done()):
            return
        if now < self._next_round_at:
            return
        self._vectors_wanted = False  # changes arriving during the round set it again
        self._embedding = asyncio.create_task(self._embedding_round(), name="kefu-kb-embeddings")
        self._embedding.add_done_callback(self._embedding_done)

    def _embedding_done(self, task: asyncio.Task[int]) -> None:
        if task.cancelled():
            return
        if task.exception() is not None:
            log.warning("article vectors could not be made; retrying later", exc_info=task.exception())
            self._next_round_at, self._vectors_wanted = time.monotonic() + EMBED_RETRY_SECONDS, True
        elif task.result():
            log.info("article vectors made: %d", task.result())

    async def _embedding_round(self) -> int:
        """Take what other processes stored; compute what is still missing while this process holds the
        builder's claim (one process at a time embeds a base or builds a question model with a given
        model), or when it is no more than one batch. Otherwise look again a little later: the builder
        stores as it goes."""
        assert self.embedder is not None
        async with one_process(self.factory, f"kefu.kb.embeddings:{self.embedder.name}") as builder:
            made = await self._embed_missing(compute=builder)
            if self.question_vectors == "static":
                await self._refresh_question_model(build=builder)
        if not builder and self._still_wanted():
            # Changes arriving meanwhile start their own rounds (an edit's vector is not kept waiting).
            self._look_again_at = time.monotonic() + self.other_builder_retry_seconds
        return made

    def _still_wanted(self) -> bool:
        if self.engine.missing_vectors():
            return True
        articles = len(self.engine)
        return (
            self.question_vectors == "static"
            and articles > 0
            and not _question_model_fits(self.engine.question_model, articles)
        )

    async def _refresh_question_model(self, *, build: bool = True) -> None:
        """Give search a question model that fits the knowledge base: the one in use while the base is
        about the size it was built from, else the stored one if it fits (another process built it),
        else a new one, built in a thread (minutes for thousands of articles) and stored."""
        assert self.embedder is not None
        articles = len(self.engine)
        current = self.engine.question_model
        if not articles or _question_model_fits(current, articles):
            return
        stored_row = QuestionModelRow.model == self.embedder.name
        async with self.factory() as db:
            stored_size = await db.scalar(select(QuestionModelRow.articles).where(stored_row))
            # The payload (tens of MB for a large base) only when it is not the model in use.
            if stored_size is not None and (current is None or stored_size != current.articles):
                payload = await db.scalar(select(QuestionModelRow.payload).where(stored_row))
                try:
                    stored = await asyncio.to_thread(QuestionModel.from_bytes, payload)
                except ValueError:
                    # A damaged row must not keep every process without a question model: built anew
                    # below, and stored over it.
                    log.warning("stored question model of %s unreadable; a new one replaces it", self.embedder.name)
                else:
                    if self.engine.set_question_model(stored):
                        current = stored
        if not build or _question_model_fits(current, articles):
            return
        engine = self.engine

        def going_on(_embedded: int) -> None:
            # The build runs minutes in a thread, which task cancellation does not reach: stop() is
            # seen here, between two batches, so that a shutdown never waits for the whole build.
            if self._stopping.is_set():
                raise _Stopped

        def build() -> QuestionModel:  # in a thread: the passages of 100k articles are work too
            assert self.embedder is not None
            return build_question_model(self.embedder, engine.passages(), previous=current, progress=going_on)

        try:
            built = await asyncio.to_thread(build)
        except ValueError as error:  # too little text yet: questions use the model itself meanwhile
            log.info("no question model yet: %s", error)
            return
        except _Stopped:
            return
        self.engine.set_question_model(built)
        payload = await asyncio.to_thread(built.to_bytes)
        values = {"articles": built.articles, "payload": payload, "created_at": utcnow()}
        async with self.factory() as db, db.begin():
            await db.execute(
                dialect_insert(db)(QuestionModelRow)
                .values(model=built.model, **values)
                .on_conflict_do_update(index_elements=[QuestionModelRow.model], set_=values)
            )
        log.info("question model built: %d terms from %d articles", len(built.terms), built.articles)

    async def _embed_missing(self, *, compute: bool = True) -> int:
        """Give every article of the index without a vector one: stored ones first (any process may have
        made them), then computed in a thread, stored, and used (without ``compute``, only when no more
        than one batch is left). Returns how many were computed."""
        assert self.embedder is not None
        missing = self.engine.missing_vectors()
        if not missing:
            return 0
        model = self.embedder.name
        stored: dict[str, tuple[str, bytes]] = {}
        async with self.factory() as db:
            for chunk in _batched([int(doc_id) for doc_id, _, _ in missing], 500):
                rows = await db.execute(
                    select(ArticleVector.article_id, ArticleVector.passage_key, ArticleVector.vector).where(
                        ArticleVector.model == model, ArticleVector.article_id.in_(chunk)
                    )
                )
                stored.update({str(article_id): (key, blob) for article_id, key, blob in rows})
        todo = []
        for doc_id, key, text in missing:
            found = stored.get(doc_id)
            if found is None or found[0] != key or not self.engine.set_vector(doc_id, key, _vector(found[1])):
                todo.append((doc_id, key, text))
        if not compute and len(todo) > EMBED_BATCH:
            return 0
        for part in _batched(todo, EMBED_BATCH):
            vectors = await asyncio.to_thread(self.embedder.passages, [text for _, _, text in part])
            made = [(doc_id, key, vector) for (doc_id, key, _), vector in zip(part, vectors, strict=True)]
            for doc_id, key, vector in made:
                self.engine.set_vector(doc_id, key, vector)
            await self._store_vectors(model, made)
        return len(todo)

    async def _store_vectors(self, model: str, rows: list[tuple[str, str, np.ndarray]]) -> None:
        try:
            async with self.factory() as db, db.begin():
                for doc_id, key, vector in rows:
                    values = {"passage_key": key, "vector": vector.astype("<f4").tobytes(), "created_at": utcnow()}
                    await db.execute(
                        dialect_insert(db)(ArticleVector)
                        .values(article_id=int(doc_id), model=model, **values)
                        .on_conflict_do_update(
                            index_elements=[ArticleVector.article_id, ArticleVector.model], set_=values
                        )
                    )
        except IntegrityError:
            # An article deleted meanwhile: its vector has nowhere to go. The others are in use in this
            # process all the same and are stored by the next round that needs them.
            log.info("article vectors not stored: an article of the batch is gone")

    async def _listen(self) -> None:
        """Index-change events (from this or any process) wake the follower at once."""
        assert self.bus is not None
        subscription = self.bus.subscribe()
        try:
            while True:
                event = await subscription.get()
                if event.type == INDEX_EVENT:
                    self._wake.set()
        finally:
            subscription.close()

    async def start(self) -> None:
        if self.bus is not None:
            self._listener = asyncio.create_task(self._listen(), name="kefu-kb-index-events")
        self._task = asyncio.create_task(self._follow(), name="kefu-kb-index")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.ready.wait(), timeout=30)

    async def stop(self) -> None:
        self._stopping.set()
        for task in (self._listener, self._task, self._training, self._embedding):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    # --- asking ---------------------------------------------------------------------------------
    def _filters(
        self, principal: Principal, *, category_id: int | None, tags: tuple[str, ...], language: str | None
    ) -> SearchFilters:
        # The visibility rule of the knowledge base, applied inside the index: customers get public
        # articles only. (Drafts and archived articles are never in the index at all.)
        audience = None if is_staff(principal) else "public"
        return SearchFilters(
            category=str(category_id) if category_id else None, tags=tags, language=language, audience=audience
        )

    def search(
        self,
        principal: Principal,
        query: str,
        *,
        category_id: int | None = None,
        tags: tuple[str, ...] = (),
        language: str | None = None,
        limit: int = 10,
    ) -> list[SearchHit]:
        filters = self._filters(principal, category_id=category_id, tags=tags, language=language)
        now = utcnow()
        # Ask for a few more: articles not yet or no longer in force are dropped after ranking.
        hits = self.engine.search(query, top_k=limit + 10, filters=filters)
        valid = [h for h in hits if self.validity.get(h.id, Validity(None, None)).in_force(now)]
        return valid[:limit]

    def suggest(self, principal: Principal, prefix: str, *, limit: int = 8) -> list[Suggestion]:
        filters = self._filters(principal, category_id=None, tags=(), language=None)
        return self.engine.suggest(prefix, limit=limit, filters=filters)


async def log_search(
    db: AsyncSession, principal: Principal, query: str, hits: list[SearchHit], surface: str
) -> SearchLog:
    entry = SearchLog(
        query=query[:500],
        normalized=normalize_query(query),
        user_id=principal.user_id,
        surface=surface,
        result_count=len(hits),
        top_score=hits[0].score if hits else None,
        result_ids=[int(h.id) for h in hits[:20]],
    )
    db.add(entry)
    await db.flush()
    return entry


@dataclass(frozen=True)
class GapRow:
    query: str
    searches: int
    no_result: int
    unresolved: int  # searched, but nothing clicked or marked as solving it
    last_searched_at: datetime


async def search_gaps(db: AsyncSession, *, since: datetime, limit: int = 100, min_searches: int = 1) -> list[GapRow]:
    """Queries with no or poor results, most frequent first: what the knowledge base is missing."""
    no_result = func.sum(case((SearchLog.result_count == 0, 1), else_=0))
    unresolved = func.sum(case((SearchLog.clicked_article_id.is_(None) & SearchLog.solved.is_(False), 1), else_=0))
    stmt = (
        select(SearchLog.normalized, func.count(), no_result, unresolved, func.max(SearchLog.created_at))
        .where(SearchLog.created_at >= since)
        .group_by(SearchLog.normalized)
        .having(func.count() >= min_searches)
        # Poor: most searches of the query ended with nothing opened and nothing marked as solving it.
        .having(unresolved * 2 > func.count())
        .order_by(func.count().desc(), SearchLog.normalized)
        .limit(limit)
    )
    return [GapRow(q, int(n), int(z or 0), int(u or 0), last) for q, n, z, u, last in (await db.execute(stmt)).all()]
