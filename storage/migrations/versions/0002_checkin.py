"""daily health check-in: records, alerts, quarantines, runs

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
CURRENT = "replaced_at IS NULL"


def upgrade() -> None:
    op.create_table(
        "checkin_records",
        sa.Column("id", ID, nullable=False),
        sa.Column("person_id", ID, nullable=False),
        sa.Column("reporter_id", ID, nullable=True),
        sa.Column("region_id", ID, nullable=True),
        sa.Column("household_id", ID, nullable=True),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("slot", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("risk", sa.String(length=16), nullable=False),
        sa.Column("reasons", sa.JSON(), nullable=False),
        sa.Column("answers", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("replaced_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["person_id"],
            ["people.id"],
            name="fk_checkin_records_person_id_people",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["reporter_id"],
            ["people.id"],
            name="fk_checkin_records_reporter_id_people",
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_checkin_records"),
    )
    op.create_index("ix_checkin_records_person_day", "checkin_records", ["person_id", "day"])
    op.create_index("ix_checkin_records_region_day", "checkin_records", ["region_id", "day"])
    op.create_index("ix_checkin_records_created_at", "checkin_records", ["created_at"])
    op.create_index(
        "uq_checkin_records_current",
        "checkin_records",
        ["person_id", "day", "slot"],
        unique=True,
        sqlite_where=sa.text(CURRENT),
        postgresql_where=sa.text(CURRENT),
    )

    op.create_table(
        "checkin_alerts",
        sa.Column("id", ID, nullable=False),
        sa.Column("record_id", ID, nullable=False),
        sa.Column("person_id", ID, nullable=False),
        sa.Column("region_id", ID, nullable=True),
        sa.Column("level", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("escalation_level", sa.Integer(), nullable=False),
        sa.Column("next_escalation_at", sa.DateTime(), nullable=True),
        sa.Column("acknowledged_by", ID, nullable=True),
        sa.Column("acknowledged_at", sa.DateTime(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["record_id"],
            ["checkin_records.id"],
            name="fk_checkin_alerts_record_id_checkin_records",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["person_id"],
            ["people.id"],
            name="fk_checkin_alerts_person_id_people",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_checkin_alerts"),
    )
    op.create_index("ix_checkin_alerts_due", "checkin_alerts", ["status", "next_escalation_at"])
    op.create_index("ix_checkin_alerts_record_id", "checkin_alerts", ["record_id"])
    op.create_index("ix_checkin_alerts_region_id", "checkin_alerts", ["region_id"])

    op.create_table(
        "checkin_quarantines",
        sa.Column("id", ID, nullable=False),
        sa.Column("person_id", ID, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("start_day", sa.Date(), nullable=False),
        sa.Column("end_day", sa.Date(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_by", ID, nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("closed_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["person_id"],
            ["people.id"],
            name="fk_checkin_quarantines_person_id_people",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_checkin_quarantines"),
    )
    op.create_index("ix_checkin_quarantines_person_id", "checkin_quarantines", ["person_id"])
    op.create_index("ix_checkin_quarantines_status", "checkin_quarantines", ["status", "end_day"])

    op.create_table(
        "checkin_runs",
        sa.Column("id", ID, nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_checkin_runs"),
        sa.UniqueConstraint("key", name="uq_checkin_runs_key"),
    )
    op.create_index("ix_checkin_runs_day", "checkin_runs", ["day"])


def downgrade() -> None:
    op.drop_table("checkin_runs")
    op.drop_table("checkin_quarantines")
    op.drop_table("checkin_alerts")
    op.drop_table("checkin_records")
