"""Flow sources: parsing and every check, each bad flow with the message and path it must give."""

from __future__ import annotations

import json

import pytest
from ivr_support import make_article, make_calendar, make_queue

from kefu.channels.ivr import flows

GOOD = """\
language: zh-CN
start: main
nodes:
  main:
    type: menu
    prompt: "您好{customer_name}，账单请按1，人工请按3。"
    options: {"1": billing, "3": bye}
    fallback: bye
  billing:
    type: play
    text: "账单每月5日生成。"
    next: main
  bye:
    type: hangup
    text: "再见。"
"""


def flow(nodes: str, start: str = "main", extra: str = "") -> str:
    indented = "\n".join("  " + line for line in nodes.strip("\n").splitlines())
    return f"start: {start}\n{extra}nodes:\n{indented}\n"


BYE = "bye: {type: hangup}"
BAD = [
    ("", "source", "the flow source is empty"),
    ("a: [1, 2\nb: 3\n", "", "not valid YAML"),
    ('{"start": "a", "nodes": {', "", "not valid JSON"),
    ("start: a\nnodes:\n  a: {type: hangup}\n  a: {type: hangup}\n", "", "duplicate key 'a'"),
    ('{"start": "a", "start": "b", "nodes": {}}', "", "duplicate key 'start'"),
    ("- just\n- a list\n", "", "a flow is a mapping"),
    (flow("main: {type: hangup}", extra="colour: blue\n"), "colour", "unknown field"),
    ("start: main\nnodes: []\n", "nodes", "must be a mapping of node id to node"),
    (flow(BYE, start="nope"), "start", 'unknown node "nope"'),
    (flow("main: {type: dance}"), "nodes.main.type", "unknown node type 'dance'"),
    (
        flow(f"main: {{type: menu, prompt: hi, options: {{1: billing}}, fallback: bye}}\n{BYE}"),
        "nodes.main.options.1",
        'unknown node "billing"',
    ),
    (
        flow(f"main: {{type: menu, prompt: hi, options: {{12: bye}}, fallback: bye}}\n{BYE}"),
        "nodes.main.options.12",
        "an option is one key",
    ),
    (flow(f"main: {{type: menu, options: {{1: bye}}, fallback: bye}}\n{BYE}"), "nodes.main.prompt", "required"),
    (
        flow(f"main: {{type: menu, promt: hi, prompt: hi, options: {{1: bye}}, fallback: bye}}\n{BYE}"),
        "nodes.main.promt",
        "unknown field for a menu node",
    ),
    (
        flow(f"main: {{type: menu, prompt: hi, options: {{1: bye}}, fallback: bye, max_retries: 99}}\n{BYE}"),
        "nodes.main.max_retries",
        "must be a whole number from 0 to 10",
    ),
    (
        flow(f"main: {{type: menu, prompt: hi, options: {{1: bye}}, fallback: bye, timeout_seconds: true}}\n{BYE}"),
        "nodes.main.timeout_seconds",
        "must be a whole number from 1 to 60",
    ),
    (
        flow(f"main: {{type: collect, prompt: hi, into: n, next: bye, fallback: bye, pattern: '[0-9'}}\n{BYE}"),
        "nodes.main.pattern",
        "not a valid regular expression",
    ),
    (
        flow(
            "main: {type: collect, prompt: hi, into: n, next: bye, fallback: bye, min_digits: 6, max_digits: 4}\n" + BYE
        ),
        "nodes.main.min_digits",
        "must not be more than max_digits",
    ),
    (
        flow(f"main: {{type: collect, prompt: hi, into: customer_name, next: bye, fallback: bye}}\n{BYE}"),
        "nodes.main.into",
        "set by the system",
    ),
    (
        flow(f"main: {{type: collect, prompt: hi, into: n, next: bye, fallback: bye, terminator: x}}\n{BYE}"),
        "nodes.main.terminator",
        'must be "#", "*" or ""',
    ),
    (
        flow(f"main: {{type: answer, article: 1, query: 账单, next: bye, not_found: bye}}\n{BYE}"),
        "nodes.main",
        "exactly one of article (an id) or query",
    ),
    (flow("main: {type: transfer, text: hi}"), "nodes.main", "exactly one of extension or number"),
    (flow("main: {type: transfer, extension: 'abc'}"), "nodes.main.extension", "must be digits"),
    (
        flow(f"main: {{type: lookup, kind: horoscope, found: bye, not_found: bye}}\n{BYE}"),
        "nodes.main.kind",
        "unknown lookup 'horoscope'",
    ),
    (
        flow("main: {type: callback, text: ok, work_order_type: party}"),
        "nodes.main.work_order_type",
        "unknown work-order type",
    ),
    (flow("main: {type: queue, queue: 'bad code!'}"), "nodes.main.queue", "must be a routing queue code"),
    (flow("main: {type: queue, queue: q1, priority: 1000}"), "nodes.main.priority", "from -100 to 100"),
    (
        flow("main: {type: hours, calendar: '', open: main, closed: main}"),
        "nodes.main.calendar",
        "calendar's name or id",
    ),
    (flow("main: {type: hangup, text: ''}"), "nodes.main.text", "must be non-empty text"),
    (flow("main: {type: hangup, text: '" + "长" * 2001 + "'}"), "nodes.main.text", "too long: 2001 characters"),
    (flow("main: {type: hangup, text: 'hi {x.__class__}'}"), "nodes.main.text", "{x.__class__} is not a variable name"),
    (flow("1abc: {type: hangup}", start="1abc"), "nodes.1abc", "a node id is a letter"),
    (flow("main: {type: hangup}", extra="language: 中文\n"), "language", "must be a language tag"),
    (flow("main: {type: hangup, language: 1}"), "nodes.main.language", "must be a language tag"),
    (flow("main: hello"), "nodes.main", "a node is a mapping with a type"),
    # No way out: a menu whose every branch comes back to itself never ends the call.
    (
        flow(f"main: {{type: menu, prompt: hi, options: {{1: main}}, fallback: main}}\n{BYE}"),
        "nodes.main",
        "no way out",
    ),
    # A loop that never asks the caller anything would play forever.
    (
        flow(
            "main: {type: menu, prompt: hi, options: {1: a}, fallback: bye}\n"
            "a: {type: play, text: one, next: b}\n"
            "b: {type: play, text: two, next: a}\n"
            f"{BYE}"
        ),
        "nodes.a",
        "loops without asking the caller for input (a -> b -> a)",
    ),
]


@pytest.mark.parametrize(("source", "path", "message"), BAD, ids=[f"{i}-{b[1] or 'root'}" for i, b in enumerate(BAD)])
def test_bad_flows_name_path_and_problem(source: str, path: str, message: str) -> None:
    checked = flows.check_source(source)
    assert not checked.ok
    assert checked.definition is None
    found = [(p.path, p.message) for p in checked.errors]
    assert any(p == path and message in m for p, m in found), found


def test_good_flow_is_normalised_with_defaults() -> None:
    checked = flows.check_source(GOOD)
    assert checked.ok, checked.errors
    menu = checked.definition["nodes"]["main"]
    assert menu["options"] == {"1": "billing", "3": "bye"}
    assert menu["max_retries"] == 2 and menu["timeout_seconds"] == 5
    assert checked.definition["start"] == "main" and checked.definition["language"] == "zh-CN"
    assert checked.warnings == []


def test_json_source_is_the_same_flow() -> None:
    import yaml

    as_json = json.dumps(yaml.safe_load(GOOD), ensure_ascii=False)
    checked = flows.check_source(as_json)
    assert checked.ok, checked.errors
    assert checked.definition == flows.check_source(GOOD).definition


def test_every_error_is_reported_at_once_with_lines() -> None:
    source = """\
start: main
nodes:
  main:
    type: menu
    prompt: hi
    options:
      "1": billing
      "2": support
    fallback: bye
    max_retries: -1
  bye:
    type: hangup
"""
    checked = flows.check_source(source)
    problems = {p.path: p for p in checked.errors}
    assert set(problems) == {"nodes.main.options.1", "nodes.main.options.2", "nodes.main.max_retries"}
    assert problems["nodes.main.options.1"].line == 7
    assert problems["nodes.main.options.2"].line == 8
    assert problems["nodes.main.max_retries"].line == 10
    assert str(problems["nodes.main.options.1"]) == 'nodes.main.options.1: unknown node "billing" (line 7)'


def test_yaml_syntax_error_names_its_line() -> None:
    checked = flows.check_source("start: main\nnodes:\n  main: {type: hangup\n  bye: x\n")
    assert checked.errors[0].line is not None and checked.errors[0].line >= 3
    assert checked.errors[0].message.startswith("not valid YAML")


def test_warnings_unreachable_nodes_and_unknown_variables() -> None:
    source = flow("main: {type: hangup, text: '{nobody} 你好'}\nlonely: {type: hangup}")
    checked = flows.check_source(source)
    assert checked.ok
    warned = {(p.path, p.message.split(" (")[0]) for p in checked.warnings}
    assert ("nodes.lonely", "not reachable from the start node") in warned
    assert any(p == "nodes.main.text" and "{nobody}" in m for p, m in warned)


def test_collected_variables_are_known_to_prompts() -> None:
    source = flow(
        "main: {type: collect, prompt: 请输入, into: order_no, next: say, fallback: bye}\n"
        "say: {type: hangup, text: '您输入的是 {order_no}'}\n"
        f"{BYE}"
    )
    checked = flows.check_source(source)
    assert checked.ok and checked.warnings == []


def test_size_limits() -> None:
    big = flow("main: {type: hangup, text: '" + "x" * 1900 + "'}") + "# " + "y" * 70_000
    assert flows.check_source(big).errors[0].message.startswith("too large")
    nodes = "\n".join(f"n{i}: {{type: hangup}}" for i in range(6))
    checked = flows.check_source(flow(nodes, start="n0"), max_nodes=5)
    assert checked.errors[0].path == "nodes" and "too many nodes: 6 (at most 5)" in checked.errors[0].message


def test_yaml_is_loaded_safely() -> None:
    checked = flows.check_source("start: !!python/object/apply:os.system ['echo owned']\nnodes: {}\n")
    assert not checked.ok and checked.errors[0].message.startswith("not valid YAML")


def test_fill_is_plain_substitution() -> None:
    values = {"customer_name": "陈先生", "n": 5}
    assert flows.fill("{customer_name}您好 {{literal}} {n}", values) == "陈先生您好 {literal} 5"
    assert flows.fill("{customer_name.__class__} {0} {missing}", values) == "{customer_name.__class__} {0} "


# --- references to other domains (database) --------------------------------------------------------
async def test_references_must_exist(app) -> None:  # noqa: ANN001
    queue = await make_queue(app)
    calendar_id, calendar_name = await make_calendar(app)
    public = await make_article(app, title="账单说明", body="账单每月生成。")
    internal = await make_article(app, title="内部流程", body="仅内部。", audience="internal")
    draft = await make_article(app, title="草稿", body="未发布。", publish=False)
    source = flow(
        f"""
main: {{type: hours, calendar: "{calendar_name}", open: a1, closed: nope_q}}
a1: {{type: answer, article: {public}, next: a2, not_found: ok_q}}
a2: {{type: answer, article: {internal}, next: a3, not_found: ok_q}}
a3: {{type: answer, article: {draft}, next: h2, not_found: ok_q}}
h2: {{type: hours, calendar: "no such calendar", open: ok_q, closed: ok_q}}
ok_q: {{type: queue, queue: {queue}}}
nope_q: {{type: queue, queue: no-such-queue}}
"""
    )
    async with app.state.session_factory() as db:
        checked = await flows.check(db, source)
    found = {p.path: p.message for p in checked.errors}
    assert found == {
        "nodes.nope_q.queue": 'unknown routing queue "no-such-queue"',
        "nodes.h2.calendar": "unknown business calendar 'no such calendar'",
        "nodes.a2.article": f"article {internal} is not a published public knowledge article",
        "nodes.a3.article": f"article {draft} is not a published public knowledge article",
    }
    assert checked.definition is None

    good = flow(
        f"""
main: {{type: hours, calendar: "{calendar_name}", open: a1, closed: by_id}}
by_id: {{type: hours, calendar: {calendar_id}, open: ok_q, closed: ok_q}}
a1: {{type: answer, article: {public}, next: ok_q, not_found: ok_q}}
ok_q: {{type: queue, queue: {queue}}}
"""
    )
    async with app.state.session_factory() as db:
        checked = await flows.check(db, good)
    assert checked.ok, checked.errors
    assert checked.definition["nodes"]["main"]["calendar_id"] == calendar_id
    assert checked.definition["nodes"]["by_id"]["calendar_id"] == calendar_id
