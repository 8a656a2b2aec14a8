"""notices: notices, acknowledgements, outbox indexes for receipts

Revision ID: 0005
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
HAS_GROUP = "group_id IS NOT NULL"
NOTICE_TARGET = "ref_type = 'notice'"


def upgrade() -> None:
    op.create_table(
        "notices",
        sa.Column("id", ID, nullable=False),
        sa.Column("code", sa.String(length=8), nullable=False),
        sa.Column("sender_id", ID, nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("audience", sa.JSON(), nullable=False),
        sa.Column("scope_path", sa.String(length=255), nullable=False),
        sa.Column("ack_required", sa.Boolean(), nullable=False),
        sa.Column("urgent", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("send_at", sa.DateTime(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("queued_at", sa.DateTime(), nullable=True),
        sa.Column("cancelled_at", sa.DateTime(), nullable=True),
        sa.Column("rendered", sa.Text(), nullable=True),
        sa.Column("queue_cursor", ID, nullable=False),
        sa.Column("groups_queued", sa.Boolean(), nullable=False),
        sa.Column("lease_until", sa.DateTime(), nullable=True),
        sa.Column("resend_count", sa.Integer(), nullable=False),
        sa.Column("last_resent_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["sender_id"], ["people.id"], name="fk_notices_sender_id_people"),
        sa.PrimaryKeyConstraint("id", name="pk_notices"),
        sa.UniqueConstraint("code", name="uq_notices_code"),
    )
    op.create_index("ix_notices_due", "notices", ["status", "send_at"])
    op.create_index("ix_notices_sender_id", "notices", ["sender_id"])
    op.create_index("ix_notices_scope_path", "notices", ["scope_path"])

    op.create_table(
        "notice_acks",
        sa.Column("id", ID, nullable=False),
        sa.Column("notice_id", ID, nullable=False),
        sa.Column("person_id", ID, nullable=True),
        sa.Column("group_id", ID, nullable=True),
        sa.Column("member_person_id", ID, nullable=True),
        sa.Column("member", sa.String(length=128), nullable=False),
        sa.Column("via", sa.String(length=16), nullable=False),
        sa.Column("acked_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["notice_id"],
            ["notices.id"],
            name="fk_notice_acks_notice_id_notices",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_notice_acks"),
        sa.UniqueConstraint("notice_id", "person_id", name="uq_notice_acks_person"),
        sa.UniqueConstraint("notice_id", "group_id", name="uq_notice_acks_group"),
    )

    op.create_index(
        "ix_outbox_notice_ref",
        "outbox",
        ["ref_id"],
        sqlite_where=sa.text(NOTICE_TARGET),
        postgresql_where=sa.text(NOTICE_TARGET),
    )
    op.create_index(
        "ix_outbox_notice_group",
        "outbox",
        ["group_id", "ref_type"],
        sqlite_where=sa.text(HAS_GROUP),
        postgresql_where=sa.text(HAS_GROUP),
    )


def downgrade() -> None:
    op.drop_index("ix_outbox_notice_group", table_name="outbox")
    op.drop_index("ix_outbox_notice_ref", table_name="outbox")
    op.drop_table("notice_acks")
    op.drop_index("ix_notices_scope_path", table_name="notices")
    op.drop_index("ix_notices_sender_id", table_name="notices")
    op.drop_index("ix_notices_due", table_name="notices")
    op.drop_table("notices")
