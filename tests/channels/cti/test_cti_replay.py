"""The replay property: delivering every event of a call 2-5 times, in random order (seeded), ends in the
same call, interaction and routing state as delivering each once, in order.

Four realistic calls: IVR then queue then ring then answer then hold then transfer then hang up (kefu
routes it to the one available agent); abandoned in the queue; routed by the PBX itself; a recording
reported minutes later by a system that cannot number events. Each run has its own caller (so its own
customer and case) and its own times (``t0``); the snapshot replaces ids by what they stand for and
times by seconds since ``t0``.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from typing import Any

import pytest
from cti_support import (
    SCENARIOS,
    ScriptedIvr,
    World,
    deliver,
    make_pbx,
    make_world,
    new_mobile,
    past,
    scenario,
    snapshot,
    uid,
    use_ivr,
)

from kefu.channels.cti import service
from kefu.channels.cti.models import CallEvent

SEEDS_PER_SCENARIO = 8


def _relative(value: Any, t0: datetime) -> Any:
    if isinstance(value, datetime):
        return (value - t0).total_seconds()
    if isinstance(value, dict):
        return {k: _relative(v, t0) for k, v in value.items() if k != "started"}
    return value


def _normalized(found: dict[str, Any], t0: datetime) -> dict[str, Any]:
    return {k: _relative(v, t0) for k, v in found.items()}


def _deliveries(events: list[dict[str, Any]], rng: random.Random) -> list[list[dict[str, Any]]]:
    """Every event 2-5 times, shuffled, sent one by one or in small batches."""
    copies = [e for e in events for _ in range(rng.randint(2, 5))]
    rng.shuffle(copies)
    groups: list[list[dict[str, Any]]] = []
    while copies:
        size = rng.choice((1, 1, 1, 2, 3))
        groups.append(copies[:size])
        copies = copies[size:]
    return groups


async def _run(app: Any, world: World, name: str, t0: datetime, seed: int | None) -> dict[str, Any]:
    run_world = World(world.pbx, t0, world.queue, world.agents, world.extensions)
    call_id = uid("call")
    events, _ = scenario(name, run_world, call_id, new_mobile())
    if seed is None:
        for one in events:
            await deliver(app, world.pbx, [one])
    else:
        for group in _deliveries(events, random.Random(seed)):
            await deliver(app, world.pbx, group)
    return _normalized(await snapshot(app, run_world, world.pbx, call_id), t0)


@pytest.mark.parametrize("name", SCENARIOS)
async def test_replaying_in_random_order_ends_in_the_same_state(app, make, monkeypatch, name: str) -> None:  # noqa: ANN001
    pbx, _ = await make_pbx(app)
    base = past(hours=12)
    world = await make_world(app, make, pbx, base, available=("A",) if name.startswith("ivr_queue") else ())
    _, ivr = scenario(name, world, "x", "x")
    use_ivr(monkeypatch, app, ScriptedIvr(world.queue.code) if ivr else None)

    # Runs follow each other in time, as calls do (an agent's routing history only moves forward), close
    # enough that routing's rest rule (a break after two hours on line) never starts.
    once = await _run(app, world, name, base, None)
    for index, seed in enumerate(range(SEEDS_PER_SCENARIO), start=1):
        replayed = await _run(app, world, name, base + timedelta(minutes=10 * index), seed)
        assert replayed == once, f"seed {seed}"

    # What one delivery in order gives is what the call was.
    assert once["events"] and all(outcome == "applied" for _, _, outcome in once["events"])
    assert once["call.gap_since"] is None
    expected = {
        "ivr_queue_ring_answer_transfer_hangup": {
            "call.state": "ended",
            "call.agent": "B",
            "call.answered_by": "A",
            "call.held_seconds": 15,
            "call.transfers": 1,
            "interaction.state": "wrap_up",
            "interaction.agent": "A",
            "interaction.queue": "Q",
            "interaction.queued_at": 6.0,
            "interaction.offered_at": 6.0,
            "interaction.answered_at": 12.0,
            "interaction.ended_at": 130.0,
            "routing": ("ended", "handled", "A", None),
            "call.recording_seconds": 118,
        },
        "abandoned_in_queue": {
            "call.state": "ended",
            "interaction.state": "abandoned",
            "interaction.queue": "Q",
            "interaction.queued_at": 2.0,
            "interaction.abandoned_at": 50.0,
            "interaction.offered_at": None,
            "routing": ("ended", "abandoned", None, None),
        },
        "pbx_routed": {
            "interaction.state": "wrap_up",
            "interaction.agent": "C",
            "interaction.offered_at": 1.0,
            "interaction.answered_at": 5.0,
            "interaction.ended_at": 65.0,
            "routing": None,
            "call.hangup_by": "agent",
        },
        "recording_late": {
            "call.recording_path": "/var/spool/asterisk/monitor/x.wav",
            "call.queue": "pbx-own-sales",
            "interaction.queue": None,
            "interaction.queued_at": 1.0,
            "interaction.offered_at": 20.0,
            "interaction.state": "wrap_up",
            "routing": None,
        },
    }[name]
    assert {k: once[k] for k in expected} == expected
    assert once["interaction.customer"] is True and once["interaction.case"] is True


# --- the projection alone: many seeds -------------------------------------------------------------
def _rows(events: list[dict[str, Any]]) -> list[CallEvent]:
    from kefu.channels.cti.schemas import EventIn

    rows = []
    for raw in events:
        body = EventIn.validate_python(raw)
        data = body.model_dump(mode="json", exclude={"event_id", "call_id", "at", "seq", "type"}, exclude_none=True)
        rows.append(CallEvent(event_id=body.event_id, seq=body.seq, type=body.type, at=body.at, data=data))
    return rows


@pytest.mark.parametrize("name", SCENARIOS)
def test_the_projection_ignores_order_and_repeats(name: str) -> None:
    world = World("p", past(), None, {}, {"A": "8001", "B": "8002", "C": "8003"})  # type: ignore[arg-type]
    world.queue = type("Q", (), {"code": "q1"})()  # type: ignore[assignment]
    events, _ = scenario(name, world, "call-1", "+8613800138000")
    rows = _rows(events)
    once = service.project(rows)
    for seed in range(300):
        rng = random.Random(seed)
        copies = [r for r in rows for _ in range(rng.randint(2, 5))]
        rng.shuffle(copies)
        # Repeats are stored once (unique event ids): what is projected is the set, in any order.
        unique = list({r.event_id: r for r in copies}.values())
        assert service.project(unique) == once, f"seed {seed}"
