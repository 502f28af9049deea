"""The routing simulator against queueing theory, and routing strategies compared.

    .venv/bin/python benchmarks/routing_sim.py [--scale 1.0] [--workers 2]

Prints one JSON document:
- ``erlang_c``: one queue, one skill, Poisson arrivals, exponential handle times, no abandonment, at
  occupancy 0.7, 0.85 and 0.95 (20 agents, AHT 180 s, 20 s threshold): Erlang C's service level and
  ASA beside the simulated ones (mean over independent replications, with standard errors, and the
  control-variate estimate, see ``routing.sim.erlang_check``), the differences, and whether they are
  within 2 points (service level) and 5 % (ASA);
- ``erlang_a``: the same with exponential patience (mean 180 s) at occupancy 0.95 and 1.1, beside Erlang A;
- ``multiskill``: the 12-queue preset (4 languages × 3 products) under skills-based routing, random
  among eligible agents, and longest idle, for three staffs (seeds) and pooled;
- ``contacts_per_second``: simulated contacts per second of one process (erlang preset, occupancy 0.85).

``--scale`` multiplies the number of contacts (the default runs about 4 million, a minute or two on two
cores); the ASA at 0.95 needs them: a run's mean wait there swings by about 20 % per 20,000 contacts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from kefu.routing import sim  # noqa: E402

AGENTS, AHT, THRESHOLD = 20, 180.0, 20.0


def _erlang_row(job: tuple[float, int, int, float | None]) -> dict[str, Any]:
    occupancy, replications, contacts, patience = job
    check = sim.erlang_check(
        occupancy=occupancy,
        agents=AGENTS,
        aht=AHT,
        contacts=contacts,
        replications=replications,
        seed=1000,
        threshold=THRESHOLD,
        patience=patience,
    )
    theory, plain, adjusted = check["theory"], check["simulated"], check["adjusted"]
    row = {
        "model": check["model"],
        "occupancy": occupancy,
        "agents": AGENTS,
        "aht_seconds": AHT,
        "threshold_seconds": THRESHOLD,
        "patience_seconds": patience,
        "simulated_contacts": check["simulated_contacts"],
        "replications": replications,
        "theory_service_level": round(theory["service_level"], 4),
        "theory_asa_seconds": round(theory["asa_seconds"], 2),
        "sim_service_level": round(plain["service_level"], 4),
        "sim_service_level_se": round(plain["service_level_se"], 4),
        "sim_asa_seconds": round(plain["asa_seconds"], 2),
        "sim_asa_seconds_se": round(plain["asa_seconds_se"], 2),
        "adjusted_service_level": round(adjusted["service_level"], 4),
        "adjusted_asa_seconds": round(adjusted["asa_seconds"], 2),
        "diff_service_level_points": round(check["difference_simulated"]["service_level_points"], 2),
        "diff_asa_relative": round(check["difference_simulated"]["asa_relative"], 4),
        "adjusted_diff_service_level_points": round(check["difference_adjusted"]["service_level_points"], 2),
        "adjusted_diff_asa_relative": round(check["difference_adjusted"]["asa_relative"], 4),
        "sim_occupancy": round(plain["occupancy"], 4),
    }
    row["within_2_points"] = abs(row["diff_service_level_points"]) <= 2
    row["within_5_percent_asa"] = abs(row["diff_asa_relative"]) <= 0.05
    if patience is not None:
        row.update(
            theory_abandonment=round(theory["abandonment"], 4),
            sim_abandonment=round(plain["abandonment"], 4),
            theory_average_abandon_seconds=round(theory["average_abandon_seconds"], 2),
            sim_average_abandon_seconds=round(plain["average_abandon_seconds"], 2),
        )
    return row


def _multiskill(seed: int) -> dict[str, Any]:
    result = sim.compare_strategies(sim.multiskill_scenario(seed=seed))
    return {"seed": seed, "table": result["table"]}


def _speed() -> dict[str, Any]:
    report = sim.simulate(sim.erlang_scenario(occupancy=0.85, agents=AGENTS, aht=AHT, contacts=50_000, seed=7))
    return {"simulated_contacts": report["simulated_contacts"], "wall_seconds": report["wall_seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the number of contacts")
    parser.add_argument("--workers", type=int, default=2, help="processes")
    args = parser.parse_args()

    def size(n: int) -> int:
        return max(2000, int(n * args.scale))

    erlang_c_jobs = [(0.7, 10, size(50_000), None), (0.85, 10, size(100_000), None), (0.95, 20, size(100_000), None)]
    erlang_a_jobs = [(0.95, 8, size(50_000), 180.0), (1.1, 8, size(50_000), 180.0)]
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        speed = pool.submit(_speed).result()  # alone, before the pool is busy
        erlang_c = pool.map(_erlang_row, erlang_c_jobs)
        erlang_a = pool.map(_erlang_row, erlang_a_jobs)
        multiskill = list(pool.map(_multiskill, (1, 2, 3)))
        erlang_c, erlang_a = list(erlang_c), list(erlang_a)
    pooled: dict[str, dict[str, float]] = {}
    for strategy in sim.STRATEGIES:
        rows = [m["table"][strategy] for m in multiskill]
        offered = sum(r["offered"] for r in rows)
        pooled[strategy] = {
            key: round(sum(r[key] * r["offered"] for r in rows) / offered, 4)
            for key in ("service_level", "asa_seconds", "abandonment", "occupancy")
        }
        pooled[strategy]["offered"] = offered
    for m in multiskill:
        m["table"] = {s: {k: round(v, 4) for k, v in row.items()} for s, row in m["table"].items()}
    print(
        json.dumps(
            {
                "benchmark": "routing_sim",
                "definitions": sim.DEFINITIONS,
                "erlang_c": erlang_c,
                "erlang_a": erlang_a,
                "multiskill": {"pooled": pooled, "by_seed": multiskill},
                "contacts_per_second": round(speed["simulated_contacts"] / speed["wall_seconds"]),
                "total_wall_seconds": round(time.perf_counter() - started, 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
