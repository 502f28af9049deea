"""Erlang C and Erlang A against textbook values and against each other (no database)."""

from __future__ import annotations

import math

import pytest

from conftest import is_postgres
from kefu.routing import erlang

# Pure computation, no database: it runs once, in the SQLite run of the suite.
pytestmark = pytest.mark.skipif(is_postgres(), reason="no database involved; runs in the SQLite run")

# The classic worked example: 100 calls in 30 minutes, 180 s handle time, 20 s target (10 Erlangs).
RATE = 100 / 1800
AHT = 180.0


def test_erlang_b_table_value() -> None:
    # Erlang B tables: 5 Erlangs on 10 lines block 1.838 %.
    assert erlang.erlang_b(10, 5.0) == pytest.approx(0.018385, abs=1e-6)
    assert erlang.erlang_b(1, 1.0) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("agents", "wait", "service_level", "asa"),
    [(11, 0.6821, 0.3896, 122.8), (13, 0.2853, 0.7956, 17.1), (14, 0.1741, 0.8884, 7.8)],
)
def test_erlang_c_worked_example(agents: int, wait: float, service_level: float, asa: float) -> None:
    figures = erlang.erlang_c_figures(agents, RATE, AHT, 20)
    assert figures.offered_load == pytest.approx(10.0)
    assert figures.probability_of_wait == pytest.approx(wait, abs=5e-5)
    assert figures.service_level == pytest.approx(service_level, abs=5e-5)
    assert figures.asa_seconds == pytest.approx(asa, abs=0.05)
    assert figures.occupancy == pytest.approx(10 / agents)


def test_erlang_c_closed_forms_and_staffing() -> None:
    # One agent: M/M/1, where the probability of waiting is the load itself.
    assert erlang.erlang_c(1, 0.7) == pytest.approx(0.7)
    assert erlang.erlang_c_asa(1, 0.7 / 100, 100) == pytest.approx(0.7 * 100 / 0.3)
    assert erlang.agents_for_service_level(RATE, AHT, 20, 0.8) == 14
    assert erlang.erlang_c(10, 10.0) == 1.0  # at or over capacity everyone waits
    overloaded = erlang.erlang_c_figures(10, 12 / AHT, AHT, 20)
    assert overloaded.service_level == 0.0 and math.isinf(overloaded.asa_seconds)


def test_erlang_c_is_stable_for_thousands_of_agents() -> None:
    # Factorials overflow long before this; the Erlang B recursion does not.
    wait = erlang.erlang_c(5000, 4900.0)
    assert 0.0 < wait < 1.0
    assert erlang.erlang_c(5000, 4990.0) > wait > erlang.erlang_c(5000, 4800.0)
    figures = erlang.erlang_c_figures(5000, 4900 / AHT, AHT, 20)
    assert 0.0 < figures.service_level < 1.0 and figures.asa_seconds > 0


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="agents"):
        erlang.erlang_c(0, 1.0)
    with pytest.raises(ValueError, match="load"):
        erlang.erlang_c(3, -1.0)
    with pytest.raises(ValueError, match="patience"):
        erlang.erlang_a_figures(3, 0.01, 100, 0, 20)


def test_erlang_a_tends_to_erlang_c_without_abandonment() -> None:
    c = erlang.erlang_c_figures(14, RATE, AHT, 20)
    a = erlang.erlang_a_figures(14, RATE, AHT, 1e9, 20)
    assert a.service_level == pytest.approx(c.service_level, abs=1e-6)
    assert a.asa_seconds == pytest.approx(c.asa_seconds, rel=1e-5)
    assert a.probability_of_wait == pytest.approx(c.probability_of_wait, abs=1e-6)
    assert a.abandonment < 1e-7


@pytest.mark.parametrize("occupancy", [0.7, 0.95, 1.2])
def test_erlang_a_agrees_with_itself(occupancy: float) -> None:
    """Three routes to the same quantities: abandonment from the waiting contact's chain (1 - answered) and
    from the queue length (θ·E[Lq]/λ, i.e. mean wait over all contacts / patience); service level at a
    very long threshold equals the answered share; the average abandon time is positive and below the
    mean patience's reach."""
    agents, patience = 20, 120.0
    rate = occupancy * agents / AHT
    a = erlang.erlang_a_figures(agents, rate, AHT, patience, 20)
    assert a.abandonment == pytest.approx(a.average_wait_all_seconds / patience, rel=1e-9)
    long = erlang.erlang_a_figures(agents, rate, AHT, patience, 1e6)
    assert long.service_level == pytest.approx(1 - a.abandonment, abs=1e-9)
    assert 0 < a.service_level < long.service_level
    assert 0 < a.average_abandon_seconds < patience
    # Occupancy is the answered work per agent.
    assert a.occupancy == pytest.approx(occupancy * (1 - a.abandonment))
    # Impatience helps the ones who stay: they wait less than under Erlang C, where that is finite.
    if occupancy < 1:
        assert a.asa_seconds < erlang.erlang_c_figures(agents, rate, AHT, 20).asa_seconds
