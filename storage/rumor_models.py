"""Tables of rumor clarification: the knowledge base, its history, questions, review, deliveries.

* ``rumor_clarifications``: a verified statement about a claim.  ``version`` counts edits made
  after it was first published; each such edit first copies the replaced content into
  ``rumor_clarification_history``.  ``kb_generation`` is the knowledge-base generation of the
  row's last change (see ``rumor_kb_state``).
* ``rumor_kb_state``: one row whose ``generation`` every change of a clarification increments
  in the same transaction.  Processes keep an in-memory match index of the published
  clarifications and compare one primary-key read of this number before each query; because the
  increment takes the row's lock, a reader that sees generation ``g`` also sees every change
  numbered ``g`` or less, whatever order the writers committed in (which a ``max(updated_at)``
  check cannot promise).
* ``rumor_questions``: what residents asked (normalized and raw text, both capped), where they
  lived then, and what it led to (a clarification, or a review item).
* ``rumor_review_items``: near-identical unanswered questions grouped, with counts, until a
  reviewer attaches the item to a clarification or dismisses it.
* ``rumor_deliveries``: which version of a clarification each person has received, so that
  notify-on-publish reaches a person once and a correction reaches every earlier recipient.
* ``rumor_pushes``: a clarification pushed to regions as a notice (``notice_id`` is the
  notices feature's row; no foreign key, the two features migrate in parallel branches).
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.sql.naming import conv

from storage.models import Base, BigId, utcnow

MAX_CLAIM = 300
MAX_EXPLANATION = 4000
MAX_SOURCE_NAME = 100
MAX_SOURCE_URL = 500
MAX_QUESTION_TEXT = 500
MAX_QUESTION_RAW = 2000


class Verdict(enum.StrEnum):
    FALSE = "false"
    MISLEADING = "misleading"
    TRUE = "true"
    UNVERIFIED = "unverified"


class ClarificationStatus(enum.StrEnum):
    DRAFT = "draft"
    PUBLISHED = "published"
    WITHDRAWN = "withdrawn"


class ReviewStatus(enum.StrEnum):
    PENDING = "pending"
    ATTACHED = "attached"
    DISMISSED = "dismissed"


class QuestionOutcome(enum.StrEnum):
    ANSWER = "answer"  # answered outright
    SUGGEST = "suggest"  # shown numbered suggestions (not chosen yet)
    CHOSEN = "chosen"  # picked one of the suggestions
    UNKNOWN = "unknown"  # queued for review


class DeliveryKind(enum.StrEnum):
    ANSWER = "answer"  # the answer in chat
    NOTIFY = "notify"  # told after the clarification was published or attached
    UPDATE = "update"  # a correction of a version received earlier
    WITHDRAWN = "withdrawn"  # told it was withdrawn (owed it again if it is published again)


class RumorKbState(Base):
    __tablename__ = "rumor_kb_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    generation: Mapped[int] = mapped_column(BigInteger, default=0)


class Clarification(Base):
    __tablename__ = "rumor_clarifications"
    __table_args__ = (Index("ix_rumor_clarifications_status", "status", "kb_generation"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    claim: Mapped[str] = mapped_column(String(MAX_CLAIM))
    verdict: Mapped[str] = mapped_column(String(16))
    explanation: Mapped[str] = mapped_column(Text)
    source_name: Mapped[str] = mapped_column(String(MAX_SOURCE_NAME))
    source_url: Mapped[str] = mapped_column(String(MAX_SOURCE_URL), default="")
    region_id: Mapped[int | None] = mapped_column(ForeignKey("regions.id"), index=True)
    """Only people living in this region's subtree are answered; ``None``: everyone."""
    scope_path: Mapped[str | None] = mapped_column(String(255))
    """The region's path (denormalized for matching and scope checks)."""
    expires_at: Mapped[datetime | None]
    status: Mapped[str] = mapped_column(String(16), default=ClarificationStatus.DRAFT)
    version: Mapped[int] = mapped_column(Integer, default=1)
    published_at: Mapped[datetime | None]
    withdrawn_at: Mapped[datetime | None]
    created_by: Mapped[int] = mapped_column(ForeignKey("people.id"))
    updated_by: Mapped[int] = mapped_column(BigId)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    kb_generation: Mapped[int] = mapped_column(BigInteger, default=0)


class ClarificationHistory(Base):
    """The content a clarification had at ``version``, kept when an edit replaced it."""

    __tablename__ = "rumor_clarification_history"
    __table_args__ = (
        UniqueConstraint(
            "clarification_id", "version", name=conv("uq_rumor_clarification_history_version")
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    clarification_id: Mapped[int] = mapped_column(
        ForeignKey(
            "rumor_clarifications.id",
            ondelete="CASCADE",
            name=conv("fk_rumor_clarification_history_clarification"),
        )
    )
    version: Mapped[int] = mapped_column(Integer)
    claim: Mapped[str] = mapped_column(String(MAX_CLAIM))
    verdict: Mapped[str] = mapped_column(String(16))
    explanation: Mapped[str] = mapped_column(Text)
    source_name: Mapped[str] = mapped_column(String(MAX_SOURCE_NAME))
    source_url: Mapped[str] = mapped_column(String(MAX_SOURCE_URL))
    region_id: Mapped[int | None] = mapped_column(BigId)
    expires_at: Mapped[datetime | None]
    status: Mapped[str] = mapped_column(String(16))
    edited_by: Mapped[int] = mapped_column(BigId)
    replaced_at: Mapped[datetime] = mapped_column(default=utcnow)


class ReviewItem(Base):
    __tablename__ = "rumor_review_items"
    __table_args__ = (Index("ix_rumor_review_items_status", "status", "last_asked_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    text: Mapped[str] = mapped_column(String(MAX_QUESTION_TEXT))
    """The first question's normalized text: what near-duplicates are compared with."""
    sample: Mapped[str] = mapped_column(String(MAX_QUESTION_TEXT))
    """The first question as written (capped), for reviewers."""
    ask_count: Mapped[int] = mapped_column(Integer, default=1)
    asker_count: Mapped[int] = mapped_column(Integer, default=1)
    first_asked_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_asked_at: Mapped[datetime] = mapped_column(default=utcnow)
    status: Mapped[str] = mapped_column(String(16), default=ReviewStatus.PENDING)
    clarification_id: Mapped[int | None] = mapped_column(
        ForeignKey("rumor_clarifications.id"), index=True
    )
    resolved_by: Mapped[int | None] = mapped_column(BigId)
    resolved_at: Mapped[datetime | None]


class Question(Base):
    __tablename__ = "rumor_questions"
    __table_args__ = (Index("ix_rumor_questions_item_person", "review_item_id", "person_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("people.id", ondelete="CASCADE"), index=True)
    region_id: Mapped[int | None] = mapped_column(BigId)
    text: Mapped[str] = mapped_column(String(MAX_QUESTION_TEXT))
    raw_text: Mapped[str] = mapped_column(String(MAX_QUESTION_RAW))
    asked_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    outcome: Mapped[str] = mapped_column(String(16))
    score: Mapped[float | None] = mapped_column(Float)
    clarification_id: Mapped[int | None] = mapped_column(
        ForeignKey("rumor_clarifications.id"), index=True
    )
    review_item_id: Mapped[int | None] = mapped_column(ForeignKey("rumor_review_items.id"))
    suggested: Mapped[dict[str, Any] | None] = mapped_column()
    """``{"ids": [...]}``: the clarifications suggested, in the order shown."""


class Delivery(Base):
    __tablename__ = "rumor_deliveries"
    __table_args__ = (
        UniqueConstraint("clarification_id", "person_id", name=conv("uq_rumor_deliveries_person")),
        Index("ix_rumor_deliveries_version", "clarification_id", "version"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    clarification_id: Mapped[int] = mapped_column(
        ForeignKey("rumor_clarifications.id", ondelete="CASCADE")
    )
    person_id: Mapped[int] = mapped_column(ForeignKey("people.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    """The latest version this person has received."""
    kind: Mapped[str] = mapped_column(String(16))
    first_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_at: Mapped[datetime] = mapped_column(default=utcnow)


class Push(Base):
    """A clarification pushed to regions as a notice (corrections are pushed the same way)."""

    __tablename__ = "rumor_pushes"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    clarification_id: Mapped[int] = mapped_column(
        ForeignKey("rumor_clarifications.id", ondelete="CASCADE"), index=True
    )
    version: Mapped[int] = mapped_column(Integer)
    notice_id: Mapped[int] = mapped_column(BigId)
    audience: Mapped[dict[str, Any]] = mapped_column()
    """``{"region_ids": [...], "groups": bool, "individuals": bool}``: who it was pushed to."""
    pushed_by: Mapped[int] = mapped_column(BigId)
    pushed_at: Mapped[datetime] = mapped_column(default=utcnow)
