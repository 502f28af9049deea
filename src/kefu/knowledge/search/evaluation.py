"""Offline accuracy evaluation of knowledge-base search (``kefu kb eval``).

KB file: JSONL of ``{"article_id", "title"?, "text", "similar_questions"?: [...]}``.
Queries file: JSONL of ``{"qid", "question", "detail"?, "gold": [article_id, ...]}``.
Prints Recall@1, Recall@5, MRR@10, queries per second and index build time as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kefu.knowledge.search.engine import Document, SearchEngine

__all__ = ["InputError", "evaluate", "load_kb_jsonl", "load_queries_jsonl", "main"]


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


def build_engine(articles: list[dict[str, Any]]) -> SearchEngine:
    """Index the articles and train the question re-ranker from their similar questions, if any."""
    engine = SearchEngine()
    engine.add_many(article_to_document(a) for a in articles)
    engine.compact()
    engine.train_reranker()
    return engine


def evaluate(kb_path: Path, queries_path: Path, *, top_k: int = 10) -> dict[str, float | int]:
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
    engine = build_engine(articles)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Evaluate knowledge-base search accuracy and speed.")
    parser.add_argument("--kb", type=Path, required=True, help="JSONL of articles")
    parser.add_argument("--queries", type=Path, required=True, help="JSONL of queries with gold article ids")
    parser.add_argument("--top-k", type=int, default=10, help="results retrieved per query (default 10)")
    args = parser.parse_args(argv)
    try:
        result = evaluate(args.kb, args.queries, top_k=args.top_k)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
