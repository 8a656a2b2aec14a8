"""Rumor clarification: answer what residents forward, queue what nobody has verified yet,
tell everyone who asked once it is verified, and report what is spreading.

**Knowledge base.**  Clarifications live in the database (``storage.rumor_models``).  Each
process keeps a :class:`RumorKnowledge`: a :class:`~flows.rumor_match.RumorIndex` of the
published, unexpired clarifications, which is only a cache.  Before every query it reads the
knowledge base's generation (one primary-key read); when another process (or the API) changed a
clarification, the rows changed since the cached generation are re-read and re-indexed, so two
processes answer alike and nothing authoritative lives in memory.  The first query of a process
builds the whole index in a worker thread (jieba's lexicon takes about two seconds to load).

**Matching.**  Thresholds come from config (``rumors``); the matcher decides answer, suggest or
unknown.  A clarification scoped to a region is only given to people living in it: candidates
outside the asker's region are dropped after matching, and an answer whose best candidate was
dropped becomes a suggestion of the rest.

**Unprompted claims.**  A direct message that no command or flow took ("喝白酒可以预防新冠病毒",
with no "是真的吗") is matched too, from ``rumors.fallback_min_chars`` content characters on, and
answered only on the confident outcome, recorded like any answered question; a suggestion or no
match leaves the usual "not understood" reply, and nothing is stored or queued for review.

**Grouping of unanswered questions.**  Residents forward the same post with different heads and
tails ("转发", "这是真的吗", their own comment), or only its first lines.  Near-duplicates are
found by the Jaccard resemblance of the character bigrams of the first
``GROUP_HEAD_CHARS`` content characters (Broder's shingling): symmetric, independent of the
knowledge base and of any corpus statistics, and robust to one copy being a prefix of another.
The matcher's own score is not used for this: it measures how much of a short *claim* a long
post contains (asymmetric, weighted by what tells *clarifications* apart), which is the wrong
question for two posts.  A question joins a pending item, or one attached to a clarification
still in draft (its askers are told when the draft is published).

**Deliveries.**  Who received which version of a clarification is recorded.  When a
clarification is published, or a review item is attached to a published one, everyone who asked
about it (through any question grouped into the item) and has not received it gets it once,
through the outbox with the key ``rumor:<id>:v<version>:<person id>``.  An edit of a published
clarification keeps the replaced content as history, raises the version, and sends the new
version, marked as an update, to everyone who received an earlier one; regions it was pushed to
get the correction as a notice, once per version.  An edit of only what residents do not read
(scope, expiry) raises the version too (the history keeps it) but sends nothing: versions that
read alike count as received.  Withdrawing a published clarification tells everyone
who received any version of it, and the regions it was pushed to, that it no longer holds.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import re
import unicodedata
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from flows import notices
from flows.context import Context
from flows.engine import Flow, Reask
from flows.messages import Inbound
from flows.refusals import Refused
from flows.rumor_match import (
    MAX_MESSAGE_CHARS,
    Claim,
    RumorIndex,
    Thresholds,
    normalize_text,
    preload,
)
from flows.texts import Texts
from storage import repo
from storage import rumors as store
from storage.db import Database
from storage.models import Role
from storage.outbox import enqueue, outbox_row
from storage.rumor_models import (
    MAX_CLAIM,
    MAX_QUESTION_RAW,
    MAX_QUESTION_TEXT,
    MAX_SOURCE_NAME,
    MAX_SOURCE_URL,
    ClarificationStatus,
    DeliveryKind,
    QuestionOutcome,
    ReviewStatus,
    Verdict,
)

log = logging.getLogger(__name__)

MANAGER_ROLES = (Role.ADMIN,)
REPORT_ROLES = (Role.ADMIN, Role.WARDEN)
PREFIXES = ("这是真的吗", "是真的吗", "真的假的", "辟谣")
SUFFIXES = ("是真的吗", "是不是真的", "真的假的")
_EDGES = " \t\r\n:：,，.。?？!！~～、…"
_CONTENT = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaffa-z0-9]+")
GROUP_HEAD_CHARS = 120
FULL_REBUILD_CHANGES = 200
"""More changed clarifications than this since the cached generation: rebuild (in a thread)."""
REF_TYPE = "rumor"
_CHINESE_DIGITS = "一二三四五六七八九"
_NONE_OF_THESE = frozenset({"0", "零", "都不是", "都不对", "以上都不是", "没有", "不是"})
_URL = re.compile(r"^https?://[^\s]{1,490}$")


# -- recognising a question ------------------------------------------------------------------


def question_text(inbound: Inbound, *, min_chars: int) -> str | None:
    """The text to check when a message asks about a rumor; ``None`` when it does not.

    "这是真的吗 …", "辟谣 …" (and the like) ask explicitly, as does a text ending in "…是真的吗";
    a long direct message, or a forwarded link (kind ``other``) with its title, is taken as a
    forwarded post.  ``""`` means the command came without anything to check.
    """
    text = inbound.text.strip()
    if inbound.kind == "other":
        return text or None
    for prefix in PREFIXES:
        if text.startswith(prefix):
            return text[len(prefix) :].lstrip(_EDGES).rstrip()
    core = text.rstrip(_EDGES)
    for suffix in SUFFIXES:
        if core.endswith(suffix) and len(core) > len(suffix):
            return core[: -len(suffix)].strip(_EDGES)
    if len(text) >= min_chars:
        return text
    return None


def content_of(normalized: str) -> str:
    """Only the Chinese characters, Latin letters and digits of normalized text."""
    return "".join(_CONTENT.findall(normalized))


def parse_choice(text: str) -> int | None:
    """A numbered reply: ``1``, ``第2条``, ``三``; 0 for "none of these"; ``None`` otherwise."""
    word = unicodedata.normalize("NFKC", text).strip().strip(_EDGES)
    if word in _NONE_OF_THESE:
        return 0
    word = word.removeprefix("第").removesuffix("条").removesuffix("个").removesuffix("项")
    if word.isascii() and word.isdigit() and len(word) <= 2:
        return int(word)
    if len(word) == 1 and word in _CHINESE_DIGITS:
        return _CHINESE_DIGITS.index(word) + 1
    return None


# -- the in-memory cache ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    """A published clarification as the cache holds it."""

    id: int
    version: int
    claim: str
    verdict: str
    explanation: str
    source_name: str
    source_url: str
    scope_path: str | None
    expires_at: datetime | None
    published_at: datetime | None

    def applies_to(self, region_path: str | None) -> bool:
        """Whether a person living in ``region_path`` is given this clarification."""
        if self.scope_path is None:
            return True
        return region_path is not None and region_path.startswith(self.scope_path)

    def live(self, now: datetime) -> bool:
        return self.expires_at is None or self.expires_at > now


def entry_of(row: Any) -> Entry:
    return Entry(
        id=row.id,
        version=row.version,
        claim=row.claim,
        verdict=row.verdict,
        explanation=row.explanation,
        source_name=row.source_name,
        source_url=row.source_url,
        scope_path=row.scope_path,
        expires_at=row.expires_at,
        published_at=row.published_at,
    )


def index_text(entry: Entry) -> str:
    """What the matcher indexes of a clarification."""
    return entry.claim


def _build_index(entries: Sequence[Entry]) -> RumorIndex:
    preload()
    return RumorIndex(Claim(entry.id, index_text(entry)) for entry in entries)


@dataclass(frozen=True)
class Matched:
    outcome: str  # answer | suggest | unknown
    entries: tuple[Entry, ...] = ()
    score: float | None = None


class RumorKnowledge:
    """A process's cache of the published, unexpired clarifications and their match index."""

    def __init__(self) -> None:
        self._index = RumorIndex()
        self._entries: dict[int, Entry] = {}
        self._generation: int | None = None
        self._next_expiry: datetime | None = None
        self._scoped = 0  # entries scoped to a region
        self._lock = asyncio.Lock()

    @property
    def generation(self) -> int | None:
        return self._generation

    def __len__(self) -> int:
        return len(self._entries)

    def entry(self, clarification_id: int) -> Entry | None:
        return self._entries.get(clarification_id)

    async def refresh(self, conn: AsyncConnection, now: datetime) -> None:
        """Bring the cache up to the database's generation (cheap when nothing changed)."""
        generation = await store.read_generation(conn)
        if generation == self._generation and not self._expiry_due(now):
            return
        async with self._lock:
            cached = self._generation
            if cached is None or generation < cached:
                await self._rebuild(conn, generation, now)
            elif generation > cached:
                rows = await store.changed_since(conn, cached)
                if len(rows) > FULL_REBUILD_CHANGES:
                    await self._rebuild(conn, generation, now)
                else:
                    self._apply(rows, now)
                    self._generation = generation
            if self._expiry_due(now):
                self._drop_expired(now)

    async def _rebuild(self, conn: AsyncConnection, generation: int, now: datetime) -> None:
        rows = await store.published(conn)
        entries = {row.id: entry_of(row) for row in rows}
        entries = {cid: e for cid, e in entries.items() if e.live(now)}
        # Segmenting thousands of claims (and loading jieba) takes seconds: not on the loop.
        self._index = await asyncio.to_thread(_build_index, list(entries.values()))
        self._entries = entries
        self._generation = generation
        self._recount()
        log.info("rumor index built: %d clarifications, generation %d", len(entries), generation)

    def _apply(self, rows: Iterable[Any], now: datetime) -> None:
        for row in rows:
            entry = entry_of(row)
            if row.status == ClarificationStatus.PUBLISHED and entry.live(now):
                self._index.add(Claim(entry.id, index_text(entry)))
                self._entries[entry.id] = entry
            else:
                self._index.remove(entry.id)
                self._entries.pop(entry.id, None)
        self._recount()

    def _recount(self) -> None:
        """The next expiry and the number of scoped entries, after every change."""
        self._scoped = sum(1 for e in self._entries.values() if e.scope_path is not None)
        times = [e.expires_at for e in self._entries.values() if e.expires_at is not None]
        self._next_expiry = min(times) if times else None

    def _expiry_due(self, now: datetime) -> bool:
        return self._next_expiry is not None and self._next_expiry <= now

    def _drop_expired(self, now: datetime) -> None:
        for entry in [e for e in self._entries.values() if not e.live(now)]:
            self._index.remove(entry.id)
            del self._entries[entry.id]
        self._recount()

    def match(
        self, text: str, thresholds: Thresholds, *, region_path: str | None, now: datetime
    ) -> Matched:
        """Match ``text`` for a person living in ``region_path`` (call ``refresh`` first)."""
        # Out-of-scope candidates are dropped below: ask for enough to fill the list anyway.
        wide = Thresholds(
            thresholds.answer, thresholds.suggest, thresholds.max_suggestions + self._scoped
        )
        result = self._index.match(text, wide)
        kept = []
        for candidate in result.candidates:
            entry = self._entries.get(int(candidate.claim_id))
            if entry is not None and entry.applies_to(region_path) and entry.live(now):
                kept.append((entry, candidate.score))
        if not kept or result.outcome == "unknown":
            return Matched("unknown")
        best, score = kept[0]
        if result.outcome == "answer" and best.id == result.candidates[0].claim_id:
            return Matched("answer", (best,), score)
        shown = kept[: thresholds.max_suggestions]
        return Matched("suggest", tuple(e for e, _ in shown), score)


def thresholds_of(settings: Any) -> Thresholds:
    config = settings.rumors
    return Thresholds(config.answer_threshold, config.suggest_threshold, config.max_suggestions)


# -- answering a resident --------------------------------------------------------------------


def clarification_values(item: Any, settings: Any) -> dict[str, Any]:
    """What the clarification templates read, from a cache entry or a database row."""
    published = item.published_at
    return {
        "claim": item.claim,
        "verdict": item.verdict,
        "explanation": item.explanation,
        "source_name": item.source_name,
        "source_url": item.source_url,
        "published": notices.local_label(published, settings) if published else "",
        "version": item.version,
    }


@dataclass(frozen=True)
class Asked:
    outcome: str  # answer | suggest | unknown | empty
    question_id: int | None = None
    suggestions: tuple[Entry, ...] = ()


async def ask(ctx: Context, knowledge: RumorKnowledge, text: str) -> Asked:
    """Answer a question about ``text``, record it, and queue it for review when unknown."""
    assert ctx.person is not None
    normalized = normalize_text(text[: MAX_MESSAGE_CHARS * 3 // 2])
    if not content_of(normalized):
        ctx.say("rumors/no_content")
        return Asked("empty")
    matched = await _match(ctx, knowledge, text)
    values = _question_values(ctx, text, normalized, matched)
    if matched.outcome == "answer":
        return await _answer_question(ctx, matched.entries[0], text, values)
    if matched.outcome == "suggest":
        ids = [e.id for e in matched.entries]
        question_id = await store.insert_question(ctx.conn, suggested={"ids": ids}, **values)
        return Asked("suggest", question_id, matched.entries)
    item_id = await group_into_review(
        ctx.conn,
        person_id=ctx.person.id,
        normalized=normalized,
        raw=text,
        settings=ctx.settings,
        now=ctx.now,
    )
    question_id = await store.insert_question(ctx.conn, review_item_id=item_id, **values)
    truncated = len(text) > MAX_MESSAGE_CHARS
    ctx.say("rumors/unknown", truncated=truncated, limit=MAX_MESSAGE_CHARS)
    return Asked("unknown", question_id)


async def answer_if_known(ctx: Context, knowledge: RumorKnowledge, text: str) -> bool:
    """Answer ``text`` only when it is confidently a known claim; ``False`` (nothing said,
    nothing stored) otherwise.

    For a message without a question cue that no command took: a short claim ("喝白酒可以预防
    新冠病毒") is answered and recorded as a question exactly as ``ask`` would, while a
    suggestion or no match leaves the message to the caller, unrecorded and not queued for
    review (an unclear short message is not a rumor question).  Messages with fewer than
    ``rumors.fallback_min_chars`` content characters are not matched at all.
    """
    assert ctx.person is not None
    normalized = normalize_text(text[: MAX_MESSAGE_CHARS * 3 // 2])
    if len(content_of(normalized)) < ctx.settings.rumors.fallback_min_chars:
        return False
    matched = await _match(ctx, knowledge, text)
    if matched.outcome != "answer":
        return False
    values = _question_values(ctx, text, normalized, matched)
    await _answer_question(ctx, matched.entries[0], text, values)
    return True


async def _match(ctx: Context, knowledge: RumorKnowledge, text: str) -> Matched:
    """Match ``text`` for the sender against the current knowledge base."""
    assert ctx.person is not None
    await knowledge.refresh(ctx.conn, ctx.now)
    region = ctx.person.region
    return knowledge.match(
        text, thresholds_of(ctx.settings), region_path=region.path if region else None, now=ctx.now
    )


def _question_values(ctx: Context, text: str, normalized: str, matched: Matched) -> dict[str, Any]:
    """The columns of the question row recording what the sender asked and how it matched."""
    assert ctx.person is not None
    region = ctx.person.region
    return {
        "person_id": ctx.person.id,
        "region_id": region.id if region else None,
        "text": normalized[:MAX_QUESTION_TEXT],
        "raw_text": text[:MAX_QUESTION_RAW],
        "asked_at": ctx.now,
        "outcome": matched.outcome,
        "score": matched.score,
    }


async def _answer_question(ctx: Context, entry: Entry, text: str, values: dict[str, Any]) -> Asked:
    """Record an answered question (for the report and later corrections) and answer it."""
    question_id = await store.insert_question(ctx.conn, clarification_id=entry.id, **values)
    await _answer(ctx, entry)
    if len(text) > MAX_MESSAGE_CHARS:
        ctx.say("rumors/truncated", limit=MAX_MESSAGE_CHARS)
    return Asked("answer", question_id)


async def _answer(ctx: Context, entry: Entry) -> None:
    assert ctx.person is not None
    await store.record_delivery(
        ctx.conn,
        ctx.db,
        clarification_id=entry.id,
        person_ids=[ctx.person.id],
        version=entry.version,
        kind=DeliveryKind.ANSWER,
        now=ctx.now,
    )
    ctx.say("rumors/answer", **clarification_values(entry, ctx.settings))


async def choose(
    ctx: Context, knowledge: RumorKnowledge, question_id: int, clarification_id: int
) -> None:
    """The resident picked one of the suggestions."""
    assert ctx.person is not None
    await knowledge.refresh(ctx.conn, ctx.now)
    entry = knowledge.entry(clarification_id)
    region = ctx.person.region
    if entry is None or not entry.applies_to(region.path if region else None):
        ctx.say("rumors/chosen_gone")
        return
    await store.update_question(
        ctx.conn, question_id, outcome=QuestionOutcome.CHOSEN, clarification_id=entry.id
    )
    await _answer(ctx, entry)


async def decline(ctx: Context, question_id: int) -> None:
    """None of the suggestions: the question goes to review like an unknown one."""
    assert ctx.person is not None
    question = await store.get_question(ctx.conn, question_id)
    if question is None:  # purged meanwhile (retention)
        ctx.say("rumors/chosen_gone")
        return
    item_id = await group_into_review(
        ctx.conn,
        person_id=ctx.person.id,
        normalized=question.text,
        raw=question.raw_text,
        settings=ctx.settings,
        now=ctx.now,
    )
    await store.update_question(
        ctx.conn, question_id, outcome=QuestionOutcome.UNKNOWN, review_item_id=item_id
    )
    ctx.say("rumors/unknown", truncated=False, limit=MAX_MESSAGE_CHARS)


# -- grouping unanswered questions -----------------------------------------------------------


def head_bigrams(normalized: str) -> frozenset[str]:
    """Character bigrams of the first ``GROUP_HEAD_CHARS`` content characters."""
    head = content_of(normalized)[:GROUP_HEAD_CHARS]
    if len(head) < 2:
        return frozenset({head}) if head else frozenset()
    return frozenset(head[i : i + 2] for i in range(len(head) - 1))


def resemblance(a: frozenset[str], b: frozenset[str]) -> float:
    """Jaccard resemblance of two bigram sets."""
    if not a or not b:
        return 0.0
    return len(a & b) / len(a | b)


async def group_into_review(
    conn: AsyncConnection,
    *,
    person_id: int,
    normalized: str,
    raw: str,
    settings: Any,
    now: datetime,
) -> int:
    """The review item for an unanswered question: a near-identical open one, or a new one.

    Open means pending, or attached to a clarification still in draft: a question joining
    that item is told when the draft is published, like the item's earlier askers.

    Counting into a pending item needs no lock (one atomic update of its row); joining a
    draft's item holds the draft in share mode until commit, so that publishing it sees the
    question (see :func:`storage.rumors.count_into_item`).  Creating an
    item does: two near-identical questions asked at once (two lanes, two processes) would
    otherwise both find nothing and both create one.  So a question that found no pending
    item takes the grouping lock, looks again (the lock's previous holder has committed its
    new item by then), and only then creates one.
    """
    grams = head_bigrams(normalized)
    item_id = await _count_into_nearest(
        conn, grams, person_id=person_id, settings=settings, now=now
    )
    if item_id is not None:
        return item_id
    await store.lock_review_grouping(conn)
    item_id = await _count_into_nearest(
        conn, grams, person_id=person_id, settings=settings, now=now
    )
    if item_id is not None:
        return item_id
    return await store.insert_item(
        conn, text=normalized[:MAX_QUESTION_TEXT], sample=raw[:MAX_QUESTION_TEXT], now=now
    )


async def _count_into_nearest(
    conn: AsyncConnection,
    grams: frozenset[str],
    *,
    person_id: int,
    settings: Any,
    now: datetime,
) -> int | None:
    """Count the question into the most similar open item, if one is similar enough."""
    config = settings.rumors
    candidates = await store.recent_open_items(
        conn, since=now - timedelta(days=config.group_window_days), limit=config.group_candidates
    )
    nearest, best = None, 0.0
    for item in candidates:
        score = resemblance(grams, head_bigrams(item.text))
        if score > best:
            nearest, best = item, score
    if nearest is None or best < config.group_similarity:
        return None
    if not await store.count_into_item(
        conn, nearest.id, draft_id=nearest.clarification_id, person_id=person_id, now=now
    ):
        return None  # closed (or its draft published) since it was read: start a new item
    return int(nearest.id)


# -- the conversation ------------------------------------------------------------------------


class RumorDesk(Flow):
    """Checks what a resident forwards; when it only has suggestions, reads the numbered reply.

    The flow object owns the process's :class:`RumorKnowledge` cache (one per application).
    """

    name = "rumor"

    class State(enum.StrEnum):
        CHOOSE = "choose"

    def __init__(self) -> None:
        self.knowledge = RumorKnowledge()

    async def begin(self, ctx: Context, **params: Any) -> State | None:
        return await self._ask(ctx, params["text"])

    async def _ask(self, ctx: Context, text: str) -> State | None:
        asked = await ask(ctx, self.knowledge, text)
        if asked.outcome != "suggest":
            return None
        ctx.conversation.data = {
            "question_id": asked.question_id,
            "ids": [e.id for e in asked.suggestions],
            "claims": [e.claim for e in asked.suggestions],
        }
        return self.State.CHOOSE

    async def ask(self, ctx: Context, state: enum.StrEnum) -> None:
        ctx.say("rumors/suggest", claims=ctx.conversation.data["claims"])

    async def step(self, ctx: Context, state: enum.StrEnum, text: str) -> State | None:
        data = ctx.conversation.data
        ids: list[int] = data["ids"]
        number = parse_choice(text)
        if number is None:
            fresh = question_text(ctx.inbound, min_chars=ctx.settings.rumors.forward_min_chars)
            if fresh:  # not a choice but a new question: check that instead
                return await self._ask(ctx, fresh)
            raise Reask("rumors/choice_hint", count=len(ids))
        if number == 0:
            await decline(ctx, data["question_id"])
            return None
        if number > len(ids):
            raise Reask("rumors/choice_hint", count=len(ids))
        await choose(ctx, self.knowledge, data["question_id"], ids[number - 1])
        return None


async def answer_unprompted(ctx: Context, text: str) -> bool:
    """A direct message no command or flow took: answer it when it confidently states a known
    claim (see :func:`answer_if_known`), with the rumor desk's cache; ``False`` otherwise."""
    desk = ctx.flows.flows[RumorDesk.name]
    assert isinstance(desk, RumorDesk)
    return await answer_if_known(ctx, desk.knowledge, text)


# -- managing clarifications -----------------------------------------------------------------


class RumorRefused(Refused):
    """Bad input or a forbidden action: the template ``rumors/refused/<reason>`` says why."""

    feature = "rumors"


def check_manager(person: repo.PersonInfo | None) -> repo.PersonInfo:
    if person is None or not person.has_role(*MANAGER_ROLES):
        raise RumorRefused("not_allowed", 403)
    return person


def manager_paths(person: repo.PersonInfo) -> list[str]:
    return sorted({r.path for r in person.scope_regions(*MANAGER_ROLES)})


def staff_paths(person: repo.PersonInfo) -> list[str]:
    return sorted({r.path for r in person.scope_regions(*REPORT_ROLES)})


def can_manage(person: repo.PersonInfo, scope_path: str | None) -> bool:
    """Admins manage clarifications scoped inside their scope; one for everyone needs an admin
    of a whole city (a region at the top of the tree)."""
    roots = person.scope_regions(*MANAGER_ROLES)
    if scope_path is None:
        return any(r.parent_id is None for r in roots)
    return any(scope_path.startswith(r.path) for r in roots)


def can_see(person: repo.PersonInfo, scope_path: str | None) -> bool:
    """Clarifications for everyone, or scoped above, at or below one of the person's scopes."""
    if scope_path is None:
        return True
    return any(scope_path.startswith(p) or p.startswith(scope_path) for p in manager_paths(person))


REQUIRED = ("claim", "verdict", "explanation", "source_name")
FIELDS = (*REQUIRED, "source_url", "region", "expires_at")


def _text_field(body: dict[str, Any], name: str, limit: int) -> str:
    value = body[name]
    if not isinstance(value, str) or not value.strip():
        raise RumorRefused("empty_field", field=name)
    cleaned = unicodedata.normalize("NFC", value).strip()
    if len(cleaned) > limit:
        raise RumorRefused("too_long", field=name, limit=limit, length=len(cleaned))
    return cleaned


def _expiry(value: Any, now: datetime) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise RumorRefused("bad_time", field="expires_at")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise RumorRefused("bad_time", field="expires_at") from None
    if moment.tzinfo is None:
        raise RumorRefused("bad_time", field="expires_at")
    if moment <= now:
        raise RumorRefused("past_time", field="expires_at")
    return moment


async def check_fields(
    conn: AsyncConnection,
    person: repo.PersonInfo,
    body: dict[str, Any],
    *,
    settings: Any,
    now: datetime,
    partial: bool,
) -> dict[str, Any]:
    """Validate clarification fields from a request body; the column values to store."""
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise RumorRefused("unknown_field", field=unknown[0])
    if not partial:
        missing = [name for name in REQUIRED if name not in body]
        if missing:
            raise RumorRefused("empty_field", field=missing[0])
    values: dict[str, Any] = {}
    if "claim" in body:
        values["claim"] = _text_field(body, "claim", MAX_CLAIM)
        if not content_of(normalize_text(values["claim"])):
            raise RumorRefused("empty_field", field="claim")
    if "verdict" in body:
        if body["verdict"] not in {v.value for v in Verdict}:
            raise RumorRefused("bad_verdict", choices=[v.value for v in Verdict])
        values["verdict"] = body["verdict"]
    if "explanation" in body:
        limit = settings.rumors.max_explanation_chars
        values["explanation"] = _text_field(body, "explanation", limit)
    if "source_name" in body:
        values["source_name"] = _text_field(body, "source_name", MAX_SOURCE_NAME)
    if "source_url" in body:
        url = body["source_url"]
        if url is None or url == "":
            values["source_url"] = ""
        elif not isinstance(url, str) or len(url) > MAX_SOURCE_URL or not _URL.match(url):
            raise RumorRefused("bad_url")
        else:
            values["source_url"] = url
    if "region" in body:
        code = body["region"]
        if code is None:
            values["region_id"], values["scope_path"] = None, None
        else:
            region = await repo.get_region_by_code(conn, code) if isinstance(code, str) else None
            if region is None:
                raise RumorRefused("unknown_region", code=str(code)[:64])
            values["region_id"], values["scope_path"] = region.id, region.path
    elif not partial:
        values["region_id"], values["scope_path"] = None, None
    if "scope_path" in values and not can_manage(person, values["scope_path"]):
        raise RumorRefused("out_of_scope", 403, everyone=values["scope_path"] is None)
    if "expires_at" in body:
        values["expires_at"] = _expiry(body["expires_at"], now)
    return values


async def create_clarification(
    conn: AsyncConnection,
    db: Database,
    person: repo.PersonInfo,
    body: dict[str, Any],
    *,
    settings: Any,
    now: datetime,
    via: str = "api",
) -> int:
    """Store a draft clarification (validated) and audit it."""
    check_manager(person)
    values = await check_fields(conn, person, body, settings=settings, now=now, partial=False)
    values.setdefault("source_url", "")
    values.setdefault("expires_at", None)
    clarification_id = await store.insert_clarification(
        conn,
        db,
        status=ClarificationStatus.DRAFT,
        version=1,
        created_by=person.id,
        updated_by=person.id,
        created_at=now,
        updated_at=now,
        **values,
    )
    await _audit(conn, person, "rumor.clarification.create", clarification_id, values, via=via)
    return clarification_id


async def find_managed(
    conn: AsyncConnection, person: repo.PersonInfo, clarification_id: int
) -> Any:
    """A clarification the person may change (locked on PostgreSQL until commit)."""
    check_manager(person)
    row = await store.get_clarification(conn, clarification_id, for_update=True)
    if row is None or not can_see(person, row.scope_path):
        raise RumorRefused("not_found", 404, id=clarification_id)
    if not can_manage(person, row.scope_path):
        raise RumorRefused("out_of_scope", 403, everyone=row.scope_path is None)
    return row


async def find_visible(
    conn: AsyncConnection,
    person: repo.PersonInfo,
    clarification_id: int,
    *,
    for_update: bool = False,
) -> Any:
    """A clarification the person may see (``for_update``: locked on PostgreSQL until commit)."""
    check_manager(person)
    row = await store.get_clarification(conn, clarification_id, for_update=for_update)
    if row is None or not can_see(person, row.scope_path):
        raise RumorRefused("not_found", 404, id=clarification_id)
    return row


@dataclass
class Delivered:
    """What publishing, attaching or correcting set in motion."""

    notified: int = 0
    updated: int = 0
    withdrawn: int = 0
    """People told that the clarification they received was withdrawn."""
    notice_ids: list[int] = field(default_factory=list)
    """Correction (or withdrawal) notices to regions the clarification was pushed to (queue
    after commit)."""


async def queue_corrections(
    db: Database, delivered: Delivered, *, texts: Texts, settings: Any, now: datetime
) -> None:
    """After the commit that set ``delivered`` in motion: queue its correction notices page by
    page, like any notice.  The caller wakes the delivery worker."""
    for notice_id in delivered.notice_ids:
        await notices.queue_notice(db, notice_id, texts=texts, settings=settings, now=now)


@dataclass(frozen=True)
class ClarificationRecord:
    """A clarification as managers see it: the row, its region, history and pushes."""

    row: Any
    region: repo.RegionInfo | None
    history: list[Any]
    pushes: list[Any]


async def read_clarification(
    conn: AsyncConnection, person: repo.PersonInfo, clarification_id: int
) -> ClarificationRecord:
    """One clarification the person may see, with the versions it replaced (newest first)
    and the pushes of it to regions."""
    row = await find_visible(conn, person, clarification_id)
    region = await repo.get_region(conn, row.region_id) if row.region_id is not None else None
    return ClarificationRecord(
        row=row,
        region=region,
        history=await store.list_history(conn, row.id),
        pushes=await store.list_pushes(conn, row.id),
    )


async def list_managed_clarifications(
    conn: AsyncConnection,
    person: repo.PersonInfo,
    *,
    status: str | None,
    limit: int,
    before: int | None,
) -> list[Any]:
    """Clarifications for everyone or for regions related to the person's scope, newest first."""
    check_manager(person)
    return await store.list_clarifications(
        conn, paths=manager_paths(person), status=status, limit=limit, before=before
    )


async def edit_clarification(
    conn: AsyncConnection,
    db: Database,
    person: repo.PersonInfo,
    clarification_id: int,
    body: dict[str, Any],
    *,
    settings: Any,
    texts: Texts,
    now: datetime,
) -> Delivered:
    """Change fields; once published, the replaced content becomes history and the version
    goes up, and a published clarification's earlier recipients get the update (unless
    ``"notify": false``, e.g. for a typo)."""
    row = await find_managed(conn, person, clarification_id)
    body = dict(body)
    notify = body.pop("notify", True)
    if not isinstance(notify, bool):
        raise RumorRefused("bad_flag", field="notify")
    values = await check_fields(conn, person, body, settings=settings, now=now, partial=True)
    changed = {k: v for k, v in values.items() if getattr(row, k) != v}
    if not changed:
        raise RumorRefused("nothing_changed")
    version = row.version
    if row.published_at is not None:
        await store.add_history(conn, row, edited_by=person.id, replaced_at=now)
        version += 1
    await store.update_clarification(
        conn, db, row.id, version=version, updated_by=person.id, updated_at=now, **changed
    )
    await _audit(
        conn,
        person,
        "rumor.clarification.edit",
        row.id,
        changed,
        version=version,
        notify=notify,
    )
    delivered = Delivered()
    if row.status == ClarificationStatus.PUBLISHED and notify and version > row.version:
        fresh = await store.get_clarification(conn, row.id)
        delivered = await deliver_current(
            conn, db, fresh, editor=person, settings=settings, texts=texts, now=now
        )
    return delivered


async def publish_clarification(
    conn: AsyncConnection,
    db: Database,
    person: repo.PersonInfo,
    clarification_id: int,
    *,
    settings: Any,
    texts: Texts,
    now: datetime,
) -> Delivered:
    """Publish a draft (or a withdrawn clarification again) and tell everyone who asked; a
    withdrawn one published again also goes to everyone told of the withdrawal."""
    row = await find_managed(conn, person, clarification_id)
    if row.status == ClarificationStatus.PUBLISHED:
        raise RumorRefused("already_published", 409)
    if row.expires_at is not None and row.expires_at <= now:
        raise RumorRefused("expired", 409, attach=False)
    await store.update_clarification(
        conn,
        db,
        row.id,
        status=ClarificationStatus.PUBLISHED,
        published_at=now,
        withdrawn_at=None,
        updated_by=person.id,
        updated_at=now,
    )
    await _audit(conn, person, "rumor.clarification.publish", row.id, {}, version=row.version)
    fresh = await store.get_clarification(conn, row.id)
    return await deliver_current(
        conn,
        db,
        fresh,
        editor=person,
        settings=settings,
        texts=texts,
        now=now,
        republished=row.status == ClarificationStatus.WITHDRAWN,
    )


async def withdraw_clarification(
    conn: AsyncConnection,
    db: Database,
    person: repo.PersonInfo,
    clarification_id: int,
    *,
    settings: Any,
    texts: Texts,
    now: datetime,
) -> Delivered:
    """Stop answering with a published clarification, and tell those who received it: every
    person any version was delivered to, once (key ``rumor:<id>:withdrawn:<time>:<person>``),
    and each audience it was pushed to, as a notice (queued after commit).  Those told are
    noted, so that publishing it again tells them it is back."""
    row = await find_managed(conn, person, clarification_id)
    if row.status != ClarificationStatus.PUBLISHED:
        raise RumorRefused("not_published", 409)
    await store.update_clarification(
        conn,
        db,
        row.id,
        status=ClarificationStatus.WITHDRAWN,
        withdrawn_at=now,
        updated_by=person.id,
        updated_at=now,
    )
    await _audit(conn, person, "rumor.clarification.withdraw", row.id, {}, version=row.version)
    text = texts.render("rumors/withdrawn", **clarification_values(row, settings))
    insert = db.insert_ignore(store.outbox)
    stamp = int(now.timestamp() * 1000)
    delivered = Delivered()
    page = settings.rumors.notify_page_size
    async for ids in _id_pages(
        lambda after: store.recipients(conn, row.id, after=after, limit=page)
    ):
        delivered.withdrawn += await _send(
            conn, db, insert, row, ids, text, f"withdrawn:{stamp}", DeliveryKind.WITHDRAWN, now
        )
    delivered.notice_ids = await _notice_pushed_audiences(
        conn,
        row,
        await store.list_pushes(conn, row.id),
        editor=person,
        text=text,
        settings=settings,
        now=now,
        via="rumor-withdrawn",
        record=False,
    )
    return delivered


async def deliver_current(
    conn: AsyncConnection,
    db: Database,
    row: Any,
    *,
    editor: repo.PersonInfo,
    settings: Any,
    texts: Texts,
    now: datetime,
    republished: bool = False,
) -> Delivered:
    """Send the published clarification ``row`` to everyone owed its current version.

    Askers (of attached review items) who never received it get it once; people who received
    an earlier version that reads differently get this one as an update; audiences whose
    latest push is of such a version get a correction notice.  When it is ``republished``
    after a withdrawal, the people and regions told of the withdrawal are told it stands
    again.  One page of people per statement.
    """
    delivered = Delivered()
    page = settings.rumors.notify_page_size
    values = clarification_values(row, settings)
    notify_text = texts.render("rumors/notify", **values)
    update_text = texts.render("rumors/update", **values)
    insert = db.insert_ignore(store.outbox)

    async def send(
        person_ids: list[int], text: str, kind: str, what: str = f"v{row.version}"
    ) -> int:
        return await _send(conn, db, insert, row, person_ids, text, what, kind, now)

    async for ids in _id_pages(
        lambda after: store.askers_to_notify(
            conn, row.id, scope_path=row.scope_path, after=after, limit=page
        )
    ):
        delivered.notified += await send(ids, notify_text, DeliveryKind.NOTIFY)
    # Versions residents read exactly as this one (only the scope or expiry changed since):
    # whoever has one of those, or a region it was pushed to, needs no update.
    alike = await store.versions_reading_alike(conn, row)
    async for ids in _id_pages(
        lambda after: store.earlier_recipients(
            conn, row.id, version=row.version, alike=alike, after=after, limit=page
        )
    ):
        delivered.updated += await send(ids, update_text, DeliveryKind.UPDATE)
    if republished:
        # Everyone told of the withdrawal, and every audience it was pushed to, hear it is back.
        back_text = texts.render("rumors/republished", **values)
        back = f"republished:{int(now.timestamp() * 1000)}"
        async for ids in _id_pages(
            lambda after: store.recipients(
                conn, row.id, after=after, limit=page, kind=DeliveryKind.WITHDRAWN
            )
        ):
            delivered.updated += await send(ids, back_text, DeliveryKind.UPDATE, what=back)
        pushes = await store.list_pushes(conn, row.id)
        notice_text, via = back_text, "rumor-republished"
    else:
        # A correction notice to each audience whose latest push is of an earlier version
        # that reads differently (a correction already sent is recorded as a push of the
        # version it carried, so each audience gets each version's notice once).
        pushes = _pushes_behind(await store.list_pushes(conn, row.id), {row.version, *alike})
        notice_text, via = update_text, "rumor-update"
    delivered.notice_ids = await _notice_pushed_audiences(
        conn,
        row,
        pushes,
        editor=editor,
        text=notice_text,
        settings=settings,
        now=now,
        via=via,
        record=True,
    )
    return delivered


def _audience_key(audience: dict[str, Any]) -> str:
    return repr(sorted(audience.items()))


def _pushes_behind(pushes: Sequence[Any], current: set[int]) -> list[Any]:
    """The latest push to each audience, for the audiences whose latest push is of a version
    not in ``current``."""
    latest: dict[str, Any] = {}
    for push in pushes:
        key = _audience_key(push.audience)
        if key not in latest or push.version >= latest[key].version:
            latest[key] = push
    return sorted((p for p in latest.values() if p.version not in current), key=lambda p: int(p.id))


async def _id_pages(fetch: Callable[[int], Awaitable[list[int]]]) -> AsyncIterator[list[int]]:
    """Pages of person ids, ascending: ``fetch(after)`` gives the page after id ``after``."""
    after = 0
    while ids := await fetch(after):
        yield ids
        after = ids[-1]


async def _send(
    conn: AsyncConnection,
    db: Database,
    insert: Any,
    row: Any,
    person_ids: list[int],
    text: str,
    what: str,
    kind: str,
    now: datetime,
) -> int:
    """Queue ``text`` about clarification ``row`` to each of ``person_ids`` who can be reached
    (key ``rumor:<id>:<what>:<person>``) and record it as a delivery of the row's version of
    ``kind``; returns how many were queued."""
    targets = await store.current_targets(conn, person_ids)
    rows = [
        outbox_row(
            key=f"rumor:{row.id}:{what}:{pid}",
            target=target,
            payload={"text": text},
            person_id=pid,
            ref_type=REF_TYPE,
            ref_id=row.id,
        )
        for pid, target in targets.items()
    ]
    await enqueue(conn, rows, insert)
    await store.record_delivery(
        conn,
        db,
        clarification_id=row.id,
        person_ids=list(targets),
        version=row.version,
        kind=kind,
        now=now,
    )
    return len(targets)


async def _notice_pushed_audiences(
    conn: AsyncConnection,
    row: Any,
    pushes: Sequence[Any],
    *,
    editor: repo.PersonInfo,
    text: str,
    settings: Any,
    now: datetime,
    via: str,
    record: bool,
) -> list[int]:
    """A notice with ``text`` to each distinct audience of ``pushes`` (once each); ``record``
    notes it as a push of the current version (so that a later correction reaches it too)."""
    done: set[str] = set()
    notice_ids = []
    for push in pushes:
        audience = push.audience
        key = _audience_key(audience)
        if key in done:
            continue
        done.add(key)
        regions = [await repo.get_region(conn, rid) for rid in audience["region_ids"]]
        draft = notices.Draft(
            text=text,
            regions=tuple(r for r in regions if r is not None),
            groups=bool(audience["groups"]),
            individuals=bool(audience["individuals"]),
            roles=(),
            status=None,
            ack_required=False,
            urgent=False,
            send_at=None,
        )
        if not draft.regions:
            continue
        created = await notices.create_notice(
            conn, editor, draft, settings=settings, now=now, via=via
        )
        if record:
            await store.insert_push(
                conn,
                clarification_id=row.id,
                version=row.version,
                notice_id=created.notice_id,
                audience=audience,
                pushed_by=editor.id,
                pushed_at=now,
            )
        notice_ids.append(created.notice_id)
    return notice_ids


# -- review queue ----------------------------------------------------------------------------


async def find_review_item(
    conn: AsyncConnection, person: repo.PersonInfo, item_id: int, *, for_update: bool = False
) -> Any:
    """A review item some of whose askers live in the person's scope (``for_update``: locked
    on PostgreSQL until commit, so that reviewers resolve it one at a time)."""
    check_manager(person)
    item = await store.get_item(conn, item_id, for_update=for_update)
    if item is None or not await store.item_in_scope(conn, item_id, manager_paths(person)):
        raise RumorRefused("item_not_found", 404, id=item_id)
    return item


async def list_review(
    conn: AsyncConnection,
    person: repo.PersonInfo,
    *,
    status: str,
    limit: int,
    offset: int,
    via: str,
) -> list[Any]:
    """Review items asked about by people in the person's scope, most askers first.  What
    residents asked is personal data: the view is audited."""
    check_manager(person)
    rows = await store.list_items(
        conn, paths=manager_paths(person), status=status, limit=limit, offset=offset
    )
    await repo.record_audit(
        conn,
        actor_id=person.id,
        action="rumor.review.list",
        target_type="rumor_review_item",
        target_id=",".join(str(r.id) for r in rows)[:64],
        detail={"status": status, "count": len(rows), "offset": offset, "via": via},
    )
    return rows


async def attach_item(
    conn: AsyncConnection,
    db: Database,
    person: repo.PersonInfo,
    item_id: int,
    clarification_id: int,
    *,
    settings: Any,
    texts: Texts,
    now: datetime,
) -> Delivered:
    """Answer a review item with an existing clarification; its askers are told once it is
    published (now, if it is)."""
    item = await find_review_item(conn, person, item_id, for_update=True)
    if item.status != ReviewStatus.PENDING:
        raise RumorRefused("item_closed", 409, status=item.status)
    # Read only now, and locked until commit: an edit or a withdrawal that committed while this
    # waited for the item is what the askers get (or are spared), and none commits meanwhile.
    row = await find_visible(conn, person, clarification_id, for_update=True)
    if row.expires_at is not None and row.expires_at <= now:
        raise RumorRefused("expired", 409, attach=True)
    await _resolve(conn, item_id, clarification_id=row.id, by=person.id, now=now)
    left = await _leave_outside_for_review(conn, item_id, row.scope_path, now=now)
    await _audit(conn, person, "rumor.review.attach", row.id, {}, item_id=item_id, **left)
    if row.status != ClarificationStatus.PUBLISHED:
        return Delivered()
    return await deliver_current(
        conn, db, row, editor=person, settings=settings, texts=texts, now=now
    )


async def clarify_item(
    conn: AsyncConnection,
    db: Database,
    person: repo.PersonInfo,
    item_id: int,
    body: dict[str, Any],
    *,
    settings: Any,
    texts: Texts,
    now: datetime,
) -> tuple[int, Delivered]:
    """Create a clarification for a review item (its claim defaults to the item's sample),
    attach the item, and publish at once when ``"publish": true``."""
    item = await find_review_item(conn, person, item_id, for_update=True)
    if item.status != ReviewStatus.PENDING:
        raise RumorRefused("item_closed", 409, status=item.status)
    body = dict(body)
    publish = body.pop("publish", False)
    if not isinstance(publish, bool):
        raise RumorRefused("bad_flag", field="publish")
    body.setdefault("claim", item.sample[:MAX_CLAIM])
    clarification_id = await create_clarification(
        conn, db, person, body, settings=settings, now=now, via=f"review:{item_id}"
    )
    await _resolve(conn, item_id, clarification_id=clarification_id, by=person.id, now=now)
    created = await store.get_clarification(conn, clarification_id)
    assert created is not None
    left = await _leave_outside_for_review(conn, item_id, created.scope_path, now=now)
    await _audit(conn, person, "rumor.review.attach", clarification_id, {}, item_id=item_id, **left)
    if not publish:
        return clarification_id, Delivered()
    delivered = await publish_clarification(
        conn, db, person, clarification_id, settings=settings, texts=texts, now=now
    )
    return clarification_id, delivered


async def _resolve(
    conn: AsyncConnection,
    item_id: int,
    *,
    status: str = ReviewStatus.ATTACHED,
    clarification_id: int | None,
    by: int,
    now: datetime,
) -> None:
    """Close a pending item; refused (and the caller's transaction rolled back) when another
    reviewer closed it first."""
    if not await store.resolve_item(
        conn,
        item_id,
        status=status,
        clarification_id=clarification_id,
        by=by,
        now=now,
    ):
        closed = await store.get_item(conn, item_id)
        raise RumorRefused("item_closed", 409, status=closed.status if closed else "")


async def _leave_outside_for_review(
    conn: AsyncConnection, item_id: int, scope_path: str | None, *, now: datetime
) -> dict[str, int]:
    """Askers of an item answered with a clarification for one region who live elsewhere are
    not told by it: their questions stay in review as a new pending item (for the audit)."""
    if scope_path is None:
        return {}
    left = await store.split_off_outside(conn, item_id, scope_path=scope_path, now=now)
    return {} if left is None else {"left_for_review": left}


async def dismiss_item(
    conn: AsyncConnection, person: repo.PersonInfo, item_id: int, *, now: datetime
) -> None:
    """Not a rumor worth answering (chit-chat, an off-topic question)."""
    item = await find_review_item(conn, person, item_id, for_update=True)
    if item.status != ReviewStatus.PENDING:
        raise RumorRefused("item_closed", 409, status=item.status)
    await _resolve(
        conn, item_id, status=ReviewStatus.DISMISSED, clarification_id=None, by=person.id, now=now
    )
    await repo.record_audit(
        conn,
        actor_id=person.id,
        action="rumor.review.dismiss",
        target_type="rumor_review_item",
        target_id=item_id,
    )


# -- pushing to regions ----------------------------------------------------------------------


async def push_clarification(
    conn: AsyncConnection,
    person: repo.PersonInfo,
    clarification_id: int,
    *,
    region_codes: Sequence[str],
    groups: bool,
    individuals: bool,
    urgent: bool,
    settings: Any,
    texts: Texts,
    now: datetime,
) -> notices.Created:
    """Push a published clarification to regions in the caller's scope as a notice (same
    delivery, quiet hours, rate limits and receipts as any notice).  Queue it after commit."""
    row = await find_visible(conn, person, clarification_id)
    if row.status != ClarificationStatus.PUBLISHED:
        raise RumorRefused("not_published", 409)
    text = texts.render("rumors/push", **clarification_values(row, settings))
    try:
        draft = await notices.validate(
            conn,
            person,
            text=text,
            region_words=list(region_codes),
            groups=groups,
            individuals=individuals,
            urgent=urgent,
            now=now,
            max_chars=settings.notices.max_text_chars,
        )
    except notices.NoticeRefused as refused:
        raise RumorRefused(
            "push_refused",
            refused.http_status,
            message=texts.render(refused.template, **refused.values),
            why=refused.reason,
        ) from None
    if row.scope_path is not None:
        outside = [r.code for r in draft.regions if not r.path.startswith(row.scope_path)]
        if outside:
            raise RumorRefused("outside_clarification_scope", code=outside[0])
    created = await notices.create_notice(
        conn, person, draft, settings=settings, now=now, via="rumor"
    )
    audience = {
        "region_ids": [r.id for r in draft.regions],
        "groups": draft.groups,
        "individuals": draft.individuals,
    }
    await store.insert_push(
        conn,
        clarification_id=row.id,
        version=row.version,
        notice_id=created.notice_id,
        audience=audience,
        pushed_by=person.id,
        pushed_at=now,
    )
    await _audit(
        conn,
        person,
        "rumor.clarification.push",
        row.id,
        {},
        notice_id=created.notice_id,
        regions=[r.code for r in draft.regions],
    )
    return created


# -- report ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportLine:
    kind: str  # clarification | review_item
    id: int
    text: str
    verdict: str | None
    status: str
    asks: int
    people: int
    regions: tuple[tuple[str, str, int], ...]
    """(code, name, asks) per region right below the report's region, most asked first."""


@dataclass(frozen=True)
class Report:
    since: datetime
    until: datetime
    answered: tuple[ReportLine, ...]
    unanswered: tuple[ReportLine, ...]
    asks: int


async def report(
    conn: AsyncConnection,
    *,
    paths: Sequence[str],
    root: repo.RegionInfo | None,
    since: datetime,
    until: datetime,
    limit: int,
) -> Report:
    """The most asked claims in ``[since, until)`` by people living under ``paths``, answered
    and unanswered; with ``root``, each claim's questions per region right below it."""
    per_claim, per_region = await store.asked_counts(conn, paths=paths, since=since, until=until)

    def key_of(count: store.AskedCount) -> tuple[str, int]:
        if count.clarification_id is not None:
            return ("clarification", count.clarification_id)
        return ("review_item", int(count.item_id or 0))

    totals = {key_of(c): (c.asks, c.people) for c in per_claim}
    by_region: dict[tuple[str, int], dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for count in per_region:
        child = _child_below(root, count.region_path or "")
        if child is not None:
            by_region[key_of(count)][child] += count.asks

    def top(kind: str) -> list[tuple[str, int]]:
        keys = [k for k in totals if k[0] == kind]
        keys.sort(key=lambda k: (-totals[k][0], -totals[k][1], k[1]))
        return keys[:limit]

    answered_keys, unanswered_keys = top("clarification"), top("review_item")
    heads = await store.clarification_heads(conn, [k[1] for k in answered_keys])
    samples = await store.item_heads(conn, [k[1] for k in unanswered_keys])
    child_ids = {c for k in (*answered_keys, *unanswered_keys) for c in by_region[k]}
    children = {cid: await repo.get_region(conn, cid) for cid in sorted(child_ids)}

    def line(key: tuple[str, int]) -> ReportLine:
        kind, ident = key
        asks, people = totals[key]
        if kind == "clarification":
            head = heads[ident]
            text, verdict, status = head.claim, head.verdict, head.status
        else:
            sample = samples[ident]
            text, verdict, status = sample.sample, None, sample.status
        spread = sorted(by_region[key].items(), key=lambda item: (-item[1], item[0]))
        regions = tuple(
            (region.code, region.name, n)
            for cid, n in spread
            if (region := children.get(cid)) is not None
        )
        return ReportLine(kind, ident, text, verdict, status, asks, people, regions)

    return Report(
        since=since,
        until=until,
        answered=tuple(line(k) for k in answered_keys),
        unanswered=tuple(line(k) for k in unanswered_keys),
        asks=sum(t[0] for t in totals.values()),
    )


async def report_for(
    conn: AsyncConnection,
    person: repo.PersonInfo,
    *,
    region_code: str | None,
    days: int,
    limit: int,
    now: datetime,
    via: str,
) -> tuple[repo.RegionInfo | None, Report]:
    """The report for a staff member over the last ``days``: of ``region_code`` (which must
    lie in their scope), else of their whole scope (split by the regions below it when that is
    one region).  Audited."""
    if not person.has_role(*REPORT_ROLES):
        raise RumorRefused("not_allowed", 403)
    root: repo.RegionInfo | None = None
    if region_code is not None:
        root = await repo.get_region_by_code(conn, region_code)
        if root is None:
            raise RumorRefused("unknown_region", code=region_code[:64])
        if not person.can_act_on(root, *REPORT_ROLES):
            raise RumorRefused("out_of_scope", 403, everyone=False)
        paths = [root.path]
    else:
        paths = staff_paths(person)
        scopes = {r.path: r for r in person.scope_regions(*REPORT_ROLES)}
        if len(paths) == 1:
            root = scopes[paths[0]]
    since = now - timedelta(days=days)
    result = await report(conn, paths=paths, root=root, since=since, until=now, limit=limit)
    await repo.record_audit(
        conn,
        actor_id=person.id,
        action="rumor.report",
        target_type="region",
        target_id=root.code if root else ",".join(paths)[:64],
        region_id=root.id if root else None,
        detail={"days": days, "via": via},
    )
    return root, result


def _child_below(root: repo.RegionInfo | None, path: str) -> int | None:
    if root is None or not path.startswith(root.path):
        return None
    rest = path[len(root.path) :].strip("/")
    head = rest.split("/", 1)[0] if rest else ""
    return int(head) if head.isdigit() else None


# -- audit -----------------------------------------------------------------------------------


async def _audit(
    conn: AsyncConnection,
    person: repo.PersonInfo,
    action: str,
    clarification_id: int,
    changed: dict[str, Any],
    **detail: Any,
) -> None:
    fields = sorted(k for k in changed if k != "scope_path")
    await repo.record_audit(
        conn,
        actor_id=person.id,
        action=action,
        target_type="rumor_clarification",
        target_id=clarification_id,
        region_id=changed.get("region_id"),
        detail={"fields": fields, **detail} if fields else detail,
    )
