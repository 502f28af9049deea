"""Queueing theory for one queue: Erlang C (M/M/N) and Erlang A (M/M/N+M), the yardsticks for the simulator.

Notation: ``arrival_rate`` λ (contacts per second), ``handle_seconds`` the mean handle time 1/μ,
``agents`` N, ``patience_seconds`` the mean patience 1/θ (exponential; Erlang A only), ``threshold``
T the service-level threshold in seconds. The offered load is A = λ / μ Erlangs; occupancy A / N.

Definitions (the simulator in ``routing.sim`` reports the very same ones):
- **service level** = contacts answered within T ÷ contacts offered. Every contact offered counts in the
  denominator, also one that abandons (even within T): abandoning is a failure to serve. Under Erlang C
  nobody abandons, so this is also the share of answered contacts answered within T.
- **ASA** (average speed of answer) = mean wait of the answered contacts (those answered at once
  count with 0).
- **abandonment** = abandoned ÷ offered; **average abandon time** = mean wait of the abandoned.
- **probability of wait** = share of contacts that find every agent busy on arrival.

Erlang C is computed through the Erlang B recursion, which stays within [0, 1] at every step and so is
stable for thousands of agents, where factorials and powers overflow. Erlang A is computed exactly
from the birth-death chain of the number of contacts in the system (in logarithms, truncated once the
remaining probability is below 1e-18 of the largest), and the waits from the chain a waiting contact
goes through: with i contacts ahead of it, it moves up at rate Nμ + iθ and abandons at rate θ.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.sparse import coo_matrix, csr_matrix
from scipy.sparse.linalg import expm_multiply

# Below this share of the largest state probability, the Erlang A chain is cut off.
_TRUNCATION_LOG = math.log(1e-18)


def _check(agents: int, load: float) -> None:
    if agents < 1 or int(agents) != agents:
        raise ValueError(f"agents must be a positive integer, not {agents!r}")
    if not load > 0 or not math.isfinite(load):
        raise ValueError(f"offered load must be a positive number, not {load!r}")


def erlang_b(agents: int, load: float) -> float:
    """Blocking probability of M/M/N/N with ``load`` Erlangs: B(0) = 1, B(n) = A·B(n-1) / (n + A·B(n-1))."""
    _check(agents, load)
    blocking = 1.0
    for n in range(1, int(agents) + 1):
        blocking = load * blocking / (n + load * blocking)
    return blocking


def erlang_c(agents: int, load: float) -> float:
    """Probability that a contact waits (Erlang C) with ``agents`` agents and ``load`` Erlangs offered;
    1.0 when the load is at or above the number of agents (the queue grows without bound)."""
    _check(agents, load)
    if load >= agents:
        return 1.0
    blocking = erlang_b(agents, load)
    return agents * blocking / (agents - load * (1.0 - blocking))


@dataclass(frozen=True, slots=True)
class QueueFigures:
    """What theory says about one queue; the keys match the simulator's report."""

    agents: int
    offered_load: float
    occupancy: float
    threshold_seconds: float
    probability_of_wait: float
    service_level: float
    asa_seconds: float
    abandonment: float = 0.0
    average_abandon_seconds: float = 0.0
    average_wait_all_seconds: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def erlang_c_figures(agents: int, arrival_rate: float, handle_seconds: float, threshold_seconds: float) -> QueueFigures:
    """Erlang C: probability of wait C, service level 1 - C·exp(-(N-A)·T/AHT), ASA C·AHT/(N-A)."""
    if not handle_seconds > 0:
        raise ValueError(f"handle time must be positive, not {handle_seconds!r}")
    if threshold_seconds < 0:
        raise ValueError(f"threshold must not be negative, not {threshold_seconds!r}")
    load = arrival_rate * handle_seconds
    wait = erlang_c(agents, load)
    if load >= agents:
        return QueueFigures(agents, load, 1.0, threshold_seconds, 1.0, 0.0, math.inf, 0.0, 0.0, math.inf)
    spare = agents - load
    service_level = 1.0 - wait * math.exp(-spare * threshold_seconds / handle_seconds)
    asa = wait * handle_seconds / spare
    return QueueFigures(agents, load, load / agents, threshold_seconds, wait, service_level, asa, 0.0, 0.0, asa)


def erlang_c_service_level(agents: int, arrival_rate: float, handle_seconds: float, threshold_seconds: float) -> float:
    return erlang_c_figures(agents, arrival_rate, handle_seconds, threshold_seconds).service_level


def erlang_c_asa(agents: int, arrival_rate: float, handle_seconds: float) -> float:
    return erlang_c_figures(agents, arrival_rate, handle_seconds, 0.0).asa_seconds


def _erlang_a_states(agents: int, arrival_rate: float, service_rate: float, abandon_rate: float) -> np.ndarray:
    """Stationary probabilities of the number in system 0..K (K where the rest is negligible)."""
    logs = [0.0]
    top = 0.0
    k = 0
    log_rate = math.log(arrival_rate)
    while True:
        k += 1
        death = min(k, agents) * service_rate + max(k - agents, 0) * abandon_rate
        if death <= 0:
            raise ValueError("the queue never empties: give a patience or more agents than the offered load")
        value = logs[-1] + log_rate - math.log(death)
        logs.append(value)
        top = max(top, value)
        # Past N the chain only falls once deaths outnumber arrivals; stop when it is negligible.
        if k > agents and death > arrival_rate and value < top + _TRUNCATION_LOG:
            break
        if k > agents + 10_000_000:
            raise ValueError("the Erlang A chain does not settle: patience too long for this overload")
    values = np.asarray(logs)
    weights = np.exp(values - values.max())
    return weights / weights.sum()


def erlang_a_figures(
    agents: int,
    arrival_rate: float,
    handle_seconds: float,
    patience_seconds: float,
    threshold_seconds: float,
) -> QueueFigures:
    """Erlang A (M/M/N+M: exponential patience with mean ``patience_seconds``), computed exactly.

    Service level = answered within T ÷ offered; ASA over answered contacts; abandonment = θ·E[queue]/λ
    (abandonments happen at rate θ per waiting contact); average abandon time = mean wait of those who
    abandon. Works above 100 % offered load too, since impatience keeps the queue finite."""
    if not handle_seconds > 0:
        raise ValueError(f"handle time must be positive, not {handle_seconds!r}")
    if not patience_seconds > 0:
        raise ValueError(f"patience must be positive, not {patience_seconds!r}")
    if threshold_seconds < 0:
        raise ValueError(f"threshold must not be negative, not {threshold_seconds!r}")
    load = arrival_rate * handle_seconds
    _check(agents, load)
    mu = 1.0 / handle_seconds
    theta = 1.0 / patience_seconds
    pi = _erlang_a_states(agents, arrival_rate, mu, theta)
    ahead = pi[agents:]  # an arrival finding N + i in the system has i contacts ahead of it (PASTA)
    served_at_once = float(pi[:agents].sum())
    stages = np.arange(len(ahead), dtype=float)
    moves_up = agents * mu + stages * theta  # rate at which the one ahead leaves the queue
    leaves = moves_up + theta  # ... or this contact gives up
    # P(answered | i ahead) = prod_{m<=i} moves_up/leaves; E[wait · answered | i] = that · sum_{m<=i} 1/leaves.
    answered_given = np.exp(np.cumsum(np.log(moves_up / leaves)))
    wait_given = np.cumsum(1.0 / leaves)
    answered_after_wait = float((ahead * answered_given).sum())
    answered = served_at_once + answered_after_wait
    wait_of_answered = float((ahead * answered_given * wait_given).sum())
    queue_length = float((ahead * stages).sum())
    wait_all = queue_length / arrival_rate  # Little's law over all contacts
    abandoned = 1.0 - answered
    # Answered within T: the waiting contact's chain, run for T seconds, absorbed at "answered".
    size = len(ahead)
    # Each stage of the waiting chain lasts an exponential time at rate >= Nμ + θ: past this bound (about
    # 40 standard deviations beyond the longest chain) every waiting contact has been answered or left.
    settled = (size + 40.0 * math.sqrt(size) + 40.0) / (agents * mu + theta)
    if threshold_seconds >= settled:
        answered_within = answered
    elif threshold_seconds > 0 and size > 0:
        state_at_t = expm_multiply(
            _waiting_generator(moves_up, leaves, theta).T * threshold_seconds, np.concatenate([ahead, [0.0, 0.0]])
        )
        answered_within = served_at_once + float(state_at_t[size])
    else:
        answered_within = served_at_once
    return QueueFigures(
        agents=agents,
        offered_load=load,
        occupancy=load * answered / agents,
        threshold_seconds=threshold_seconds,
        probability_of_wait=float(ahead.sum()),
        service_level=answered_within,
        asa_seconds=wait_of_answered / answered if answered > 0 else math.inf,
        abandonment=abandoned,
        average_abandon_seconds=(wait_all - wait_of_answered) / abandoned if abandoned > 1e-15 else 0.0,
        average_wait_all_seconds=wait_all,
    )


def _waiting_generator(moves_up: np.ndarray, leaves: np.ndarray, theta: float) -> csr_matrix:
    """Generator of a waiting contact's chain over (i ahead = 0..size-1, answered, abandoned): from i it
    moves to i-1 at ``moves_up[i]`` (from 0: answered) and abandons at θ."""
    size = len(moves_up)
    index = np.arange(size)
    rows = np.concatenate([index, index, index])
    cols = np.concatenate([index, np.where(index > 0, index - 1, size), np.full(size, size + 1)])
    values = np.concatenate([-leaves, moves_up, np.full(size, theta)])
    return coo_matrix((values, (rows, cols)), shape=(size + 2, size + 2)).tocsr()


def agents_for_service_level(
    arrival_rate: float, handle_seconds: float, threshold_seconds: float, target: float
) -> int:
    """The fewest agents for which Erlang C's service level reaches ``target`` (a fraction)."""
    if not 0 < target < 1:
        raise ValueError(f"target must be between 0 and 1, not {target!r}")
    agents = max(1, math.floor(arrival_rate * handle_seconds) + 1)
    while erlang_c_service_level(agents, arrival_rate, handle_seconds, threshold_seconds) < target:
        agents += 1
    return agents


__all__ = [
    "QueueFigures",
    "agents_for_service_level",
    "erlang_a_figures",
    "erlang_b",
    "erlang_c",
    "erlang_c_asa",
    "erlang_c_figures",
    "erlang_c_service_level",
]
