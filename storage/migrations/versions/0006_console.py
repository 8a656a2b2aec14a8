"""web console: staff passwords and login attempts

Revision ID: 0006_console
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_console"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "console_credentials",
        sa.Column("person_id", ID, nullable=False, autoincrement=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["person_id"],
            ["people.id"],
            name="fk_console_credentials_person_id_people",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("person_id", name="pk_console_credentials"),
    )
    op.create_table(
        "console_login_attempts",
        sa.Column("id", ID, nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("account", sa.String(length=64), nullable=False),
        sa.Column("address", sa.String(length=64), nullable=False),
        sa.Column("succeeded", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_console_login_attempts"),
    )
    op.create_index("ix_console_login_attempts_at", "console_login_attempts", ["at"], unique=False)
    op.create_index(
        "ix_console_login_attempts_account", "console_login_attempts", ["account", "at"]
    )
    op.create_index(
        "ix_console_login_attempts_address", "console_login_attempts", ["address", "at"]
    )


def downgrade() -> None:
    op.drop_table("console_login_attempts")
    op.drop_table("console_credentials")
