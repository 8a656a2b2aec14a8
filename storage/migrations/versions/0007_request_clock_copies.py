"""residents' requests: the clock keeps copies of what the deadline sweep needs

``request_clocks`` gets ``category``, ``urgency`` and ``place_id`` (the lowest of the
request's community, street, district and city), copied from ``requests``, so that a page of
the sweep reads only clock rows: the escalation window comes from the category and urgency,
and the chain of people above comes from one request per place instead of one per escalation.

Revision ID: 0007_request_clock_copies
Revises: 0006_request_clocks
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_request_clock_copies"
down_revision: str | None = "0006_request_clocks"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("request_clocks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("category", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("urgency", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("place_id", ID, nullable=True))
    op.execute(
        """
        UPDATE request_clocks SET
            category = (SELECT r.category FROM requests r WHERE r.id = request_clocks.request_id),
            urgency = (SELECT r.urgency FROM requests r WHERE r.id = request_clocks.request_id),
            place_id = (SELECT COALESCE(r.community_id, r.street_id, r.district_id, r.city_id)
                        FROM requests r WHERE r.id = request_clocks.request_id)
        """
    )
    with op.batch_alter_table("request_clocks", schema=None) as batch_op:
        batch_op.alter_column("category", existing_type=sa.String(length=16), nullable=False)
        batch_op.alter_column("urgency", existing_type=sa.String(length=16), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("request_clocks", schema=None) as batch_op:
        batch_op.drop_column("place_id")
        batch_op.drop_column("urgency")
        batch_op.drop_column("category")
