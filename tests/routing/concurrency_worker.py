"""One worker process of the routing concurrency test (tests/routing/test_concurrency.py).

    python -m tests.routing.concurrency_worker '<json plan>'

It plays a contact centre's share of the traffic against a PostgreSQL database with its own engine, through
the real service functions, each call in its own transaction, the way several app processes would:

- callers: creates its quota of contacts (interactions.create_interaction + routing.enqueue, which routes),
  some of them impatient (they abandon through interactions.record_event "abandoned" if not answered soon);
- agents: the agents it owns take the offers ringing for them (accept most, reject some, let some ring
  out), end their contacts after a short talk (record_event "ended", sometimes "wrap_up_ended" too), and
  flap their presence between available, break, training and offline;
- sweeper: calls routing.sweep_in_steps every half second, as each app process's sweep loop does.

Business refusals that a race explains (an offer that rang out before the accept, an abandon after the
answer) are counted per operation. Database serialization failures and deadlocks, and anything else
unexpected, are failures: the test requires none. Progress goes to ``<status>`` every half second (the
test watches it to kill one worker mid-run); the totals are written there at the end.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError

from kefu.core.errors import Conflict, Invalid, NotFound
from kefu.core.policy import Principal
from kefu.db.base import utcnow
from kefu.db.engine import make_engine, make_session_factory
from kefu.interactions import service as interactions
from kefu.interactions.models import Interaction
from kefu.routing import service as routing
from kefu.routing.models import EntryState, RoutingEntry

# The races a contact centre has by nature; the service answers them with these refusals.
EXPECTED = (Conflict, Invalid, NotFound)
# What the lock order (entry first, then agent) promises never to happen.
SERIALIZATION_CODES = {"40001", "40P01"}
SWEEP_EVERY = 0.5
BREAK_REASONS = ("rest", "meal", "meeting", "coaching", "personal")


@dataclass
class Stats:
    created: int = 0
    ops: Counter = field(default_factory=Counter)
    refused: Counter = field(default_factory=Counter)
    failures: Counter = field(default_factory=Counter)
    failure_samples: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "created": self.created,
            "ops": dict(self.ops),
            "refused": dict(self.refused),
            "failures": dict(self.failures),
            "failure_samples": self.failure_samples[:10],
        }


class Worker:
    def __init__(self, plan: dict[str, Any]) -> None:
        self.plan = plan
        self.index: int = plan["index"]
        self.rng = random.Random(plan["seed"])
        self.engine = make_engine(plan["database_url"])
        self.factory = make_session_factory(self.engine)
        self.agents: list[int] = plan["agents"]
        self.queues: list[dict[str, Any]] = plan["queues"]
        self.channel = Principal(
            user_id=plan["channel_user"], username="pbx", roles=frozenset({"supervisor"}), via="token"
        )
        self.system = Principal(user_id=None, username="cc", roles=frozenset({"admin"}), via="session")
        self.stats = Stats()
        self.status = Path(plan["status"])
        self.stop_file = Path(plan["stop"])
        self.done_creating = False
        # Interaction id -> when an impatient caller hangs up (monotonic seconds).
        self.patience: dict[int, float] = {}
        # (interaction id, offers made) -> what the agent does with that offer, decided once.
        self.fate: dict[tuple[int, int], str] = {}
        # Interaction id -> when the agent ends the contact.
        self.talk_until: dict[int, float] = {}

    def agent(self, user_id: int) -> Principal:
        return Principal(user_id=user_id, username=f"agent{user_id}", roles=frozenset({"agent"}), via="session")

    async def call(self, name: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run one service call in its own transaction; classify what goes wrong."""
        try:
            async with self.factory() as db, db.begin():
                result = await fn(db, *args, **kwargs)
            self.stats.ops[name] += 1
            return result
        except EXPECTED as exc:
            self.stats.refused[f"{name}:{type(exc).__name__}"] += 1
        except DBAPIError as exc:
            self._fail(f"{name}:{self._kind(exc)}", exc)
        except Exception as exc:  # noqa: BLE001 - every unexpected error is a failure the test reports
            self._fail(f"{name}:{type(exc).__name__}", exc)
        return None

    @staticmethod
    def _kind(exc: DBAPIError) -> str:
        code = getattr(exc.orig, "sqlstate", None) or getattr(getattr(exc.orig, "__cause__", None), "sqlstate", None)
        return f"{'serialization' if code in SERIALIZATION_CODES else 'database'}:{code}"

    def _fail(self, key: str, exc: BaseException) -> None:
        self.stats.failures[key] += 1
        if len(self.stats.failure_samples) < 10:
            self.stats.failure_samples.append(f"{key}: {''.join(traceback.format_exception(exc))[-1500:]}")

    def stopping(self) -> bool:
        return self.stop_file.exists()

    # --- callers -------------------------------------------------------------------------------------
    async def _new_contact(self, db: Any, number: int, queue: dict[str, Any]) -> int:
        view, _ = await interactions.create_interaction(
            db,
            self.system,
            interactions.NewInteraction(
                channel=queue["channel"],
                external_id=f"cc-{self.plan['stream']}-{number}",
                arrived_at=utcnow() - timedelta(milliseconds=5),
            ),
        )
        await routing.enqueue(db, view.interaction.id, queue["id"], channel=queue["channel"], customer_id=None)
        return view.interaction.id

    async def callers(self) -> None:
        quota, number = self.plan["contacts"], self.plan["first_number"]
        interval = 1.0 / self.plan["rate"]
        next_at = time.monotonic()
        while not self.stopping():
            now = time.monotonic()
            if number < quota and now >= next_at:
                queue = self.rng.choices(self.queues, weights=[q["weight"] for q in self.queues])[0]
                interaction_id = await self.call("enqueue", self._new_contact, number, queue)
                number += 1
                next_at += interval
                if interaction_id is not None:
                    self.stats.created += 1
                    if self.rng.random() < self.plan["abandon_share"]:
                        self.patience[interaction_id] = now + self.rng.uniform(0.5, 6.0)
            elif number >= quota:
                self.done_creating = True
            for interaction_id, deadline in list(self.patience.items()):
                if deadline <= now:
                    del self.patience[interaction_id]
                    await self.call("abandon", interactions.record_event, self.channel, interaction_id, "abandoned")
            await asyncio.sleep(max(0.0, min(0.05, next_at - time.monotonic())) if number < quota else 0.1)

    # --- agents --------------------------------------------------------------------------------------
    async def _mine(self) -> tuple[list[Any], list[Any]]:
        async with self.factory() as db:
            rows = (
                await db.execute(
                    select(
                        RoutingEntry.interaction_id,
                        RoutingEntry.state,
                        RoutingEntry.offer_agent_id,
                        RoutingEntry.agent_id,
                        RoutingEntry.offers_made,
                    ).where(
                        RoutingEntry.state.in_([EntryState.offered, EntryState.assigned]),
                        func.coalesce(RoutingEntry.offer_agent_id, RoutingEntry.agent_id).in_(self.agents),
                    )
                )
            ).all()
        return [r for r in rows if r.state == EntryState.offered], [r for r in rows if r.state == EntryState.assigned]

    async def agents_loop(self) -> None:
        shares = self.plan["offer_fate"]
        while not self.stopping():
            offered, assigned = await self._mine()
            for row in offered:
                key = (row.interaction_id, row.offers_made)
                fate = self.fate.get(key)
                if fate is None:
                    fate = self.fate[key] = self.rng.choices(list(shares), weights=list(shares.values()))[0]
                    if fate == "accept":
                        await self.call(
                            "accept", routing.accept_offer, self.agent(row.offer_agent_id), row.interaction_id
                        )
                    elif fate == "reject":
                        await self.call(
                            "reject", routing.reject_offer, self.agent(row.offer_agent_id), row.interaction_id
                        )
            now = time.monotonic()
            for row in assigned:
                until = self.talk_until.setdefault(row.interaction_id, now + self.rng.uniform(0.2, 2.5))
                if until <= now:
                    del self.talk_until[row.interaction_id]
                    done = await self.call("end", interactions.record_event, self.channel, row.interaction_id, "ended")
                    if done is not None and self.rng.random() < 0.3:
                        await self.call(
                            "wrap_up", interactions.record_event, self.channel, row.interaction_id, "wrap_up_ended"
                        )
            for _ in range(self.plan["flaps_per_round"]):
                await self.flap(self.rng.choice(self.agents))
            await asyncio.sleep(0.05)

    async def flap(self, user_id: int) -> None:
        roll = self.rng.random()
        if roll < 0.55:
            await self.call("presence", routing.set_presence, self.agent(user_id), user_id, "available")
        elif roll < 0.8:
            reason = self.rng.choice(BREAK_REASONS)
            await self.call("presence", routing.set_presence, self.agent(user_id), user_id, "break", reason=reason)
        elif roll < 0.95:
            await self.call("presence", routing.set_presence, self.agent(user_id), user_id, "training")
        else:
            # Signing out with contacts open is refused (Conflict): counted as a refusal.
            await self.call("presence", routing.set_presence, self.agent(user_id), user_id, "offline")

    # --- sweeper -------------------------------------------------------------------------------------
    async def sweeper(self) -> None:
        """What every app process's RoutingSweeper does: the sweep in one short transaction per item."""
        while not self.stopping():
            try:
                await routing.sweep_in_steps(self.factory)
                self.stats.ops["sweep"] += 1
            except DBAPIError as exc:
                self._fail(f"sweep:{self._kind(exc)}", exc)
            except Exception as exc:  # noqa: BLE001 - every unexpected error is a failure the test reports
                self._fail(f"sweep:{type(exc).__name__}", exc)
            await asyncio.sleep(SWEEP_EVERY)

    async def report(self) -> None:
        while not self.stopping():
            self.write_status(final=False)
            await asyncio.sleep(0.5)

    def write_status(self, *, final: bool) -> None:
        data = {"done_creating": self.done_creating, "final": final, **self.stats.as_json()}
        tmp = self.status.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(self.status)

    async def run(self) -> None:
        # The first agent states are made by the test; the engine warms up with a first query.
        async with self.factory() as db:
            await db.scalar(select(func.count()).select_from(Interaction))
        try:
            await asyncio.gather(self.callers(), self.agents_loop(), self.sweeper(), self.report())
        finally:
            self.write_status(final=True)
            await self.engine.dispose()


def main() -> None:
    plan = json.loads(sys.argv[1])
    asyncio.run(Worker(plan).run())


if __name__ == "__main__":
    main()
