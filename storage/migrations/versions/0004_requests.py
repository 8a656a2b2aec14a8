"""residents' requests: requests, request_events, request_counters

Revision ID: 0004
Revises: 0001
Create Date: 2026-11-28 23:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _id() -> sa.types.TypeEngine:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "requests",
        sa.Column("id", _id(), nullable=False),
        sa.Column("number", sa.String(length=32), nullable=False),
        sa.Column("resident_id", _id(), nullable=False),
        sa.Column("region_id", _id(), nullable=False),
        sa.Column("community_id", _id(), nullable=True),
        sa.Column("street_id", _id(), nullable=True),
        sa.Column("district_id", _id(), nullable=True),
        sa.Column("city_id", _id(), nullable=True),
        sa.Column("category", sa.String(length=16), nullable=False),
        sa.Column("urgency", sa.String(length=16), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("items", sa.String(length=200), nullable=True),
        sa.Column("quantity", sa.String(length=100), nullable=True),
        sa.Column("attachments", sa.JSON(), nullable=False),
        sa.Column("channel", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("level", sa.String(length=16), nullable=False),
        sa.Column("handler_id", _id(), nullable=True),
        sa.Column("volunteer_id", _id(), nullable=True),
        sa.Column("volunteer_status", sa.String(length=16), nullable=True),
        sa.Column("accept_due_at", sa.DateTime(), nullable=False),
        sa.Column("resolve_due_at", sa.DateTime(), nullable=False),
        sa.Column("sla_due_at", sa.DateTime(), nullable=True),
        sa.Column("escalate_at", sa.DateTime(), nullable=True),
        sa.Column("escalations", sa.Integer(), nullable=False),
        sa.Column("reopen_count", sa.Integer(), nullable=False),
        sa.Column("reply", sa.Text(), nullable=True),
        sa.Column("satisfied", sa.Boolean(), nullable=True),
        sa.Column("rating", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("accepted_at", sa.DateTime(), nullable=True),
        sa.Column("resolved_at", sa.DateTime(), nullable=True),
        sa.Column("closed_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["resident_id"], ["people.id"], name=op.f("fk_requests_resident_id_people")
        ),
        sa.ForeignKeyConstraint(
            ["region_id"], ["regions.id"], name=op.f("fk_requests_region_id_regions")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_requests")),
        sa.UniqueConstraint("number", name=op.f("uq_requests_number")),
    )
    with op.batch_alter_table("requests", schema=None) as batch_op:
        for name, columns in (
            ("ix_requests_community_sla", ["community_id", "sla_due_at"]),
            ("ix_requests_street_sla", ["street_id", "sla_due_at"]),
            ("ix_requests_district_sla", ["district_id", "sla_due_at"]),
            ("ix_requests_handler", ["handler_id", "status"]),
            ("ix_requests_resident", ["resident_id", "id"]),
        ):
            batch_op.create_index(name, columns, unique=False)
        for name, columns, where in (
            ("ix_requests_escalate_at", ["escalate_at"], "escalate_at IS NOT NULL"),
            (
                "ix_requests_volunteer",
                ["volunteer_id", "volunteer_status"],
                "volunteer_id IS NOT NULL",
            ),
            ("ix_requests_resolved", ["resolved_at"], "status = 'resolved'"),
        ):
            batch_op.create_index(
                name,
                columns,
                unique=False,
                postgresql_where=sa.text(where),
                sqlite_where=sa.text(where),
            )

    op.create_table(
        "request_events",
        sa.Column("id", _id(), nullable=False),
        sa.Column("request_id", _id(), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("actor_id", _id(), nullable=True),
        sa.Column("person_id", _id(), nullable=True),
        sa.Column("level", sa.String(length=16), nullable=True),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["requests.id"],
            name=op.f("fk_request_events_request_id_requests"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_request_events")),
    )
    with op.batch_alter_table("request_events", schema=None) as batch_op:
        batch_op.create_index("ix_request_events_request", ["request_id", "id"], unique=False)

    op.create_table(
        "request_counters",
        sa.Column("day", sa.String(length=8), nullable=False),
        sa.Column("last", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("day", name=op.f("pk_request_counters")),
    )


def downgrade() -> None:
    op.drop_table("request_counters")
    with op.batch_alter_table("request_events", schema=None) as batch_op:
        batch_op.drop_index("ix_request_events_request")
    op.drop_table("request_events")
    with op.batch_alter_table("requests", schema=None) as batch_op:
        for name in (
            "ix_requests_resolved",
            "ix_requests_resident",
            "ix_requests_volunteer",
            "ix_requests_handler",
            "ix_requests_escalate_at",
            "ix_requests_district_sla",
            "ix_requests_street_sla",
            "ix_requests_community_sla",
        ):
            batch_op.drop_index(name)
    op.drop_table("requests")
