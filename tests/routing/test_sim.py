"""The routing simulator: against queueing theory, strategies compared, the routing rules at work in
small deterministic scenarios, scenario files, the ``kefu sim`` command (no database)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from conftest import is_postgres
from kefu.cli import app
from kefu.routing import sim
from kefu.routing.policy import QueueRule

# Pure computation, no database: it runs once, in the SQLite run of the suite.
pytestmark = pytest.mark.skipif(is_postgres(), reason="no database involved; runs in the SQLite run")


def _scenario(queue: dict[str, Any], agents: list[dict[str, Any]], **extra: Any) -> sim.Scenario:
    base = {"id": 1, "handle_distribution": "fixed", "handle_seconds": 100}
    data = {"duration_seconds": 1000, "queues": [{**base, **queue}], "agents": agents, **extra}
    return sim.scenario_from_dict(data)


def _overall(scenario: sim.Scenario, strategy: str = "skills") -> dict[str, Any]:
    return sim.simulate(scenario, strategy)["overall"]


# --- against queueing theory ---------------------------------------------------------------------------
#
# Sizes: a run's mean wait near full load swings with the load it happened to draw (the queue's memory
# spans thousands of contacts), so each check runs independent replications and uses their spread as
# the standard error (SE). Service level: compared within 2 points, which is at least 3 SE wide at these
# sizes (the test asserts that too, so it cannot pass by being too noisy). ASA: a 5 % band would be only
# 1-2 SE wide at any size a unit test can afford (about 10 million contacts at occupancy 0.95 for 3 SE),
# so here ASA must agree within 4 SE; benchmarks/routing_sim.py runs the large comparison.


@pytest.mark.parametrize(
    ("occupancy", "replications", "contacts"),
    [(0.7, 6, 15_000), (0.85, 10, 20_000), (0.95, 14, 25_000)],
)
def test_service_level_and_asa_match_erlang_c(occupancy: float, replications: int, contacts: int) -> None:
    check = sim.erlang_check(
        occupancy=occupancy, agents=20, aht=180, contacts=contacts, replications=replications, seed=11
    )
    theory, adjusted, plain = check["theory"], check["adjusted"], check["simulated"]
    assert adjusted["service_level_se"] <= 0.02 / 3
    assert abs(adjusted["service_level"] - theory["service_level"]) <= 0.02
    asa_se = adjusted["asa_seconds_se"]
    assert abs(adjusted["asa_seconds"] - theory["asa_seconds"]) <= 4 * asa_se
    assert asa_se <= 0.1 * theory["asa_seconds"]
    # The plain means agree too (within 4 of their own, wider, standard errors).
    assert abs(plain["service_level"] - theory["service_level"]) <= 4 * plain["service_level_se"]
    assert abs(plain["asa_seconds"] - theory["asa_seconds"]) <= 4 * plain["asa_seconds_se"]
    assert plain["occupancy"] == pytest.approx(occupancy, abs=0.01)
    assert plain["abandonment"] == 0


def test_abandonment_matches_erlang_a() -> None:
    """Exponential patience (mean 180 s) at 95 % offered load: service level within 2 points, abandonment
    within 1 point, ASA of answered contacts within 4 SE (about 4 % here)."""
    check = sim.erlang_check(
        occupancy=0.95, agents=20, aht=180, contacts=15_000, replications=8, seed=5, patience=180.0
    )
    theory, adjusted = check["theory"], check["adjusted"]
    assert check["model"] == "erlang_a"
    assert adjusted["service_level_se"] <= 0.02 / 3
    assert abs(adjusted["service_level"] - theory["service_level"]) <= 0.02
    assert abs(adjusted["abandonment"] - theory["abandonment"]) <= 0.01
    assert abs(adjusted["asa_seconds"] - theory["asa_seconds"]) <= 4 * adjusted["asa_seconds_se"]
    assert abs(adjusted["average_abandon_seconds"] - theory["average_abandon_seconds"]) <= max(
        4 * adjusted["average_abandon_seconds_se"], 0.05 * theory["average_abandon_seconds"]
    )


# --- strategies ----------------------------------------------------------------------------------------


def test_skills_routing_beats_random_and_longest_idle_on_service_level() -> None:
    """The multi-skill preset (12 queues, proficiency-dependent handle times), three staffs (seeds):
    on the same contacts, skills-based routing serves more within 20 s than both blind strategies."""
    totals = {s: [0, 0] for s in sim.STRATEGIES}
    for seed in (1, 2, 3):
        table = sim.compare_strategies(sim.multiskill_scenario(seed=seed, hours=4))["table"]
        offered = {row["offered"] for row in table.values()}
        assert len(offered) == 1  # the very same contacts for every strategy
        for strategy, row in table.items():
            totals[strategy][0] += round(row["service_level"] * row["offered"])
            totals[strategy][1] += row["offered"]
    level = {s: within / offered for s, (within, offered) in totals.items()}
    assert level["skills"] > level["random"] + 0.01
    assert level["skills"] > level["longest_idle"] + 0.01


def test_pruned_candidates_decide_exactly_as_the_full_lists() -> None:
    """The simulator hands the decision functions a pruned candidate list (alike agents, FIFO queues);
    with sticky customers and bullseye, every decision matches the unpruned run."""
    base = sim.multiskill_scenario(seed=4, hours=1, agents=40)
    queues = tuple(
        dataclasses.replace(q, rule=dataclasses.replace(q.rule, sticky_seconds=40), customers=30) for q in base.queues
    )
    scenario = dataclasses.replace(base, queues=queues)
    for strategy in ("skills", "longest_idle"):
        pruned = sim.simulate(scenario, strategy)
        full = sim.simulate(scenario, strategy, prune=False)
        assert pruned["overall"] == full["overall"]
        assert pruned["queues"] == full["queues"]


# --- the rules at work, deterministically --------------------------------------------------------------

SKILLED = {"skills": [{"skill": 1, "min_proficiency": 3}]}


def test_bullseye_widening_lets_a_less_proficient_agent_take_the_contact() -> None:
    junior = [{"id": 1, "skills": {"1": 2}, "queues": [1]}]
    waits = _scenario({**SKILLED, "arrivals_at": [0], "bullseye": [{"after_seconds": 30}]}, junior)
    assert _overall(waits)["asa_seconds"] == 30
    never = _scenario({**SKILLED, "arrivals_at": [0]}, junior, max_drain_seconds=0)
    assert _overall(never)["answered"] == 0 and _overall(never)["unresolved"] == 1
    # The last ring: any member, even one without the skill.
    outsider = [{"id": 1, "skills": {}, "queues": [1]}]
    steps = [{"after_seconds": 10}, {"after_seconds": 45, "any_member": True}]
    anyone = _scenario({**SKILLED, "arrivals_at": [0], "bullseye": steps}, outsider)
    assert _overall(anyone)["asa_seconds"] == 45


def test_the_most_proficient_free_agent_is_chosen_and_works_faster() -> None:
    agents = [{"id": 1, "skills": {"1": 3}, "queues": [1]}, {"id": 2, "skills": {"1": 5}, "queues": [1]}]
    queue = {**SKILLED, "arrivals_at": [0], "proficiency_factors": {"3": 1.0, "5": 0.5}}
    scenario = _scenario(queue, agents)
    assert _overall(scenario, "skills")["handled_seconds"] == 50  # the proficiency-5 agent, twice as fast
    assert _overall(scenario, "longest_idle")["handled_seconds"] == 100  # the tie goes to agent 1


@pytest.mark.parametrize(("sticky_seconds", "second_wait"), [(0, 0), (30, 30), (60, 50)])
def test_sticky_reservation_waits_for_the_customers_last_agent(sticky_seconds: int, second_wait: int) -> None:
    """Customer 7 calls at 0 (agent 1 takes it, busy until 100) and again at 50. Without stickiness agent
    2 answers at once; with 30 s the reservation ends at 80 and agent 2 takes it then; with 60 s it
    lasts past 100, when agent 1 frees up and takes their customer back."""
    agents = [{"id": 1, "queues": [1]}, {"id": 2, "queues": [1]}]
    queue = {"arrivals_at": [{"at": 0, "customer": 7}, {"at": 50, "customer": 7}], "sticky_seconds": sticky_seconds}
    overall = _overall(_scenario(queue, agents))
    assert overall["answered"] == 2
    assert overall["asa_seconds"] == pytest.approx(second_wait / 2)


def test_a_shift_end_lets_the_agent_finish_then_log_off() -> None:
    agents = [{"id": 1, "queues": [1], "shifts": [[0, 50]]}]
    scenario = _scenario({"arrivals_at": [0, 60]}, agents, max_drain_seconds=0)
    overall = _overall(scenario)
    assert overall["answered"] == 1 and overall["unresolved"] == 1
    assert overall["occupancy"] == 1.0  # staffed only while finishing the call, 0-100


def test_the_rest_rule_sends_the_agent_on_a_break_between_contacts() -> None:
    agents = [{"id": 1, "queues": [1]}]
    rest = {"after_seconds": 90, "break_seconds": 50}
    # The call at 0 ends at 100, past the 90 s on line: a break until 150 before the call from 110.
    overall = _overall(_scenario({"arrivals_at": [0, 110]}, agents, rest=rest))
    assert overall["asa_seconds"] == pytest.approx(40 / 2)


def test_patience_and_after_contact_work() -> None:
    agents = [{"id": 1, "queues": [1]}]
    queue = {"arrivals_at": [0, 10], "acw_seconds": 30, "patience_seconds": 1e-6}
    overall = _overall(_scenario(queue, agents))
    assert overall["answered"] == 1 and overall["abandoned"] == 1  # the second gives up at once
    assert overall["handled_seconds"] == 130  # talk plus wrap-up


# --- scenario files ------------------------------------------------------------------------------------

GOOD = {
    "duration_seconds": 3600,
    "warmup_seconds": 600,
    "queues": [{"id": 1, "name": "zh-billing", "arrival_rate_per_hour": 60, "handle_seconds": 180}],
    "agents": [{"id": 1, "count": 5, "queues": [1], "skills": {"1": 3}, "shifts": [[0, 1800], [2400, 3600]]}],
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("duration_seconds"), "duration_seconds: is required"),
        (lambda d: d.update(duration_seconds="long"), "duration_seconds: must be a number"),
        (lambda d: d.update(warmup_seconds=4000), "warmup_seconds: must be shorter"),
        (lambda d: d.update(colour="red"), "colour: unknown field"),
        (lambda d: d.update(strategy="fastest"), "strategy: must be one of skills, random, longest_idle"),
        (lambda d: d["queues"][0].pop("handle_seconds"), "queues[0].handle_seconds: is required"),
        (lambda d: d["queues"][0].update(handle_seconds=-1), "queues[0].handle_seconds: must be positive"),
        (lambda d: d["queues"][0].update(channel="fax"), "queues[0].channel: must be one of"),
        (lambda d: d["queues"][0].update(rates_per_hour=[1]), "queues[0]: give exactly one of"),
        (lambda d: d["queues"][0].update(skills=[{"skill": "x"}]), "queues[0].skills[0].skill: must be an integer"),
        (
            lambda d: d["queues"][0].update(bullseye=[{"after_seconds": 20}, {"after_seconds": 10}]),
            "queues[0].bullseye[1].after_seconds: must be later",
        ),
        (lambda d: d["agents"][0].update(queues=[2]), "agents[0].queues[0]: no queue with id 2"),
        (lambda d: d["agents"][0].update(shifts=[[100, 50]]), "agents[0].shifts[0]: the logoff must come after"),
        (lambda d: d["agents"][0].update(capacity={"voice": "one"}), "agents[0].capacity.voice: must be an integer"),
        (lambda d: d["agents"].append({"id": 3, "queues": [1]}), "agent id 3 is used twice"),
    ],
)
def test_scenario_validation_names_the_field(change: Any, message: str) -> None:
    data = json.loads(json.dumps(GOOD))
    change(data)
    with pytest.raises(sim.ScenarioError) as caught:
        sim.scenario_from_dict(data)
    assert message in str(caught.value)


def test_scenario_file_runs_with_shifts_and_interval_rates(tmp_path: Path) -> None:
    data = json.loads(json.dumps(GOOD))
    data["queues"][0].pop("arrival_rate_per_hour")
    data["queues"][0].update(interval_seconds=1800, rates_per_hour=[30, 90])
    path = tmp_path / "scenario.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    scenario = sim.load_scenario(path)
    assert len(scenario.agents) == 5 and scenario.agents[-1].id == 5
    report = sim.simulate(scenario)
    json.dumps(report)  # JSON-ready
    assert report["overall"]["offered"] > 0
    assert report["overall"]["offered"] == report["queues"]["zh-billing"]["offered"]
    (tmp_path / "bad.json").write_text("{nope", encoding="utf-8")
    with pytest.raises(sim.ScenarioError, match="not valid JSON"):
        sim.load_scenario(tmp_path / "bad.json")


# --- the command ---------------------------------------------------------------------------------------

runner = CliRunner()


def test_cli_erlang_preset_prints_simulation_and_theory() -> None:
    result = runner.invoke(app, ["sim", "--preset", "erlang", "--occupancy", "0.8", "--contacts", "3000"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["theory"]["model"] == "erlang_c"
    assert report["overall"]["offered"] > 2500
    assert 0 < report["overall"]["service_level"] <= 1
    with_patience = runner.invoke(
        app, ["sim", "--preset", "erlang", "--occupancy", "1.1", "--patience", "120", "--contacts", "2000"]
    )
    assert with_patience.exit_code == 0, with_patience.output
    assert json.loads(with_patience.stdout)["theory"]["model"] == "erlang_a"


def test_cli_multiskill_compares_all_strategies() -> None:
    result = runner.invoke(app, ["sim", "--preset", "multiskill", "--strategy", "all", "--hours", "0.5"])
    assert result.exit_code == 0, result.output
    table = json.loads(result.stdout)["table"]
    assert set(table) == {"skills", "random", "longest_idle"}


def test_cli_scenario_file_and_bad_input(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text(json.dumps(GOOD), encoding="utf-8")
    result = runner.invoke(app, ["sim", "--scenario", str(path), "--strategy", "random", "--seed", "3"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["strategy"] == "random" and report["seed"] == 3
    bad = dict(GOOD, queues=[{"id": 1, "handle_seconds": 180}])
    path.write_text(json.dumps(bad), encoding="utf-8")
    for args, message in [
        (["sim", "--scenario", str(path)], "queues[0]: give exactly one of"),
        (["sim", "--scenario", str(tmp_path / "missing.json")], "missing.json"),
        (["sim"], "give either --preset or --scenario"),
        (["sim", "--preset", "erlang", "--occupancy", "1.0"], "occupancy: must be below 1"),
        (["sim", "--preset", "erlang", "--agents", "0"], "agents: must be at least 1"),
    ]:
        failed = runner.invoke(app, args)
        assert failed.exit_code == 2, (args, failed.output)
        assert message in failed.stderr


def test_queue_rule_is_the_policy_one() -> None:
    # The scenario keeps policy's own QueueRule: what is simulated is what the router runs.
    scenario = sim.erlang_scenario(contacts=10)
    assert isinstance(scenario.queues[0].rule, QueueRule)
