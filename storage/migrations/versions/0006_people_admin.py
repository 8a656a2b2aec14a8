"""people and regions: grid QR codes, staged roster uploads

Revision ID: 0006_people
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_people"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "grid_qr_codes",
        sa.Column("region_id", ID, nullable=False),
        sa.Column("scene", sa.String(length=64), nullable=False),
        sa.Column("ticket", sa.String(length=255), nullable=True),
        sa.Column("url", sa.String(length=255), nullable=True),
        sa.Column("claimed_until", sa.DateTime(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=True),
        sa.Column("created_by", ID, nullable=True),
        sa.ForeignKeyConstraint(
            ["region_id"],
            ["regions.id"],
            name="fk_grid_qr_codes_region_id_regions",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("region_id", name="pk_grid_qr_codes"),
    )
    op.create_table(
        "roster_uploads",
        sa.Column("id", ID, nullable=False),
        sa.Column("person_id", ID, nullable=False),
        sa.Column("filename", sa.String(length=255), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["person_id"],
            ["people.id"],
            name="fk_roster_uploads_person_id_people",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_roster_uploads"),
    )
    op.create_index("ix_roster_uploads_person_id", "roster_uploads", ["person_id"])
    op.create_index("ix_roster_uploads_created_at", "roster_uploads", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_roster_uploads_created_at", table_name="roster_uploads")
    op.drop_index("ix_roster_uploads_person_id", table_name="roster_uploads")
    op.drop_table("roster_uploads")
    op.drop_table("grid_qr_codes")
