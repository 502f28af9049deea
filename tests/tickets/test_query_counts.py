"""No page grows its SQL with what it shows: the work-order list and page, the customer 360 page, the
desk and the list APIs run the same number of queries for a small and a large world (N+1 guard)."""

from __future__ import annotations

import httpx
from wo_support import principal_with_teams

from conftest import QueryCounter, login, unique
from kefu.customers.service import NewIdentity, create_customer
from kefu.interactions import service as interactions
from kefu.tickets import service as tickets
from kefu.tickets.schemas import WorkOrderCreate


async def _world(app, make, size: int) -> dict[str, int]:  # noqa: ANN001
    """A team with its agent, a customer with ``size`` work orders (each with ``size`` replies and notes
    by different agents, tags) and ``size`` interactions (with reasons, on work orders)."""
    team = await make.team()
    agents = [await make.user("agent", team_ids=(team,)) for _ in range(max(2, size // 3))]
    desk_agent = agents[0]
    async with app.state.session_factory() as db, db.begin():
        boss = principal_with_teams(await make.user("admin"))
        reason = await interactions.create_reason(db, boss, code=unique("qc"), name="计数原因")
        customer = await create_customer(
            db, boss, display_name=unique("计数客户"), identities=[NewIdentity("email", f"{unique()}@qc.test")]
        )
        tag = unique("qc")
        first_work_order = 0
        for n in range(size):
            author = principal_with_teams(agents[n % len(agents)])
            work_order = await tickets.create_work_order(
                db,
                author,
                WorkOrderCreate(
                    title=f"计数工单 {n}",
                    customer_id=customer.id,
                    team_id=team,
                    assignee_id=agents[n % len(agents)].id,
                    tags=[tag, f"t{n}"],
                ),
            )
            first_work_order = first_work_order or work_order.id
            for m in range(size):
                writer = principal_with_teams(agents[m % len(agents)])
                await tickets.add_comment(db, writer, first_work_order, f"回复 {n}-{m}", internal=m % 2 == 0)
            view, _ = await interactions.create_interaction(
                db,
                author,
                interactions.NewInteraction(
                    channel=("phone", "chat", "email")[n % 3],
                    customer_id=customer.id,
                    agent_id=desk_agent.id,
                    work_order_id=work_order.id,
                    subject=f"来电 {n}",
                ),
            )
            await interactions.update_wrap_up(db, author, view.interaction.id, {"contact_reason_id": reason.reason.id})
    return {
        "team": team,
        "customer": customer.id,
        "work_order": first_work_order,
        "agent": desk_agent,  # type: ignore[dict-item]
        "tag": tag,  # type: ignore[dict-item]
    }


async def _counts(app, world) -> dict[str, int]:  # noqa: ANN001
    pages = {
        "work-order list page": f"/work-orders?view=team&tag={world['tag']}",
        "work-order page": f"/work-orders/{world['work_order']}",
        "customer 360 page": f"/customers/{world['customer']}",
        "desk": "/desk",
        "work-order list API": f"/api/v1/work-orders?tag={world['tag']}",
        "interaction list API": f"/api/v1/interactions?customer_id={world['customer']}",
    }
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50003))
    counts = {}
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        await login(client, world["agent"])
        for name, path in pages.items():
            await client.get(path)  # once to warm caches that are per process, not per page
            with QueryCounter(app) as queries:
                response = await client.get(path, headers={"accept": "text/html"})
            assert response.status_code == 200, (name, response.text[:300])
            counts[name] = queries.count
    return counts


async def test_pages_run_a_fixed_number_of_queries(app, make) -> None:  # noqa: ANN001
    small = await _counts(app, await _world(app, make, 2))
    large = await _counts(app, await _world(app, make, 12))
    assert all(count > 0 for count in small.values()), small
    assert small == large, {"small": small, "large": large}
