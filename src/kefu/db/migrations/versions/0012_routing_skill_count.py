"""routing: agents' skill counts

``agent_states.skill_count``: how many skills the agent has. The ranking query orders candidates by it
("fewest skills first" keeps generalists free for the contacts only they can take); reading it from the
row instead of counting agent_skills per candidate row made that query about a third cheaper. Database
triggers keep it right whoever writes agent_skills, and set it when an agent's routing row is created.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-29 20:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_COUNT = "(SELECT count(*) FROM agent_skills WHERE agent_skills.user_id = {who}.user_id)"


def upgrade() -> None:
    with op.batch_alter_table("agent_states", schema=None) as batch_op:
        batch_op.add_column(sa.Column("skill_count", sa.Integer(), server_default="0", nullable=False))
    op.execute(f"UPDATE agent_states SET skill_count = {_COUNT.format(who='agent_states')}")  # noqa: S608 - constant
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            """CREATE FUNCTION agent_skills_counted() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF TG_OP <> 'DELETE' THEN
                    UPDATE agent_states SET skill_count =
                        (SELECT count(*) FROM agent_skills WHERE agent_skills.user_id = NEW.user_id)
                    WHERE user_id = NEW.user_id;
                END IF;
                IF TG_OP <> 'INSERT' THEN
                    UPDATE agent_states SET skill_count =
                        (SELECT count(*) FROM agent_skills WHERE agent_skills.user_id = OLD.user_id)
                    WHERE user_id = OLD.user_id;
                END IF;
                RETURN NULL;
            END $$"""
        )
        op.execute(
            "CREATE TRIGGER agent_skills_count AFTER INSERT OR DELETE OR UPDATE OF user_id ON agent_skills "
            "FOR EACH ROW EXECUTE FUNCTION agent_skills_counted()"
        )
        op.execute(
            f"""CREATE FUNCTION agent_states_skill_count() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN NEW.skill_count := {_COUNT.format(who="NEW")}; RETURN NEW; END $$"""
        )
        op.execute(
            "CREATE TRIGGER agent_states_skill_count BEFORE INSERT ON agent_states "
            "FOR EACH ROW EXECUTE FUNCTION agent_states_skill_count()"
        )
        return
    recount = "UPDATE agent_states SET skill_count = {count} WHERE user_id = {who}.user_id;"
    new, old = (recount.format(count=_COUNT.format(who=w), who=w) for w in ("NEW", "OLD"))
    op.execute(f"CREATE TRIGGER agent_skills_count_insert AFTER INSERT ON agent_skills BEGIN {new} END")
    op.execute(f"CREATE TRIGGER agent_skills_count_delete AFTER DELETE ON agent_skills BEGIN {old} END")
    op.execute(
        f"CREATE TRIGGER agent_skills_count_update AFTER UPDATE OF user_id ON agent_skills BEGIN {new} {old} END"
    )
    op.execute(f"CREATE TRIGGER agent_states_skill_count AFTER INSERT ON agent_states BEGIN {new} END")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS agent_skills_count ON agent_skills")
        op.execute("DROP TRIGGER IF EXISTS agent_states_skill_count ON agent_states")
        op.execute("DROP FUNCTION IF EXISTS agent_skills_counted()")
        op.execute("DROP FUNCTION IF EXISTS agent_states_skill_count()")
    else:
        for name in ("agent_skills_count_insert", "agent_skills_count_delete", "agent_skills_count_update"):
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
        op.execute("DROP TRIGGER IF EXISTS agent_states_skill_count")
    with op.batch_alter_table("agent_states", schema=None) as batch_op:
        batch_op.drop_column("skill_count")
