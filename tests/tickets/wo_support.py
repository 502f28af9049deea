"""Helpers shared by the work-order tests: a small world of two teams, and quick creators."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import httpx

from conftest import Factory
from kefu.core.policy import Principal
from kefu.customers.models import Customer
from kefu.identity.models import User

_seq = itertools.count(1)


def principal_with_teams(user: User) -> Principal:
    """A principal as a signed-in session has it, teams included."""
    return Principal(
        user_id=user.id,
        username=user.username,
        display_name=user.display_name,
        roles=user.role_names,
        team_ids=user.team_ids,
        via="session",
    )


async def make_customer(app: Any, name: str = "张三") -> int:
    async with app.state.session_factory() as db, db.begin():
        customer = Customer(display_name=name)
        db.add(customer)
        await db.flush()
        return customer.id


@dataclass
class TwoTeams:
    team_a: int
    team_b: int
    agent_a: User
    agent_b: User
    supervisor: User
    admin: User
    customer_id: int


async def two_teams(app: Any, make: Factory) -> TwoTeams:
    team_a, team_b = await make.team(), await make.team()
    return TwoTeams(
        team_a=team_a,
        team_b=team_b,
        agent_a=await make.user("agent", team_ids=(team_a,)),
        agent_b=await make.user("agent", team_ids=(team_b,)),
        supervisor=await make.user("supervisor"),
        admin=await make.user("admin"),
        customer_id=await make_customer(app, f"客户{next(_seq)}"),
    )


async def create(client: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    body = {"title": f"工单 {next(_seq)}", **fields}
    response = await client.post("/api/v1/work-orders", json=body)
    assert response.status_code == 201, response.text
    return response.json()
