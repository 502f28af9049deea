"""The routing configuration pages (/routing/queues, /routing/queues/{id}, /routing/capacity) as a browser
uses them (httpx against the app, forms posted with the CSRF token): what a supervisor submits is stored
exactly through routing.queues; a refusal comes back next to its field with what was typed, writing
nothing; agents and customers are refused; names are escaped."""

from __future__ import annotations

import re
import uuid
from typing import Any

from sqlalchemy import func, select
from tests.routing.routing_support import make_queue

from conftest import principal_of, signed_in_clients
from kefu.routing import queues
from kefu.routing.models import RoutingQueue
from kefu.tickets import sla

EVIL = '<script>alert("q")</script>&'
EVIL_ESCAPED = "&lt;script&gt;alert(&#34;q&#34;)&lt;/script&gt;&amp;"


def _code() -> str:
    return f"p{uuid.uuid4().hex[:10]}"


def _queue_form(**overrides: str) -> dict[str, str]:
    """Every field the queue form posts, as the new-queue page presets them."""
    form = {
        "code": _code(),
        "name": "页面队列",
        "channel": "phone",
        "language": "",
        "team_id": "",
        "active": "1",
        "priority": "0",
        "sl_target_percent": "80",
        "sl_threshold_seconds": "20",
        "offer_timeout_seconds": "20",
        "sticky_seconds": "0",
        "after_contact_seconds": "0",
        "expected_handle_seconds": "180",
        "skills-rows": "0",
        "bullseye-rows": "0",
        "overflow_queue_id": "",
        "overflow_after_seconds": "",
        "max_wait_seconds": "",
        "max_wait_action": "keep",
        "calendar_id": "",
        "closed_action": "keep",
    }
    form.update(overrides)
    return form


async def _stored(app, code: str) -> queues.QueueView | None:  # noqa: ANN001
    async with app.state.session_factory() as db:
        queue_id = await db.scalar(select(RoutingQueue.id).where(RoutingQueue.code == code))
        return None if queue_id is None else await queues.get_queue(db, queue_id)


async def _calendar(app, make) -> int:  # noqa: ANN001
    admin = await make.user("admin")
    async with app.state.session_factory() as db, db.begin():
        made = await sla.create_calendar(
            db, principal_of(admin), name=_code(), time_zone="Asia/Shanghai", weekly_hours={"0": [["09:00", "18:00"]]}
        )
    return made.calendar.id


async def test_supervisor_creates_a_queue_with_skills_and_bullseye_stored_exactly(app, make) -> None:
    chinese, billing, unused = await make.skill(), await make.skill(), await make.skill()
    team_id = await make.team()
    calendar_id = await _calendar(app, make)
    overflow = await make_queue(app, channel="phone", name="溢出")
    supervisor = await make.user("supervisor")
    code = _code()
    form = _queue_form(
        code=code,
        name="  投诉热线  ",
        language="zh-CN",
        team_id=str(team_id),
        priority="7",
        sl_target_percent="85",
        sl_threshold_seconds="30",
        offer_timeout_seconds="25",
        sticky_seconds="600",
        after_contact_seconds="45",
        expected_handle_seconds="240",
        overflow_queue_id=str(overflow.id),
        overflow_after_seconds="120",
        max_wait_seconds="900",
        max_wait_action="callback",
        calendar_id=str(calendar_id),
        closed_action="voicemail",
        **{
            # Row 1 is removed, row 3 is a blank spare: neither is a requirement.
            "skills-rows": "4",
            "skills-0-skill_id": str(chinese),
            "skills-0-min_proficiency": "4",
            "skills-1-skill_id": str(unused),
            "skills-1-min_proficiency": "2",
            "skills-1-remove": "1",
            "skills-2-skill_id": str(billing),
            "skills-2-min_proficiency": "3",
            "skills-3-skill_id": "",
            "skills-3-min_proficiency": "1",
            # The spare row keeps its preset drop but has no wait: not a step.
            "bullseye-rows": "3",
            "bullseye-0-after_seconds": "30",
            "bullseye-0-proficiency_drop": "1",
            "bullseye-1-after_seconds": "90",
            "bullseye-1-proficiency_drop": "2",
            "bullseye-1-any_member": "1",
            "bullseye-2-after_seconds": "",
            "bullseye-2-proficiency_drop": "1",
        },
    )
    async with signed_in_clients(app, {"s": supervisor}) as clients:
        client = clients["s"]
        new_page = await client.get("/routing/queues/new")
        assert new_page.status_code == 200 and 'id="queue-form"' in new_page.text
        made = await client.post("/routing/queues", data=form)
        assert made.status_code == 303, made.text[:2000]
        view = await _stored(app, code)
        assert view is not None and made.headers["location"] == f"/routing/queues/{view.queue.id}?saved=1"
        q = view.queue
        stored = {f: getattr(q, f) for f in queues.QUEUE_FIELDS}
        assert stored == {
            "code": code,
            "name": "投诉热线",
            "channel": "phone",
            "language": "zh-CN",
            "priority": 7,
            "sl_target_percent": 85,
            "sl_threshold_seconds": 30,
            "bullseye": [
                {"after_seconds": 30, "proficiency_drop": 1, "any_member": False},
                {"after_seconds": 90, "proficiency_drop": 2, "any_member": True},
            ],
            "sticky_seconds": 600,
            "offer_timeout_seconds": 25,
            "after_contact_seconds": 45,
            "expected_handle_seconds": 240,
            "overflow_queue_id": overflow.id,
            "overflow_after_seconds": 120,
            "max_wait_seconds": 900,
            "max_wait_action": "callback",
            "calendar_id": calendar_id,
            "closed_action": "voicemail",
            "team_id": team_id,
            "active": True,
        }
        assert sorted((s.skill_id, s.min_proficiency) for s in view.skills) == sorted([(chinese, 4), (billing, 3)])

        # The edit page shows it back, and the list has a row for it.
        page = (await client.get(f"/routing/queues/{q.id}")).text
        assert f'name="code" value="{code}"' in page
        assert re.search(
            r'name="skills-\d-skill_id"[^>]*>\s*<option value="">—</option>.*?'
            rf'<option value="{chinese}" selected>',
            page,
            re.S,
        )
        assert 'name="bullseye-1-any_member" value="1" checked' in page
        assert f'<option value="{calendar_id}" selected>' in page
        listing = (await client.get("/routing/queues")).text
        row = re.search(rf'<tr data-queue-id="{q.id}">.*?</tr>', listing, re.S)
        assert row and code in row.group(0) and "85" in row.group(0)


async def test_a_refusal_shows_next_to_its_field_with_what_was_typed_and_writes_nothing(app, make) -> None:
    skill = await make.skill()
    supervisor = await make.user("supervisor")
    taken = await make_queue(app)
    code = _code()
    async with signed_in_clients(app, {"s": supervisor}) as clients:
        client = clients["s"]
        # The second step does not wait longer than the first: the service names bullseye[1].after_seconds.
        refused = await client.post(
            "/routing/queues",
            data=_queue_form(
                code=code,
                name="保留 typed name",
                priority="9",
                **{
                    "skills-rows": "1",
                    "skills-0-skill_id": str(skill),
                    "skills-0-min_proficiency": "5",
                    "bullseye-rows": "2",
                    "bullseye-0-after_seconds": "60",
                    "bullseye-0-proficiency_drop": "1",
                    "bullseye-1-after_seconds": "45",
                    "bullseye-1-proficiency_drop": "3",
                },
            ),
        )
        assert refused.status_code == 422
        html = refused.text
        assert re.search(
            r'name="bullseye-1-after_seconds" value="45"[^>]*aria-invalid="true"[^>]*>\s*'
            r'<span class="ra-error" id="err-bullseye\[1\].after_seconds" role="alert">[^<]+</span>',
            html,
        ), html
        assert 'name="name" value="保留 typed name"' in html and 'name="priority" value="9"' in html
        assert re.search(rf'<option value="{skill}" selected>', html)
        assert re.search(r'name="bullseye-1-proficiency_drop".*?<option value="3" selected>', html, re.S)
        assert await _stored(app, code) is None

        # Text where a number goes: refused by the service's range check, shown at the field in the user's words.
        refused = await client.post("/routing/queues", data=_queue_form(code=code, sl_target_percent="八十"))
        assert refused.status_code == 422
        assert re.search(r'name="sl_target_percent" value="八十"[^>]*aria-invalid="true"', refused.text)
        assert re.search(
            r'id="err-sl_target_percent" role="alert">(Enter a whole number from 1 to 100\.|[^<]*1[^<]*100[^<]*)<',
            refused.text,
        )
        # A taken code: a conflict, at the code field.
        refused = await client.post("/routing/queues", data=_queue_form(code=taken.code))
        assert refused.status_code == 409 and 'id="err-code"' in refused.text
        async with app.state.session_factory() as db:
            assert await db.scalar(select(func.count()).where(RoutingQueue.code == code)) == 0


async def test_edit_members_and_capacity_profiles(app, make) -> None:
    first, second = await make.skill(), await make.skill()
    queue = await make_queue(app, channel="chat", skills={first: 2, second: 4})
    team_id = await make.team()
    supervisor = await make.user("supervisor")
    agent_a, agent_b = await make.user("agent", team_ids=(team_id,)), await make.user("agent")
    customer = await make.user("customer")
    async with signed_in_clients(app, {"s": supervisor}) as clients:
        client = clients["s"]
        # Keep the second skill only, add one widening step; a partial form changes only what it sends.
        edited = await client.post(
            f"/routing/queues/{queue.id}",
            data={
                "name": "改名 chat",
                "priority": "-3",
                "active": "1",
                "skills-rows": "2",
                "skills-0-skill_id": str(first),
                "skills-0-min_proficiency": "2",
                "skills-0-remove": "1",
                "skills-1-skill_id": str(second),
                "skills-1-min_proficiency": "5",
                "bullseye-rows": "1",
                "bullseye-0-after_seconds": "40",
                "bullseye-0-proficiency_drop": "0",
                "bullseye-0-any_member": "1",
            },
        )
        assert edited.status_code == 303, edited.text[:2000]
        view = await _stored(app, queue.code)
        assert view is not None
        assert (view.queue.name, view.queue.priority, view.queue.channel) == ("改名 chat", -3, "chat")
        assert view.queue.bullseye == [{"after_seconds": 40, "proficiency_drop": 0, "any_member": True}]
        assert [(s.skill_id, s.min_proficiency) for s in view.skills] == [(second, 5)]

        # A refused edit keeps the stored queue as it was.
        refused = await client.post(f"/routing/queues/{queue.id}", data={"name": "不会保存", "sticky_seconds": "-1"})
        assert refused.status_code == 422 and 'id="err-sticky_seconds"' in refused.text
        assert 'name="name" value="不会保存"' in refused.text
        assert (await _stored(app, queue.code)).queue.name == "改名 chat"  # type: ignore[union-attr]

        # Members: add two, remove one; a customer is refused at the members section.
        added = await client.post(
            f"/routing/queues/{queue.id}/members/add", data={"user_ids[]": [str(agent_a.id), str(agent_b.id)]}
        )
        assert added.status_code == 303
        page = (await client.get(f"/routing/queues/{queue.id}")).text
        members_html = page[page.index('id="members-remove"') : page.index('id="members-add"')]
        assert f'value="{agent_a.id}"' in members_html and f'value="{agent_b.id}"' in members_html
        removed = await client.post(f"/routing/queues/{queue.id}/members/remove", data={"user_ids[]": str(agent_b.id)})
        assert removed.status_code == 303
        refused = await client.post(f"/routing/queues/{queue.id}/members/add", data={"user_ids[]": str(customer.id)})
        assert refused.status_code == 422 and 'id="err-user_ids"' in refused.text and str(customer.id) in refused.text
        async with app.state.session_factory() as db:
            assert [m.user_id for m in await queues.list_members(db, queue.id)] == [agent_a.id]

        # Capacity: a refused profile keeps what was typed; then create, edit, assign to a team and an agent.
        name = _code()
        refused = await client.post(
            "/routing/capacity",
            data={
                "name": name,
                "voice": "1",
                "chat": "99",
                "email": "5",
                "message": "5",
                "voice_blocks_others": "0",
                "others_block_voice": "0",
            },
        )
        assert refused.status_code == 422
        assert re.search(r'name="chat" value="99"[^>]*aria-invalid="true"', refused.text)
        assert re.search(rf'name="name" value="{name}"', refused.text)
        made = await client.post(
            "/routing/capacity",
            data={
                "name": name,
                "voice": "1",
                "chat": "4",
                "email": "8",
                "message": "6",
                "voice_blocks_others": "0",
                "others_block_voice": "1",
            },
        )
        assert made.status_code == 303
        async with app.state.session_factory() as db:
            profile = next(v.profile for v in await queues.list_profiles(db) if v.profile.name == name)
        edited = await client.post(f"/routing/capacity/{profile.id}", data={"chat": "6", "voice_blocks_others": "1"})
        assert edited.status_code == 303
        for target in ({"team_id": str(team_id)}, {"user_id": str(agent_b.id)}):
            assigned = await client.post(
                "/routing/capacity/assignments", data={**target, "profile_id": str(profile.id)}
            )
            assert assigned.status_code == 303, assigned.text[:2000]
        refused = await client.post(
            "/routing/capacity/assignments", data={"user_id": str(customer.id), "profile_id": str(profile.id)}
        )
        assert refused.status_code == 422 and "ra-error" in refused.text
        async with app.state.session_factory() as db:
            view_p = next(v for v in await queues.list_profiles(db) if v.profile.id == profile.id)
            got = {f: getattr(view_p.profile, f) for f in queues.PROFILE_FIELDS}
        assert got == {
            "name": name,
            "voice": 1,
            "chat": 6,
            "email": 8,
            "message": 6,
            "voice_blocks_others": True,
            "others_block_voice": True,
        }
        assert (view_p.team_ids, view_p.user_ids) == ([team_id], [agent_b.id])
        page = (await client.get("/routing/capacity")).text
        assert re.search(rf'<tr data-team-id="{team_id}"><td>[^<]*</td><td>{name}</td>', page)
        section = page[page.index(f'id="profile-{profile.id}"') :]
        section = section[: section.index("</section>")]
        assert 'name="chat" value="6"' in section
        assert '<input type="checkbox" name="others_block_voice" value="1" checked>' in section
        # Removing the agent's own profile.
        removed = await client.post(
            "/routing/capacity/assignments", data={"user_id": str(agent_b.id), "profile_id": ""}
        )
        assert removed.status_code == 303
        async with app.state.session_factory() as db:
            assert next(v for v in await queues.list_profiles(db) if v.profile.id == profile.id).user_ids == []


ROUTES: list[tuple[str, str, dict[str, Any]]] = [
    ("GET", "/routing/queues", {}),
    ("GET", "/routing/queues/new", {}),
    ("POST", "/routing/queues", {"code": "refused", "name": "x", "channel": "chat"}),
    ("GET", "/routing/queues/{id}", {}),
    ("POST", "/routing/queues/{id}", {"name": "x"}),
    ("POST", "/routing/queues/{id}/members/add", {}),
    ("POST", "/routing/queues/{id}/members/remove", {}),
    ("GET", "/routing/capacity", {}),
    ("POST", "/routing/capacity", {"name": "x"}),
    ("POST", "/routing/capacity/assignments", {}),
]


async def test_agents_and_customers_are_refused_and_names_are_escaped(app, make) -> None:
    queue = await make_queue(app, name=f"队列 {EVIL}", code=_code())
    team_id = await make.team(f"班组 {EVIL} {_code()}")
    agent, customer, supervisor = await make.user("agent"), await make.user("customer"), await make.user("supervisor")
    async with app.state.session_factory() as db, db.begin():
        await queues.add_members(db, principal_of(supervisor), queue.id, [agent.id])
        profile = await queues.create_profile(db, principal_of(supervisor), {"name": f"档位 {EVIL} {_code()}"})
        await queues.assign_profile(db, principal_of(supervisor), team_id=team_id, profile_id=profile.profile.id)
    async with signed_in_clients(app, {"agent": agent, "customer": customer, "s": supervisor}) as clients:
        for role in ("agent", "customer"):
            for method, path, data in ROUTES:
                url = path.replace("{id}", str(queue.id))
                response = await clients[role].request(method, url, data=data or None)
                assert response.status_code == 403, (role, method, url, response.status_code)
            assert 'href="/routing/queues"' not in (await clients[role].get("/")).text
        profile_page = await clients[role].post(f"/routing/capacity/{profile.profile.id}", data={"chat": "1"})
        assert profile_page.status_code == 403

        client = clients["s"]
        assert 'href="/routing/queues"' in (await client.get("/")).text
        for url in ("/routing/queues", f"/routing/queues/{queue.id}", "/routing/capacity"):
            html = (await client.get(url)).text
            assert EVIL not in html and EVIL_ESCAPED in html, url
        # The member list escapes names too, and a refused re-render escapes what was typed.
        refused = await client.post(f"/routing/queues/{queue.id}", data={"name": EVIL, "priority": "1000"})
        assert refused.status_code == 422 and EVIL not in refused.text and EVIL_ESCAPED in refused.text
    async with app.state.session_factory() as db:
        assert (await queues.get_queue(db, queue.id)).queue.priority == 0
