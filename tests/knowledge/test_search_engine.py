"""Knowledge-base search: analyzer, engine and the evaluation command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kefu.knowledge.search.analyzer import Analyzer, highlight, normalize, stem
from kefu.knowledge.search.engine import Document, SearchConfig, SearchEngine, SearchFilters
from kefu.knowledge.search.evaluation import InputError, evaluate, load_kb_jsonl, main

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data"

NAUGHTY = [
    "",
    " ",
    "\t\n\u3000",
    "\u200b\u200d\ufeff",
    "<script>alert(1)</script>",
    "'; DROP TABLE articles; --",
    "Ω≈ç√∫˜µ≤≥÷",
    "👩‍👩‍👧‍👦🇨🇳",
    "\x00\x01\x7f",
    "ｌｏｎｇ" * 2000,
    "ﷺ",
    "١٢٣",
    "Ｉｔ’ｓ",
]


@pytest.fixture(scope="module")
def analyzer() -> Analyzer:
    return Analyzer()


# ---------------------------------------------------------------- analyzer


def test_normalize_folds_full_width_and_case() -> None:
    assert normalize("ＡＢＣ１２３，Ｈｅｌｌｏ") == "abc123,hello"
    assert normalize("\u3000") == " "


def test_stem_joins_inflections_only() -> None:
    assert stem("cards") == stem("card")
    assert stem("charged") == stem("charge") == stem("charging") == stem("charges")
    assert stem("transferred") == stem("transfer")
    assert stem("countries") == "country"
    assert stem("business") == "business"
    assert stem("was") == "was"


def test_chinese_gets_words_and_bigrams(analyzer: Analyzer) -> None:
    result = analyzer.analyze("退保需要什么材料？")
    assert result.words == ["退保", "需要", "什么", "材料"]
    assert result.grams == ["退保", "保需", "需要", "要什", "什么", "么材", "材料"]


def test_chinese_particles_are_dropped_from_words(analyzer: Analyzer) -> None:
    result = analyzer.analyze("我的保单呢")
    assert "的" not in result.words and "呢" not in result.words and "保单" in result.words


def test_english_tokens_are_stemmed_and_stop_words_dropped(analyzer: Analyzer) -> None:
    result = analyzer.analyze("Why was my card NOT working in the ATMs?")
    assert result.words == ["why", "card", "not", "work", "atm"]
    assert result.grams == result.words


def test_mixed_and_full_width_text(analyzer: Analyzer) -> None:
    result = analyzer.analyze("ＶＩＰ会员iPhone12碎屏险")
    assert "vip" in result.words and "iphone12" in result.words
    assert "碎屏" in result.grams and "vip" in result.grams
    assert analyzer.analyze("It’s") == analyzer.analyze("it's")


def test_single_cjk_character_is_its_own_gram(analyzer: Analyzer) -> None:
    assert analyzer.analyze("车").grams == ["车"]


@pytest.mark.parametrize("text", NAUGHTY)
def test_naughty_strings_do_not_crash(analyzer: Analyzer, text: str) -> None:
    result = analyzer.analyze(text)
    assert all(t.strip() for t in result.words + result.grams)
    analyzer.features(text)
    assert "<script>" not in highlight(text, text)


def test_empty_and_whitespace_give_no_terms(analyzer: Analyzer) -> None:
    for text in ("", "   ", "\u3000\n", "，。！？"):
        result = analyzer.analyze(text)
        assert result.words == [] and result.grams == []


def test_highlight_marks_terms_and_escapes_html() -> None:
    out = highlight("<b>Card</b> payments & cards declined", "declined card", max_chars=None)
    assert out == "&lt;b&gt;<mark>Card</mark>&lt;/b&gt; payments &amp; <mark>cards</mark> <mark>declined</mark>"


def test_highlight_chinese_merges_adjacent_bigrams_and_keeps_original_width() -> None:
    out = highlight("犹豫期内退保，全额退还ＡＢＣ保费", "退保犹豫期 abc", max_chars=None)
    assert "<mark>犹豫期</mark>" in out and "<mark>退保</mark>" in out and "<mark>ＡＢＣ</mark>" in out


def test_highlight_window_centres_on_matches() -> None:
    text = "无关内容。" * 100 + "重大疾病保险的等待期一般是90天。" + "其他内容。" * 100
    out = highlight(text, "重疾险等待期", max_chars=60)
    assert out.startswith("…") and out.endswith("…") and "<mark>等待期</mark>" in out
    assert len(out.replace("<mark>", "").replace("</mark>", "")) <= 62


# ---------------------------------------------------------------- engine


def _engine(config: SearchConfig | None = None) -> SearchEngine:
    engine = SearchEngine(config)
    engine.add_many(
        [
            Document(
                "refund",
                title="How to get a refund",
                body="Refunds reach your card within 5 days.",
                category="billing",
                tags=("money", "card"),
                language="en",
                audience="public",
                status="published",
            ),
            Document(
                "pin",
                title="Reset your PIN",
                body="You can reset the PIN of your card in the app.",
                similar_questions=("I forgot my PIN", "PIN blocked"),
                category="cards",
                tags=("card",),
                language="en",
                audience="public",
                status="published",
            ),
            Document(
                "internal",
                title="Refund fraud checks",
                body="Agents: check refund requests for fraud.",
                category="billing",
                tags=("money",),
                language="en",
                audience="agents",
                status="published",
            ),
            Document(
                "draft",
                title="Refund policy 2027",
                body="Draft refund policy.",
                category="billing",
                language="en",
                audience="public",
                status="draft",
            ),
            Document(
                "tuibao",
                title="犹豫期退保",
                body="犹豫期内退保可全额退还保费，超过犹豫期退保只退现金价值。",
                similar_questions=("保险怎么退", "退保能退多少钱"),
                category="insurance",
                language="zh",
                audience="public",
                status="published",
            ),
        ]
    )
    return engine


def test_search_finds_english_and_chinese() -> None:
    engine = _engine()
    assert engine.search("how do I get my money refunded")[0].id in {"refund", "internal", "draft"}
    assert engine.search("forgot PIN")[0].id == "pin"
    assert engine.search("退保退多少钱")[0].id == "tuibao"


def test_search_hits_are_highlighted_and_escaped() -> None:
    engine = SearchEngine()
    engine.add(Document("x", title="<img src=x onerror=alert(1)> PIN reset", body="Reset the <b>PIN</b> here."))
    hit = engine.search("pin")[0]
    assert hit.title == "&lt;img src=x onerror=alert(1)&gt; <mark>PIN</mark> reset"
    assert hit.snippet == "Reset the &lt;b&gt;<mark>PIN</mark>&lt;/b&gt; here."
    assert engine.search("pin", highlights=False)[0].snippet == ""


def test_add_update_remove_are_visible_immediately() -> None:
    engine = _engine()
    assert not engine.search("wombat")
    engine.add(Document("zoo", title="Wombat insurance", body="Covers wombats."))
    assert engine.search("wombat")[0].id == "zoo"
    engine.add(Document("zoo", title="Koala insurance", body="Covers koalas."))
    assert not engine.search("wombat")
    assert engine.search("koala")[0].id == "zoo"
    assert engine.get("zoo").title == "Koala insurance"
    assert engine.remove("zoo") and not engine.remove("zoo")
    assert not engine.search("koala") and "zoo" not in engine


def test_updates_survive_segment_freezes_merges_and_compaction() -> None:
    engine = SearchEngine(SearchConfig(delta_max_docs=4))
    for round_ in range(5):
        engine.add_many(Document(f"d{i}", body=f"topic{i} version{round_}") for i in range(10))
        for i in range(3):
            engine.add(Document(f"d{i}", body=f"topic{i} version{round_} patched"))
    engine.remove("d9")
    for state in ("segmented", "compacted"):
        assert len(engine) == 9, state
        assert engine.search("topic1")[0].id == "d1"
        assert not engine.search("version3")
        assert {h.id for h in engine.search("version4", top_k=20)} == {f"d{i}" for i in range(9)}
        assert not engine.search("topic9")
        engine.compact()


def test_idf_follows_removals() -> None:
    engine = SearchEngine()
    engine.add_many([Document(f"c{i}", body="common") for i in range(5)] + [Document("r", body="rare common")])
    before = engine.search("rare common")[0].score
    for i in range(5):
        engine.remove(f"c{i}")
    assert engine.search("rare common")[0].score < before  # "common" is no longer common


def test_filters() -> None:
    engine = _engine()
    billing = SearchFilters(category="billing", status="published", audience="public")
    assert [h.id for h in engine.search("refund", filters=billing)] == ["refund"]
    assert {h.id for h in engine.search("refund", filters=SearchFilters(audience=["public", "agents"]))} == {
        "refund",
        "internal",
        "draft",
    }
    assert {h.id for h in engine.search("refund card", filters=SearchFilters(tags=["money", "card"]))} == {"refund"}
    assert not engine.search("refund", filters=SearchFilters(tags=["nonexistent"]))
    assert not engine.search("refund", filters=SearchFilters(language="zh"))
    assert not engine.search("refund", filters=SearchFilters(category="no-such-category"))
    engine.add(Document("refund", title="How to get a refund", body="Refunds.", category="billing", tags=()))
    assert not engine.search("refund", filters=SearchFilters(tags=["money"], category="billing", audience="public"))


def test_field_weights_change_ranking() -> None:
    docs = [
        Document("in-title", title="Lost card", body="Call us and we will help you."),
        Document(
            "in-body",
            title="Help",
            body="We open at nine. Call us any time. We help with many things. If a card is lost, call us.",
        ),
    ]
    title_heavy = SearchEngine(SearchConfig())
    title_heavy.add_many(docs)
    assert title_heavy.search("lost card")[0].id == "in-title"
    from kefu.knowledge.search.engine import FieldParams

    body_heavy = SearchEngine(SearchConfig(title=FieldParams(0.01, 0.5)))
    body_heavy.add_many(docs)
    assert body_heavy.search("lost card")[0].id == "in-body"


def test_a_match_in_the_opening_counts_more_than_deep_in_the_body() -> None:
    engine = SearchEngine()
    filler = "，".join(["其他说明"] * 8)
    engine.add_many(
        [
            Document("deep", body=f"{filler}。犹豫期内可以退保。"),
            Document("lead", body=f"犹豫期内可以退保。{filler}。"),
        ]
    )
    assert [h.id for h in engine.search("犹豫期退保")] == ["lead", "deep"]


def test_similar_questions_are_searched() -> None:
    engine = _engine()
    assert engine.search("保险怎么退")[0].id == "tuibao"
    assert engine.search("PIN blocked")[0].id == "pin"


def test_suggestions_complete_titles_and_similar_questions() -> None:
    engine = _engine()
    assert [s.text for s in engine.suggest("Reset")] == ["Reset your PIN"]
    assert [s.text for s in engine.suggest("i forg")] == ["I forgot my PIN"]
    assert {s.text for s in engine.suggest("refu", filters=SearchFilters(status="published", audience="public"))} == {
        "How to get a refund"
    }
    assert engine.suggest("退保")[0].id == "tuibao"
    assert engine.suggest("保险怎")[0].text == "保险怎么退"
    engine.remove("pin")
    assert not engine.suggest("reset")
    engine.add(Document("pin", title="Change your PIN"))
    assert [s.text for s in engine.suggest("chan")] == ["Change your PIN"]
    assert engine.suggest("   ") == [] and engine.suggest("x", limit=0) == []


@pytest.mark.parametrize("text", NAUGHTY)
def test_engine_accepts_naughty_queries_and_documents(text: str) -> None:
    engine = _engine()
    engine.add(Document("naughty", title=text, body=text, similar_questions=(text,)))
    engine.search(text)
    engine.suggest(text)
    assert engine.remove("naughty")


def test_question_classifier_reranks_by_similar_questions() -> None:
    engine = SearchEngine(SearchConfig(classifier_max_iter=50))
    engine.add_many(
        [
            Document(
                "declined",
                title="card payment declined",
                similar_questions=(
                    "why was my card payment declined",
                    "card got declined at the shop",
                    "payment refused by card terminal",
                ),
            ),
            Document(
                "pending",
                title="card payment pending",
                similar_questions=(
                    "card payment still pending",
                    "why is my payment not through yet",
                    "transaction waiting to be completed",
                ),
            ),
        ]
    )
    assert engine.train_reranker()
    assert engine.search("shop refused my payment")[0].id == "declined"
    assert engine.search("my transaction is waiting")[0].id == "pending"
    assert not engine.search("zzzz qqqq")  # no learned feature: no guess from the class prior
    engine.remove("pending")
    assert [h.id for h in engine.search("my transaction is waiting card payment")] == ["declined"]


def test_reranker_needs_two_articles_with_questions() -> None:
    engine = _engine()
    engine.remove("pin")
    assert not engine.train_reranker()


# ---------------------------------------------------------------- evaluation


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_evaluate_small_kb(tmp_path: Path) -> None:
    kb = _write(
        tmp_path / "kb.jsonl",
        [
            json.dumps({"article_id": "a1", "title": "退保", "text": "犹豫期内退保全额退款"}, ensure_ascii=False),
            json.dumps(
                {"article_id": "a2", "text": "车险理赔需要驾驶证和行驶证", "similar_questions": ["车险怎么理赔"]},
                ensure_ascii=False,
            ),
            "",
        ],
    )
    queries = _write(
        tmp_path / "q.jsonl",
        [
            json.dumps({"qid": "q1", "question": "怎么退保", "gold": ["a1"]}, ensure_ascii=False),
            json.dumps(
                {"qid": "q2", "question": "车险理赔要什么", "detail": "", "gold": ["a2", "a1"]}, ensure_ascii=False
            ),
        ],
    )
    result = evaluate(kb, queries)
    assert result["recall_at_1"] == result["recall_at_5"] == result["mrr_at_10"] == 1.0
    assert result["articles"] == 2 and result["queries"] == 2
    assert set(result) == {
        "recall_at_1",
        "recall_at_5",
        "mrr_at_10",
        "queries_per_second",
        "index_build_seconds",
        "articles",
        "queries",
    }


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"article_id": "a2", "text": "x"', "invalid JSON"),
        ('["a2", "x"]', "expected a JSON object"),
        ('{"article_id": "a2"}', '"text" must be a string'),
        ('{"article_id": "", "text": "x"}', '"article_id" must be a non-empty string'),
        ('{"article_id": "a2", "text": "x", "similar_questions": "q"}', '"similar_questions" must be a list'),
    ],
)
def test_bad_kb_line_is_reported_with_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    kb = _write(tmp_path / "kb.jsonl", ['{"article_id": "a1", "text": "x"}', "", line])
    with pytest.raises(InputError, match=rf"kb\.jsonl:3: .*{message}"):
        load_kb_jsonl(kb)


def test_bad_query_line_fails_the_command_with_line_number(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kb = _write(tmp_path / "kb.jsonl", ['{"article_id": "a1", "text": "x"}'])
    queries = _write(
        tmp_path / "q.jsonl",
        ['{"qid": "q1", "question": "x", "gold": ["a1"]}', '{"qid": "q2", "question": "x", "gold": []}'],
    )
    assert main(["--kb", str(kb), "--queries", str(queries)]) == 2
    assert "q.jsonl:2:" in capsys.readouterr().err
    missing = _write(tmp_path / "q2.jsonl", ['{"qid": "q1", "question": "x", "gold": ["nope"]}'])
    with pytest.raises(InputError, match=r"q2\.jsonl:1: no gold article"):
        evaluate(kb, missing)
    with pytest.raises(InputError, match="cannot open"):
        evaluate(tmp_path / "absent.jsonl", queries)
    (tmp_path / "bin.jsonl").write_bytes(b'{"article_id": "a1", "text": "\xff"}\n')
    with pytest.raises(InputError, match="not UTF-8"):
        load_kb_jsonl(tmp_path / "bin.jsonl")
    with pytest.raises(InputError, match="duplicate article_id"):
        load_kb_jsonl(_write(tmp_path / "dup.jsonl", ['{"article_id": "a1", "text": "x"}'] * 2))


@pytest.mark.skipif(not (DATA / "baoxianzhidao_faq" / "kb.jsonl").is_file(), reason="shared data not present")
def test_real_kb_loads_and_a_known_question_is_found() -> None:
    articles = load_kb_jsonl(DATA / "baoxianzhidao_faq" / "kb.jsonl")
    engine = SearchEngine()
    engine.add_many(Document(a["article_id"], body=a["text"]) for a in articles[:300])
    # The data set has near-duplicate replies; pick an article whose opening is its own.
    target = next(a for a in articles[:300] if sum(a["text"][:40] in b["text"] for b in articles[:300]) == 1)
    hits = engine.search(target["text"][:40])
    assert hits and hits[0].id == target["article_id"]


@pytest.mark.parametrize("script", ["scripts/eval_splits.py", "benchmarks/kb_search_latency.py"])
def test_data_scripts_skip_cleanly_without_data(script: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / script), "--data", str(tmp_path / "absent")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "skipping" in done.stderr
