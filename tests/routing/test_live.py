"""The supervisors' live view (kefu.routing.live): a day of contacts built through the real router and
the interactions timeline, then the snapshot's figures checked exactly: waiting and longest wait, the
day's offered / answered / abandoned counts, the service level by its stated definition (answered within
the threshold, the threshold itself included, over answered plus unanswered after the threshold),
"today" starting at midnight in the viewer's time zone, the agents' states and time in state; and the
number of queries the same for 2 and 12 queues and agents."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from tests.routing.routing_support import (
    accept,
    channel_principal,
    contact,
    end,
    make_agent,
    make_queue,
    set_presence,
)

from conftest import QueryCounter
from kefu.core.policy import Principal
from kefu.db.base import utcnow
from kefu.interactions import service as interactions
from kefu.routing import live

SHANGHAI = ZoneInfo("Asia/Shanghai")


def viewer(zone: str) -> Principal:
    return Principal(user_id=None, username="live-test", roles=frozenset({"supervisor"}), via="session", time_zone=zone)


def local(day: date, hour: int, minute: int, second: int = 0, *, days: int = 0) -> datetime:
    """A Shanghai wall-clock moment (``days`` before/after ``day``) as aware UTC."""
    return datetime.combine(day + timedelta(days=days), time(hour, minute, second), tzinfo=SHANGHAI).astimezone(UTC)


async def abandon(app, interaction_id: int, at: datetime) -> None:  # noqa: ANN001
    who = await channel_principal(app)
    async with app.state.session_factory() as db, db.begin():
        await interactions.record_event(db, who, interaction_id, "abandoned", at=at)


async def take(app, agent, interaction_id: int, answered: datetime, ended: datetime | None) -> None:  # noqa: ANN001
    await accept(app, agent, interaction_id, answered)
    if ended is not None:
        await end(app, interaction_id, ended)


async def snap(app, zone: str, now: datetime) -> live.LiveSnapshot:  # noqa: ANN001
    async with app.state.session_factory() as db:
        return await live.snapshot(db, viewer(zone), now=now)


def queue_in(view: live.LiveSnapshot, queue_id: int) -> live.QueueLive:
    return next(q for q in view.queues if q.id == queue_id)


def agent_in(view: live.LiveSnapshot, user_id: int) -> live.AgentLive:
    return next(a for a in view.agents if a.user_id == user_id)


async def test_a_constructed_day_gives_exact_figures_in_the_viewers_time_zone(app, make) -> None:
    # Day D in Shanghai, a few days back (the timeline refuses future moments); "now" is 02:00 on D,
    # which is 18:00 UTC on D-1: a UTC viewer's day began 8 hours before the Shanghai viewer's.
    day = utcnow().astimezone(SHANGHAI).date() - timedelta(days=3)
    now = local(day, 2, 0)
    queue = await make_queue(
        app, name="白天 <b>队列</b>", sl_threshold_seconds=20, sl_target_percent=80, offer_timeout_seconds=120
    )
    agent = await make_agent(app, make, queues=(queue.id,))
    never = await make_agent(app, make, queues=(queue.id,))  # a member who never signed in to routing
    resting = await make_agent(app, make, queues=(queue.id,))

    await set_presence(app, agent, "available", local(day, 23, 49, days=-1))
    y1 = await contact(app, queue, local(day, 23, 50, days=-1))  # all yesterday (Shanghai)
    await take(app, agent, y1, local(day, 23, 50, 10, days=-1), local(day, 23, 55, days=-1))
    y2 = await contact(app, queue, local(day, 23, 59, 50, days=-1))  # arrived yesterday, answered today late
    await take(app, agent, y2, local(day, 0, 0, 20), local(day, 0, 5))
    c1 = await contact(app, queue, local(day, 0, 10))  # answered at exactly the threshold: within
    await take(app, agent, c1, local(day, 0, 10, 20), local(day, 0, 15))
    c2 = await contact(app, queue, local(day, 0, 20))
    await take(app, agent, c2, local(day, 0, 20, 5), local(day, 0, 25))
    await set_presence(app, agent, "break", local(day, 0, 26), reason="meal")
    c3 = await contact(app, queue, local(day, 0, 30))
    await abandon(app, c3, local(day, 0, 30, 10))  # gave up within the threshold: neither for nor against
    c4 = await contact(app, queue, local(day, 0, 40))
    await abandon(app, c4, local(day, 0, 41))  # gave up after it: against
    await set_presence(app, agent, "available", local(day, 0, 59))
    c5 = await contact(app, queue, local(day, 1, 0))
    await take(app, agent, c5, local(day, 1, 0, 45), None)  # still on it at 02:00
    await set_presence(app, resting, "break", local(day, 1, 30), reason="meal")
    waiting = await contact(app, queue, local(day, 1, 50))  # the agent is full: it waits

    view = await snap(app, "Asia/Shanghai", now)
    assert view.day_start == local(day, 0, 0) and view.time_zone == "Asia/Shanghai"
    q = queue_in(view, queue.id)
    assert q.name == "白天 <b>队列</b>" and q.channel == "phone"
    assert (q.waiting, q.ringing, q.longest_wait_seconds) == (1, 0, 600)
    assert q.offered_today == 5 + 1  # c1..c5 and the waiting one; y2 arrived yesterday
    assert q.answered_today == 4  # y2, c1, c2, c5
    assert q.answered_within_threshold_today == 2  # c1 (20.000 s) and c2 (5 s)
    assert q.abandoned_today == 2 and q.diverted_today == 0
    assert q.unanswered_after_threshold_today == 1  # c4
    assert q.service_level_today == 100.0 * 2 / (4 + 1)
    assert (q.sl_threshold_seconds, q.sl_target_percent) == (20, 80)
    assert (q.agents_staffed, q.agents_available, q.agents_on_contact) == (2, 0, 1)
    assert [c.interaction_id for c in view.contacts if c.queue_id == queue.id] == [waiting]
    shown = next(c for c in view.contacts if c.interaction_id == waiting)
    assert (shown.state, shown.waited_seconds, shown.offer_agent_id) == ("waiting", 600, None)

    busy = agent_in(view, agent.id)
    assert (busy.presence, busy.reason, busy.seconds_in_state) == ("on_contact", None, 60 * 59 + 15)
    assert busy.contacts == 1 and busy.ringing == 0 and busy.loads["voice"] == 1 and busy.queue_ids == (queue.id,)
    on_break = agent_in(view, resting.id)
    assert (on_break.presence, on_break.reason, on_break.seconds_in_state) == ("break", "meal", 30 * 60)
    absent = agent_in(view, never.id)
    assert (absent.presence, absent.since, absent.seconds_in_state, absent.contacts) == ("offline", None, None, 0)

    # The same moment seen from UTC: the day began at 00:00 UTC on D-1, so yesterday's Shanghai
    # evening is "today": y1 and y2 arrived today and y1 was answered within 10 s.
    utc_view = await snap(app, "UTC", now)
    assert utc_view.day_start == datetime.combine(day - timedelta(days=1), time(0), tzinfo=UTC)
    u = queue_in(utc_view, queue.id)
    assert (u.offered_today, u.answered_today, u.answered_within_threshold_today) == (8, 5, 3)
    assert (u.abandoned_today, u.unanswered_after_threshold_today) == (2, 1)
    assert u.service_level_today == 100.0 * 3 / (5 + 1)

    # A new day (Shanghai) with nothing answered yet: no service level rather than 0 % or 100 %.
    tomorrow = await snap(app, "Asia/Shanghai", local(day, 0, 0, 1, days=1))
    t = queue_in(tomorrow, queue.id)
    assert (t.answered_today, t.abandoned_today, t.service_level_today) == (0, 0, None)
    assert t.waiting == 1  # still there: waiting is now, not today


async def test_a_contact_answered_a_microsecond_late_is_not_within_the_threshold(app, make) -> None:
    day = utcnow().astimezone(SHANGHAI).date() - timedelta(days=2)
    queue = await make_queue(app, sl_threshold_seconds=15, offer_timeout_seconds=60)
    agent = await make_agent(app, make, queues=(queue.id,))
    await set_presence(app, agent, "available", local(day, 9, 0))
    arrived = local(day, 9, 1) + timedelta(microseconds=250_000)
    late = await contact(app, queue, arrived)
    await take(app, agent, late, arrived + timedelta(seconds=15, microseconds=1), arrived + timedelta(seconds=60))
    q = queue_in(await snap(app, "Asia/Shanghai", local(day, 10, 0)), queue.id)
    assert (q.answered_today, q.answered_within_threshold_today, q.service_level_today) == (1, 0, 0.0)


async def test_the_number_of_queries_does_not_grow_with_queues_and_agents(app, make) -> None:
    now = utcnow() - timedelta(hours=1)

    async def add(n: int) -> None:
        for i in range(n):
            queue = await make_queue(app, offer_timeout_seconds=600)
            agent = await make_agent(app, make, queues=(queue.id,))
            await set_presence(app, agent, "available" if i % 2 else "training", now)
            await contact(app, queue, now + timedelta(seconds=1))  # offered, or waiting for the trainee

    async def counted() -> tuple[int, live.LiveSnapshot]:
        async with app.state.session_factory() as db:
            with QueryCounter(app) as counter:
                view = await live.snapshot(db, viewer("Asia/Shanghai"), now=now + timedelta(seconds=30))
        return counter.count, view

    await add(2)
    few, small = await counted()
    await add(10)
    many, large = await counted()
    assert len(large.queues) >= len(small.queues) + 10 and len(large.agents) >= len(small.agents) + 10
    assert few == many <= 6
