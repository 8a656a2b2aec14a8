"""residents' requests: escalation clocks in a narrow table of their own

Moves ``level``, ``handler_id``, ``escalate_at`` and ``escalations`` from ``requests`` to
``request_clocks`` (one row per request, with the stage of the deadline that runs), so that
the deadline sweep rewrites a short row with three index entries instead of the wide request
row and all its indexes.  Existing requests get their clocks from the columns they had.  The
per-row foreign key check on ``request_events.request_id`` goes (it cost as much as the rest
of an escalation).  ``request_sweep_state`` remembers up to which timeline event handlers were
alerted (escalations already in the timeline were alerted when they happened).

Revision ID: 0006_request_clocks
Revises: 0001
Depends on: 0004
Branch label: request_clocks (downgrade alone: ``request_clocks@-1``)
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_request_clocks"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = ("request_clocks",)
depends_on: str | Sequence[str] | None = "0004"

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
DUE = "escalate_at IS NOT NULL"
OPEN = "stage IS NOT NULL"
EVENTS_FK = "fk_request_events_request_id_requests"


def upgrade() -> None:
    op.create_table(
        "request_clocks",
        sa.Column("request_id", ID, autoincrement=False, nullable=False),
        sa.Column("level", sa.String(length=16), nullable=False),
        sa.Column("handler_id", ID, nullable=True),
        sa.Column("stage", sa.String(length=8), nullable=True),
        sa.Column("escalate_at", sa.DateTime(), nullable=True),
        sa.Column("escalations", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["requests.id"],
            name=op.f("fk_request_clocks_request_id_requests"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("request_id", name=op.f("pk_request_clocks")),
    )
    # Only an open request has a running clock; one that was resolved or closed keeps its
    # level and handler (its history) with the clock stopped.
    op.execute(
        """
        INSERT INTO request_clocks (request_id, level, handler_id, stage, escalate_at,
                                    escalations)
        SELECT id, level, handler_id,
               CASE status WHEN 'pending' THEN 'accept' WHEN 'accepted' THEN 'resolve' END,
               CASE WHEN status IN ('pending', 'accepted') THEN escalate_at END,
               escalations
        FROM requests
        """
    )
    with op.batch_alter_table("request_clocks", schema=None) as batch_op:
        batch_op.create_index(
            "ix_request_clocks_due",
            ["escalate_at"],
            unique=False,
            postgresql_where=sa.text(DUE),
            sqlite_where=sa.text(DUE),
        )
        batch_op.create_index(
            "ix_request_clocks_handler",
            ["handler_id"],
            unique=False,
            postgresql_where=sa.text(OPEN),
            sqlite_where=sa.text(OPEN),
        )
    op.create_table(
        "request_sweep_state",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("alerted_event_id", ID, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_request_sweep_state")),
    )
    op.execute(
        "INSERT INTO request_sweep_state (id, alerted_event_id) "
        "SELECT 1, COALESCE(MAX(id), 0) FROM request_events"
    )
    with op.batch_alter_table("requests", schema=None) as batch_op:
        batch_op.drop_index("ix_requests_escalate_at")
        batch_op.drop_index("ix_requests_handler")
        for column in ("escalations", "escalate_at", "handler_id", "level"):
            batch_op.drop_column(column)
    with op.batch_alter_table("request_events", schema=None) as batch_op:
        batch_op.drop_constraint(EVENTS_FK, type_="foreignkey")


def downgrade() -> None:
    with op.batch_alter_table("request_events", schema=None) as batch_op:
        batch_op.create_foreign_key(
            EVENTS_FK, "requests", ["request_id"], ["id"], ondelete="CASCADE"
        )
    with op.batch_alter_table("requests", schema=None) as batch_op:
        batch_op.add_column(sa.Column("level", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("handler_id", ID, nullable=True))
        batch_op.add_column(sa.Column("escalate_at", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("escalations", sa.Integer(), nullable=True))
    op.execute(
        """
        UPDATE requests SET
            level = (SELECT c.level FROM request_clocks c WHERE c.request_id = requests.id),
            handler_id = (SELECT c.handler_id FROM request_clocks c
                          WHERE c.request_id = requests.id),
            escalate_at = (SELECT c.escalate_at FROM request_clocks c
                           WHERE c.request_id = requests.id),
            escalations = (SELECT c.escalations FROM request_clocks c
                           WHERE c.request_id = requests.id)
        """
    )
    with op.batch_alter_table("requests", schema=None) as batch_op:
        batch_op.alter_column("level", existing_type=sa.String(length=16), nullable=False)
        batch_op.alter_column("escalations", existing_type=sa.Integer(), nullable=False)
        batch_op.create_index("ix_requests_handler", ["handler_id", "status"], unique=False)
        batch_op.create_index(
            "ix_requests_escalate_at",
            ["escalate_at"],
            unique=False,
            postgresql_where=sa.text(DUE),
            sqlite_where=sa.text(DUE),
        )
    with op.batch_alter_table("request_clocks", schema=None) as batch_op:
        batch_op.drop_index("ix_request_clocks_handler")
        batch_op.drop_index("ix_request_clocks_due")
    op.drop_table("request_clocks")
    op.drop_table("request_sweep_state")
