"""The live view page (/routing/live and its panel) and the desk's routing status, as a browser gets them
(httpx against the app): supervisors see queues, waiting contacts and agents, with what users typed
escaped; agents and customers are refused; the desk shows an agent their status and the choices."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from tests.routing.routing_support import clock, contact, make_agent, make_queue, set_presence

from conftest import signed_in_clients

EVIL = '<script>alert("q")</script>&'


@asynccontextmanager
async def signed_in(app, user) -> AsyncIterator[httpx.AsyncClient]:  # noqa: ANN001
    async with signed_in_clients(app, {"user": user}) as clients:
        yield clients["user"]


async def test_supervisor_sees_queues_contacts_and_agents_escaped(app, make) -> None:
    t = clock()
    queue = await make_queue(app, name=f"投诉 {EVIL}", channel="phone")
    other = await make_queue(app, name="备用 voice", channel="phone")
    chat = await make_queue(app, name="在线 chat", channel="chat")
    agent = await make_agent(app, make, queues=(queue.id, other.id))
    await set_presence(app, agent, "break", t.now, reason="meal")
    waiting = await contact(app, queue, t.advance(5))
    supervisor = await make.user("supervisor")
    async with signed_in(app, supervisor) as client:
        page = await client.get("/routing/live")
        assert page.status_code == 200, page.text
        html = page.text
        assert EVIL not in html and "&lt;script&gt;alert(&#34;q&#34;)&lt;/script&gt;&amp;" in html
        assert '<script src="/static/js/routing-live.js" defer></script>' in html
        assert 'href="/routing/live"' in html  # the navigation entry
        row = re.search(rf'<tr data-queue-id="{queue.id}">.*?</tr>', html, re.S)
        assert row and 'data-waiting="1"' in row.group(0)
        contact_row = re.search(rf'<tr data-interaction-id="{waiting}">.*?</tr>', html, re.S)
        assert contact_row is not None
        # A contact moves only to another queue of its channel class.
        assert f'<option value="{other.id}">' in contact_row.group(0)
        assert f'<option value="{chat.id}">' not in contact_row.group(0)
        agent_row = re.search(rf'<tr data-user-id="{agent.id}" data-presence="break">.*?</tr>', html, re.S)
        assert agent_row is not None and 'class="rp rp-break"' in agent_row.group(0)
        assert re.search(r'<span class="rp-reason">(用餐|Meal)</span>', agent_row.group(0))
        assert re.search(r'data-seconds="\d+"', agent_row.group(0))

        panel = await client.get("/routing/live/panel")
        assert panel.status_code == 200
        assert panel.text.lstrip().startswith('<div id="rl-panel"') and "<html" not in panel.text
        assert EVIL not in panel.text


async def test_agents_and_customers_are_refused_and_see_no_navigation_entry(app, make) -> None:
    for role in ("agent", "customer"):
        user = await make.user(role)
        async with signed_in(app, user) as client:
            for path in ("/routing/live", "/routing/live/panel"):
                assert (await client.get(path)).status_code == 403, (role, path)
            home = await client.get("/")
            assert 'href="/routing/live"' not in home.text
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as anonymous:
        assert (await anonymous.get("/routing/live")).status_code != 200


async def test_desk_shows_the_agents_status_and_choices(app, make) -> None:
    t = clock()
    queue = await make_queue(app)
    agent = await make_agent(app, make, queues=(queue.id,))
    async with signed_in(app, agent) as client:
        html = (await client.get("/desk")).text
        assert 'id="desk-presence"' in html and 'data-presence="offline"' in html
        assert 'id="desk-offers"' in html
        for presence in ("available", "break", "training", "offline"):
            assert f'data-set-presence="{presence}"' in html
        assert re.search(r'<option value="meal"', html) and '<option value="missed_offers"' not in html
        assert re.search(r'id="desk-end-acw"[^>]*hidden', html)  # only in after-contact work
        await set_presence(app, agent, "break", t.now, reason="meeting")
        html = (await client.get("/desk")).text
        assert 'data-presence="break" data-reason="meeting"' in html
        assert re.search(r'id="desk-presence-clock"[^>]*data-seconds="\d+"', html)
