"""rumors: clarifications and their history, questions, review items, deliveries, pushes

Revision ID: 0003
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "rumor_kb_state",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_rumor_kb_state"),
    )
    op.execute("INSERT INTO rumor_kb_state (id, generation) VALUES (1, 0)")

    op.create_table(
        "rumor_clarifications",
        sa.Column("id", ID, nullable=False),
        sa.Column("claim", sa.String(length=300), nullable=False),
        sa.Column("verdict", sa.String(length=16), nullable=False),
        sa.Column("explanation", sa.Text(), nullable=False),
        sa.Column("source_name", sa.String(length=100), nullable=False),
        sa.Column("source_url", sa.String(length=500), nullable=False),
        sa.Column("region_id", ID, nullable=True),
        sa.Column("scope_path", sa.String(length=255), nullable=True),
        sa.Column("expires_at", sa.DateTime(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("published_at", sa.DateTime(), nullable=True),
        sa.Column("withdrawn_at", sa.DateTime(), nullable=True),
        sa.Column("created_by", ID, nullable=False),
        sa.Column("updated_by", ID, nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("kb_generation", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["region_id"], ["regions.id"], name="fk_rumor_clarifications_region_id_regions"
        ),
        sa.ForeignKeyConstraint(
            ["created_by"], ["people.id"], name="fk_rumor_clarifications_created_by_people"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_rumor_clarifications"),
    )
    op.create_index("ix_rumor_clarifications_region_id", "rumor_clarifications", ["region_id"])
    op.create_index(
        "ix_rumor_clarifications_status", "rumor_clarifications", ["status", "kb_generation"]
    )

    op.create_table(
        "rumor_clarification_history",
        sa.Column("id", ID, nullable=False),
        sa.Column("clarification_id", ID, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("claim", sa.String(length=300), nullable=False),
        sa.Column("verdict", sa.String(length=16), nullable=False),
        sa.Column("explanation", sa.Text(), nullable=False),
        sa.Column("source_name", sa.String(length=100), nullable=False),
        sa.Column("source_url", sa.String(length=500), nullable=False),
        sa.Column("region_id", ID, nullable=True),
        sa.Column("expires_at", sa.DateTime(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("edited_by", ID, nullable=False),
        sa.Column("replaced_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["clarification_id"],
            ["rumor_clarifications.id"],
            name="fk_rumor_clarification_history_clarification",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_rumor_clarification_history"),
        sa.UniqueConstraint(
            "clarification_id", "version", name="uq_rumor_clarification_history_version"
        ),
    )

    op.create_table(
        "rumor_review_items",
        sa.Column("id", ID, nullable=False),
        sa.Column("text", sa.String(length=500), nullable=False),
        sa.Column("sample", sa.String(length=500), nullable=False),
        sa.Column("ask_count", sa.Integer(), nullable=False),
        sa.Column("asker_count", sa.Integer(), nullable=False),
        sa.Column("first_asked_at", sa.DateTime(), nullable=False),
        sa.Column("last_asked_at", sa.DateTime(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("clarification_id", ID, nullable=True),
        sa.Column("resolved_by", ID, nullable=True),
        sa.Column("resolved_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["clarification_id"],
            ["rumor_clarifications.id"],
            name="fk_rumor_review_items_clarification_id_rumor_clarifications",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_rumor_review_items"),
    )
    op.create_index(
        "ix_rumor_review_items_status", "rumor_review_items", ["status", "last_asked_at"]
    )
    op.create_index(
        "ix_rumor_review_items_clarification_id", "rumor_review_items", ["clarification_id"]
    )

    op.create_table(
        "rumor_questions",
        sa.Column("id", ID, nullable=False),
        sa.Column("person_id", ID, nullable=False),
        sa.Column("region_id", ID, nullable=True),
        sa.Column("text", sa.String(length=500), nullable=False),
        sa.Column("raw_text", sa.String(length=2000), nullable=False),
        sa.Column("asked_at", sa.DateTime(), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("clarification_id", ID, nullable=True),
        sa.Column("review_item_id", ID, nullable=True),
        sa.Column("suggested", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(
            ["person_id"],
            ["people.id"],
            name="fk_rumor_questions_person_id_people",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["clarification_id"],
            ["rumor_clarifications.id"],
            name="fk_rumor_questions_clarification_id_rumor_clarifications",
        ),
        sa.ForeignKeyConstraint(
            ["review_item_id"],
            ["rumor_review_items.id"],
            name="fk_rumor_questions_review_item_id_rumor_review_items",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_rumor_questions"),
    )
    op.create_index("ix_rumor_questions_person_id", "rumor_questions", ["person_id"])
    op.create_index("ix_rumor_questions_asked_at", "rumor_questions", ["asked_at"])
    op.create_index("ix_rumor_questions_clarification_id", "rumor_questions", ["clarification_id"])
    op.create_index(
        "ix_rumor_questions_item_person", "rumor_questions", ["review_item_id", "person_id"]
    )

    op.create_table(
        "rumor_deliveries",
        sa.Column("id", ID, nullable=False),
        sa.Column("clarification_id", ID, nullable=False),
        sa.Column("person_id", ID, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("first_at", sa.DateTime(), nullable=False),
        sa.Column("last_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["clarification_id"],
            ["rumor_clarifications.id"],
            name="fk_rumor_deliveries_clarification_id_rumor_clarifications",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["person_id"],
            ["people.id"],
            name="fk_rumor_deliveries_person_id_people",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_rumor_deliveries"),
        sa.UniqueConstraint("clarification_id", "person_id", name="uq_rumor_deliveries_person"),
    )
    op.create_index(
        "ix_rumor_deliveries_version", "rumor_deliveries", ["clarification_id", "version"]
    )

    op.create_table(
        "rumor_pushes",
        sa.Column("id", ID, nullable=False),
        sa.Column("clarification_id", ID, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("notice_id", ID, nullable=False),
        sa.Column("audience", sa.JSON(), nullable=False),
        sa.Column("pushed_by", ID, nullable=False),
        sa.Column("pushed_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["clarification_id"],
            ["rumor_clarifications.id"],
            name="fk_rumor_pushes_clarification_id_rumor_clarifications",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_rumor_pushes"),
    )
    op.create_index("ix_rumor_pushes_clarification_id", "rumor_pushes", ["clarification_id"])


def downgrade() -> None:
    op.drop_index("ix_rumor_pushes_clarification_id", table_name="rumor_pushes")
    op.drop_table("rumor_pushes")
    op.drop_index("ix_rumor_deliveries_version", table_name="rumor_deliveries")
    op.drop_table("rumor_deliveries")
    for name in (
        "ix_rumor_questions_item_person",
        "ix_rumor_questions_clarification_id",
        "ix_rumor_questions_asked_at",
        "ix_rumor_questions_person_id",
    ):
        op.drop_index(name, table_name="rumor_questions")
    op.drop_table("rumor_questions")
    op.drop_index("ix_rumor_review_items_clarification_id", table_name="rumor_review_items")
    op.drop_index("ix_rumor_review_items_status", table_name="rumor_review_items")
    op.drop_table("rumor_review_items")
    op.drop_table("rumor_clarification_history")
    op.drop_index("ix_rumor_clarifications_status", table_name="rumor_clarifications")
    op.drop_index("ix_rumor_clarifications_region_id", table_name="rumor_clarifications")
    op.drop_table("rumor_clarifications")
    op.drop_table("rumor_kb_state")
