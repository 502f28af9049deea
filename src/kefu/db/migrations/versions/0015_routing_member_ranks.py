"""routing: members ranked by skill

``routing_queue_members.rank_level`` and ``.proficiency_order``: where each agent stands in the queue by
skill (the first bullseye level at which the agent is eligible, and minus the summed proficiency on the
queue's skills), with an index on (queue, level, order). The ranking of a contact's candidates reads the
members best first and sorts only the first groups by load and idle time, instead of every member on
every arrival. The application keeps them (routing.service.refresh_member_ranks) when skills, memberships
or a queue's requirement change; this fills them for the memberships there are.

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-30 02:00:00
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

from kefu.routing import policy

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("routing_queue_members", schema=None) as batch_op:
        batch_op.add_column(sa.Column("rank_level", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("proficiency_order", sa.Integer(), server_default="0", nullable=False))
        batch_op.create_index(
            "ix_routing_queue_members_rank", ["queue_id", "rank_level", "proficiency_order"], unique=False
        )
    _fill(op.get_bind())


def _fill(bind: sa.engine.Connection) -> None:
    """The ranks of every membership, by the same rule the application uses (policy.QueueRule)."""
    needs: dict[int, list[policy.SkillNeed]] = {}
    for queue_id, skill_id, level in bind.execute(
        sa.text("SELECT queue_id, skill_id, min_proficiency FROM routing_queue_skills ORDER BY queue_id, skill_id")
    ):
        needs.setdefault(queue_id, []).append(policy.SkillNeed(skill_id, level))
    rules = {}
    for queue_id, bullseye in bind.execute(sa.text("SELECT id, bullseye FROM routing_queues")):
        steps = policy.bullseye_steps(_json(bullseye) or ())
        rules[queue_id] = policy.QueueRule(id=queue_id, skills=tuple(needs.get(queue_id, ())), bullseye=steps)
    skills: dict[int, dict[int, int]] = {}
    for user_id, skill_id, proficiency in bind.execute(
        sa.text("SELECT user_id, skill_id, proficiency FROM agent_skills")
    ):
        skills.setdefault(user_id, {})[skill_id] = proficiency
    ranks = []
    for queue_id, user_id in bind.execute(sa.text("SELECT queue_id, user_id FROM routing_queue_members")):
        level, order = rules[queue_id].member_rank(skills.get(user_id, {}))
        ranks.append({"queue_id": queue_id, "user_id": user_id, "level": level, "order": order})
    if ranks:
        bind.execute(
            sa.text(
                "UPDATE routing_queue_members SET rank_level = :level, proficiency_order = :order "
                "WHERE queue_id = :queue_id AND user_id = :user_id"
            ),
            ranks,
        )


def _json(value: object) -> object:
    # SQLite hands the JSON column back as text.
    return json.loads(value) if isinstance(value, str) else value


def downgrade() -> None:
    with op.batch_alter_table("routing_queue_members", schema=None) as batch_op:
        batch_op.drop_index("ix_routing_queue_members_rank")
        batch_op.drop_column("proficiency_order")
        batch_op.drop_column("rank_level")
