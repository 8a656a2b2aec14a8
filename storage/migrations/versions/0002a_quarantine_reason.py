"""quarantines: a reason, and at most one open period per person

Revision ID: 0002a
Revises: 0001
Depends on: 0002 (the table it changes)
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002a"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = "0002"

ACTIVE = "status = 'active'"


def upgrade() -> None:
    with op.batch_alter_table("checkin_quarantines") as batch:
        batch.add_column(sa.Column("reason", sa.String(length=200), nullable=True))
    op.create_index(
        "uq_checkin_quarantines_open",
        "checkin_quarantines",
        ["person_id"],
        unique=True,
        sqlite_where=sa.text(ACTIVE),
        postgresql_where=sa.text(ACTIVE),
    )


def downgrade() -> None:
    op.drop_index("uq_checkin_quarantines_open", table_name="checkin_quarantines")
    with op.batch_alter_table("checkin_quarantines") as batch:
        batch.drop_column("reason")
