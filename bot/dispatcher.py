"""The dispatcher: one inbound message in, the replies out, everything else into the outbox.

Middlewares run in this order, inside one group-commit job (a share of a transaction that
many messages commit together):

1. **identify**: the sender's person, home region, roles and scopes, and the group chat if any.
2. **lock**: per-person serialization, taken *before* conversation state is read (a row lock on
   PostgreSQL; on SQLite the single writer lane serializes), in the statement that reads the
   state.
3. **dedupe**: the replies stored for this (channel, dedupe key).  A message handled before gets
   those replies and nothing runs again.  Across processes the unique key decides: the loser's
   insert fails, its job is rolled back and it answers with the winner's replies.
4. **errors**: a handler that raises fails its job, which rolls back every write of the
   message; the error is logged with context and the sender gets a neutral apology, logged
   like any reply so that a retry gets it again without running the handler twice.
5. **handler**: the active flow, else the first matching route; then the message is logged with
   its replies (the dedupe record).

The dispatcher is a :class:`~storage.db.BatchStep`: steps 1-3 are read for every message of a
batch at once (one statement each for the whole batch), and the inbound log of the batch is
written in one statement before the commit.  A message whose sender or conversation was
already handled earlier in the same batch reads them again itself, after the earlier message's
writes, so that batching never changes what a message sees.

Replies come back to the channel to answer inline.  If the channel's budget runs out first
(WeChat waits 5 s), :meth:`Dispatcher.handle` returns ``None`` and the replies go out through the
outbox once the job is done.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, func, insert, select, true, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.config import Config
from bot.errors import ErrorReporter
from flows.context import Context
from flows.engine import FlowEngine
from flows.messages import Inbound, Outbound
from flows.texts import Texts
from handlers.router import Router
from storage import repo
from storage.db import BatchStep, Database, GroupCommitter, any_of, each_of
from storage.models import Identity, InboundMessage, utcnow
from storage.outbox import Target, answer_key, enqueue, outbox, outbox_row, recipient_row
from storage.storable import fit_key

log = logging.getLogger(__name__)

inbound_log = InboundMessage.__table__
identities = Identity.__table__

MAX_LOGGED_TEXT = 4000
LOG_KEY_LENGTH = 200  # inbound_messages.dedupe_key
LOG_COLUMNS = [
    inbound_log.c[name]
    for name in (
        "channel",
        "dedupe_key",
        "sender_id",
        "chat_id",
        "person_id",
        "kind",
        "text",
        "replies",
        "received_at",
    )
]
SEEN_REFRESH = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class Handled:
    replies: list[Outbound]
    duplicate: bool = False
    queued: int = 0


@dataclass(slots=True)
class _InFlight:
    """A message being handled in this process.  Repeats of it that arrive meanwhile (a
    platform retry) wait for the same outcome instead of running the chain again.

    The replies go out exactly one way, decided synchronously in the event loop: ``inline``
    when an attempt is still waiting as the outcome arrives (every waiting attempt answers
    with them), else ``outbox`` (the first attempt ran out of its budget and nobody else was
    waiting), after which repeats answer nothing because the replies are on their way.
    """

    outcome: asyncio.Future[Handled]
    claimed: str | None = None


@dataclass(slots=True)
class _Work:
    """One item of the dispatcher's batch step: a message to handle (``handle``), an apology to
    log after a failure (``apologize``), the replies already stored (``replay``), or late
    ``replies`` to queue (``queue_late``)."""

    kind: str
    inbound: Inbound
    replies: list[Outbound] = field(default_factory=list)


@dataclass(slots=True)
class _Batch:
    """What the messages of one group-commit batch share: read for all of them at the start,
    written for all of them at the end."""

    people: dict[tuple[str, str], repo.FoundPerson]  # by (channel, sender id)
    groups: dict[tuple[str, str], Any]  # by (channel, chat id)
    states: dict[str, repo.ConversationState]
    stored: dict[tuple[str, str], Any]
    # Inbound log rows of this batch, inserted by finish(); by (channel, dedupe key) for dedupe
    # within the batch.
    logged: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    log_rows: list[dict[str, Any]] = field(default_factory=list)
    seen: list[dict[str, Any]] = field(default_factory=list)
    # What earlier messages of the batch may have changed: their senders, their conversation
    # keys and log rows updated in place.  A later message touching any of these reads again.
    senders: set[tuple[str, str]] = field(default_factory=set)
    keys: set[str] = field(default_factory=set)
    changed_logs: set[tuple[str, str]] = field(default_factory=set)


def _time_out(answer: asyncio.Future[bool | None]) -> None:
    if not answer.done():
        answer.set_result(None)


def _pass_on(source: asyncio.Future[Handled], target: asyncio.Future[Handled]) -> None:
    """Give ``target`` the outcome of ``source`` (done)."""
    if source.cancelled():
        target.cancel()
    elif (failure := source.exception()) is not None:
        target.set_exception(failure)
    else:
        target.set_result(source.result())


def _log_key(inbound: Inbound) -> str:
    """The message's dedupe key as the inbound log stores it: a digest if it is too long."""
    return fit_key(inbound.dedupe_key, LOG_KEY_LENGTH)


def _lane_key(inbound: Inbound) -> str:
    """Messages of one sender share a group-commit lane, so they are handled in order."""
    return f"{inbound.channel}:{inbound.sender_id}"


class Dispatcher(BatchStep[_Work, _Batch, Any]):
    """Runs the middleware chain for each inbound message."""

    def __init__(
        self,
        *,
        config: Config,
        db: Database,
        committer: GroupCommitter,
        router: Router,
        flows: FlowEngine,
        texts: Texts,
        errors: ErrorReporter,
    ) -> None:
        self.config = config
        self.db = db
        self.committer = committer
        self.router = router
        self.flows = flows
        self.texts = texts
        self.errors = errors
        self.features = frozenset(router.features)
        self.on_queued: Callable[[], None] = lambda: None
        self._late: set[asyncio.Future[Any]] = set()
        self._recovering: set[asyncio.Future[Handled]] = set()
        self._in_flight: dict[tuple[str, str], _InFlight] = {}
        self._conv_insert = db.insert_ignore(repo.conversations)
        self._outbox_insert = db.insert_ignore(outbox)
        self._conv_upsert = db.upsert(
            repo.conversations, ["key"], ["flow", "state", "data", "expires_at", "updated_at"]
        )
        # Hot-path statements are built once: building one costs more than running it.
        self._log_select = select(inbound_log.c.id, inbound_log.c.replies).where(
            inbound_log.c.channel == bindparam("channel"),
            inbound_log.c.dedupe_key == bindparam("dedupe_key"),
        )
        self._checked_lock = repo.CheckedLock(
            select(inbound_log.c.replies)
            .where(
                inbound_log.c.channel == bindparam("channel"),
                inbound_log.c.dedupe_key == bindparam("dedupe_key"),
            )
            .scalar_subquery(),
            row_lock=not db.is_sqlite,
            insert_ignore=self._conv_insert,
        )
        self._locks = repo.ConversationLocks(row_lock=not db.is_sqlite)
        self._logs_select: Any
        if db.is_sqlite:
            self._logs_select = select(inbound_log.c.dedupe_key, inbound_log.c.replies).where(
                inbound_log.c.channel == bindparam("channel"),
                any_of(inbound_log.c.dedupe_key, "keys"),
            )
        else:  # each key looked up in the unique index, whatever the statistics (see each_of)
            wanted = each_of("keys")
            found = (
                select(inbound_log.c.dedupe_key, inbound_log.c.replies)
                .where(
                    inbound_log.c.channel == bindparam("channel"),
                    inbound_log.c.dedupe_key == wanted.c.key,
                )
                .limit(1)
                .lateral("found")
            )
            self._logs_select = select(found.c.dedupe_key, found.c.replies).select_from(
                wanted.join(found, true())
            )
        self._log_insert: Any = insert(inbound_log)
        if not db.is_sqlite:
            # One INSERT ... SELECT FROM unnest(column arrays) for the whole batch: PostgreSQL
            # runs one statement instead of one per row (SQLite's executemany is one call).
            columns = [c.name for c in LOG_COLUMNS]
            rows = (
                func.unnest(
                    *(bindparam(c.name, type_=postgresql.ARRAY(c.type)) for c in LOG_COLUMNS)
                )
                .table_valued(*columns)
                .render_derived("batch")
            )
            self._log_insert = insert(inbound_log).from_select(columns, select(*rows.c))
        self._seen_update = (
            update(identities)
            .where(identities.c.id == bindparam("identity_id"))
            .values(last_seen_at=bindparam("now"))
        )

    async def handle(
        self, inbound: Inbound, *, budget: float | None = None
    ) -> list[Outbound] | None:
        """Handle one message; the replies to answer inline, or ``None`` if over ``budget``."""
        key = (inbound.channel, inbound.dedupe_key)
        loop = asyncio.get_running_loop()
        flight = self._in_flight.get(key)
        if flight is None:
            flight = _InFlight(self._start_chain(inbound))
            self._in_flight[key] = flight
            # Runs before any waiter's callback; _settle itself runs after all of them.
            flight.outcome.add_done_callback(
                lambda _: loop.call_soon(self._settle, key, flight, inbound)
            )
        # (A repeat arriving while the first attempt is in flight waits for the same outcome.)
        answer: asyncio.Future[bool | None] = loop.create_future()

        def on_done(outcome: asyncio.Future[Handled]) -> None:
            if answer.done():  # this attempt stopped waiting
                return
            if outcome.cancelled() or outcome.exception() is not None:
                answer.set_result(None)
                return
            if flight.claimed is None:
                flight.claimed = "inline"
            answer.set_result(flight.claimed == "inline")

        timer = None
        if budget is not None:
            timer = loop.call_later(budget, _time_out, answer)
        if flight.outcome.done():
            on_done(flight.outcome)
        else:
            flight.outcome.add_done_callback(on_done)
        try:
            inline = await answer
        finally:
            if timer is not None:
                timer.cancel()
        if inline is None:
            if flight.outcome.done():
                flight.outcome.result()  # raises the failure
            self._late.add(flight.outcome)  # for drain()
            flight.outcome.add_done_callback(self._late.discard)
            return None
        return flight.outcome.result().replies if inline else []

    def _start_chain(self, inbound: Inbound) -> asyncio.Future[Handled]:
        """Steps 1-5 in one group-commit job; the error step if it fails (:meth:`_recover`).

        The job's result is the message's outcome, passed on by a callback: no task of its
        own for a message unless its job fails.
        """
        job = self.committer.submit_step(
            self, _Work("handle", inbound), lane_key=_lane_key(inbound)
        )
        outcome: asyncio.Future[Handled] = asyncio.get_running_loop().create_future()

        def on_job_done(job: asyncio.Future[Handled]) -> None:
            failure = None if job.cancelled() else job.exception()
            if not isinstance(failure, Exception):
                _pass_on(job, outcome)
                return
            recovery = asyncio.ensure_future(self._recover(inbound, failure))
            self._recovering.add(recovery)
            recovery.add_done_callback(self._recovering.discard)
            recovery.add_done_callback(lambda _: _pass_on(recovery, outcome))

        job.add_done_callback(on_job_done)
        return outcome

    async def _recover(self, inbound: Inbound, failure: Exception) -> Handled:
        """The error step, after the message's job failed and its batch was rolled back.

        The message is then logged with the apology in a second, tiny job, so that a platform
        retry gets the same apology instead of running the handler again.
        """
        lane = _lane_key(inbound)
        if isinstance(failure, sa_exc.IntegrityError):
            # Most likely another process logged the same message first: answer as it did.
            seen: Handled | None = await self.committer.run_step(
                self, _Work("replay", inbound), lane_key=lane
            )
            if seen is not None:
                return seen
        self.errors.report(
            failure,
            where="dispatcher",
            channel=inbound.channel,
            dedupe_key=inbound.dedupe_key,
            sender=inbound.sender_id,
        )
        apology: Handled = await self.committer.run_step(
            self, _Work("apologize", inbound), lane_key=lane
        )
        return apology

    async def drain(self) -> None:
        """Wait for replies that missed their inline window to be queued (shutdown, tests)."""
        while self._late:
            await asyncio.gather(*list(self._late), return_exceptions=True)
            await asyncio.sleep(0)

    # -- late replies ------------------------------------------------------------------------

    def _settle(self, key: tuple[str, str], flight: _InFlight, inbound: Inbound) -> None:
        """After every attempt waiting for ``flight`` has had its answer: if none took the
        replies inline, they go out through the outbox."""
        outcome = flight.outcome
        if outcome.cancelled() or outcome.exception() is not None:
            self._in_flight.pop(key, None)
            return
        handled = outcome.result()
        if handled.queued:
            self.on_queued()
        if flight.claimed is not None or handled.duplicate:
            # Answered inline; or a replay of a message handled before, whose replies were
            # answered (or queued) the first time.
            self._in_flight.pop(key, None)
            return
        flight.claimed = "outbox"
        follow_up = asyncio.ensure_future(
            self.committer.run_step(
                self,
                _Work("queue_late", inbound, handled.replies),
                lane_key=_lane_key(inbound),
            )
        )
        self._late.add(follow_up)
        follow_up.add_done_callback(self._late.discard)
        follow_up.add_done_callback(lambda _: self._in_flight.pop(key, None))
        follow_up.add_done_callback(lambda _: self.on_queued())

    async def _queue_late_replies(
        self, conn: AsyncConnection, batch: _Batch, inbound: Inbound, replies: list[Outbound]
    ) -> None:
        """Send the replies through the outbox, unless a retry to another process got them."""
        # The message committed in an earlier batch: its log row is in the database.
        row = await self._log_row(conn, inbound)
        if row is None or (row.replies or {}).get("delivery") != "pending":
            return
        batch.changed_logs.add((inbound.channel, inbound.dedupe_key))
        await conn.execute(
            update(inbound_log)
            .where(inbound_log.c.id == row.id)
            .values(replies={**row.replies, "delivery": "outbox"})
        )
        target = self._reply_target(inbound)
        rows = [
            outbox_row(
                key=answer_key("reply", inbound.channel, inbound.dedupe_key, i),
                target=target,
                payload={"text": reply.text},
            )
            for i, reply in enumerate(replies)
        ]
        await enqueue(conn, rows, self._outbox_insert)

    # -- the chain ---------------------------------------------------------------------------

    async def _log_row(self, conn: AsyncConnection, inbound: Inbound) -> Any:
        params = {"channel": inbound.channel, "dedupe_key": _log_key(inbound)}
        return (await conn.execute(self._log_select, params)).first()

    def _replay(self, stored: dict[str, Any] | None) -> Handled:
        stored = stored or {}
        if stored.get("delivery") == "outbox":
            return Handled([], duplicate=True)  # the late replies are on their way
        return Handled([Outbound(text) for text in stored.get("texts", [])], duplicate=True)

    # -- the batch step ----------------------------------------------------------------------

    async def prepare(self, conn: AsyncConnection, items: list[_Work]) -> _Batch:
        """Steps 1-3 for every message of the batch: identify, lock then read the
        conversations, read the stored replies; one statement each."""
        by_channel: dict[str, list[Inbound]] = {}
        for item in items:
            if item.kind == "handle":
                by_channel.setdefault(item.inbound.channel, []).append(item.inbound)
        people: dict[tuple[str, str], repo.FoundPerson] = {}
        groups: dict[tuple[str, str], Any] = {}
        stored: dict[tuple[str, str], Any] = {}
        keys: list[str] = []
        for channel, messages in by_channel.items():
            senders = list(dict.fromkeys(m.sender_id for m in messages))
            found = await repo.people_by_identities(conn, channel, senders)
            people.update(((channel, sender), person) for sender, person in found.items())
            chats = list(dict.fromkeys(m.chat_id for m in messages if m.chat_id))
            for chat, group in (await repo.find_groups(conn, channel, chats)).items():
                groups[(channel, chat)] = group
            keys.extend(self._conversation_key(found.get(m.sender_id), m) for m in messages)
        states = await self._locks.run(conn, keys)
        # After the locks: a message another process logged while we waited is seen here.
        for channel, messages in by_channel.items():
            wanted = {_log_key(m): m.dedupe_key for m in messages}
            params = {"channel": channel, "keys": list(wanted)}
            for log_key, replies in await conn.execute(self._logs_select, params):
                stored[(channel, wanted[log_key])] = replies
        return _Batch(people, groups, states, stored)

    async def run(self, conn: AsyncConnection, shared: _Batch, item: _Work) -> Any:
        if item.kind == "handle":
            return await self._process(conn, shared, item.inbound)
        if item.kind == "replay":
            return await self._stored_replies(conn, shared, item.inbound)
        if item.kind == "apologize":
            return await self._log_apology(conn, shared, item.inbound)
        assert item.kind == "queue_late"
        return await self._queue_late_replies(conn, shared, item.inbound, item.replies)

    async def finish(self, conn: AsyncConnection, shared: _Batch) -> None:
        """The batch's inbound log (the dedupe records) and last-seen times, one statement
        each."""
        if shared.log_rows:
            if self.db.is_sqlite:
                await conn.execute(self._log_insert, shared.log_rows)
            else:
                columns = {c.name: [row[c.name] for row in shared.log_rows] for c in LOG_COLUMNS}
                await conn.execute(self._log_insert, columns)
        if shared.seen:
            await conn.execute(self._seen_update, shared.seen)

    # -- the chain ---------------------------------------------------------------------------

    @staticmethod
    def _conversation_key(found: repo.FoundPerson | None, inbound: Inbound) -> str:
        if found is not None:
            return f"p:{found[2].id}"
        return f"anon:{inbound.channel}:{inbound.sender_id}"

    async def _process(self, conn: AsyncConnection, batch: _Batch, inbound: Inbound) -> Handled:
        now = utcnow()
        account = (inbound.channel, inbound.sender_id)
        log_key = (inbound.channel, inbound.dedupe_key)
        logged = batch.logged.get(log_key)
        if logged is not None:  # the same message earlier in this batch
            return self._replay(logged)
        found = batch.people.get(account)
        key = self._conversation_key(found, inbound)
        group: Any = None
        if account in batch.senders or key in batch.keys or log_key in batch.changed_logs:
            # An earlier message of this batch may have changed what was read for this one
            # (registered the sender, moved on the conversation): read it again, after those
            # writes.  1. identify
            found = await repo.person_by_identity(conn, inbound.channel, inbound.sender_id)
            key = self._conversation_key(found, inbound)
            if inbound.chat_id:
                group = await repo.find_group(conn, inbound.channel, inbound.chat_id)
            # 2. lock, then read state; 3. dedupe, in the same statement
            conversation, stored = await self._checked_lock.run(
                conn, key, channel=inbound.channel, dedupe_key=_log_key(inbound)
            )
        else:
            # Read for the whole batch by prepare(): 1. identify, 2. lock, then read, 3. dedupe
            if inbound.chat_id:
                group = batch.groups.get((inbound.channel, inbound.chat_id))
            conversation = batch.states[key]
            stored = batch.stored.get(log_key)
        batch.senders.add(account)
        batch.keys.add(key)
        if stored is not None:
            return self._replay(stored)
        if found is not None and (found[1] is None or now - found[1] > SEEN_REFRESH):
            batch.seen.append({"identity_id": found[0], "now": now})
        person = found[2] if found else None
        return await self._handle_new(conn, batch, inbound, person, group, key, conversation, now)

    async def _stored_replies(
        self, conn: AsyncConnection, batch: _Batch, inbound: Inbound
    ) -> Handled | None:
        logged = batch.logged.get((inbound.channel, inbound.dedupe_key))
        if logged is not None:
            return self._replay(logged)
        row = await self._log_row(conn, inbound)
        return None if row is None else self._replay(row.replies)

    async def _log_apology(self, conn: AsyncConnection, batch: _Batch, inbound: Inbound) -> Handled:
        seen = await self._stored_replies(conn, batch, inbound)
        if seen is not None:
            return seen
        replies = [Outbound(self.texts.render("common/error"))]
        self._log_inbound(batch, inbound, None, replies, utcnow())
        return Handled(replies)

    async def _handle_new(
        self,
        conn: AsyncConnection,
        batch: _Batch,
        inbound: Inbound,
        person: repo.PersonInfo | None,
        group: Any,
        key: str,
        conversation: repo.ConversationState,
        now: datetime,
    ) -> Handled:
        before = (
            conversation.flow,
            conversation.state,
            dict(conversation.data),
            conversation.expires_at,
        )
        ctx = Context(
            conn=conn,
            db=self.db,
            inbound=inbound,
            person=person,
            conversation=conversation,
            texts=self.texts,
            settings=self.config,
            now=now,
            flows=self.flows,
            group=group,
            features=self.features,
        )
        # 4. errors: see _recover.  5. handler
        await self._route(ctx)
        if ctx.person is not None and person is None:
            # Registered during this message: the conversation moves to the person.
            conversation.key = f"p:{ctx.person.id}"
            batch.keys.add(conversation.key)
            await repo.move_conversation(conn, key, conversation.key)
        state_now = (
            conversation.flow,
            conversation.state,
            conversation.data,
            conversation.expires_at,
        )
        if state_now != before:
            await repo.save_conversation(conn, conversation, upsert=self._conv_upsert)
        replies, queued = await self._queue_outbound(ctx)
        self._log_inbound(batch, inbound, ctx.person.id if ctx.person else None, replies, now)
        return Handled(replies, queued=queued)

    @staticmethod
    def _log_inbound(
        batch: _Batch,
        inbound: Inbound,
        person_id: int | None,
        replies: list[Outbound],
        now: datetime,
    ) -> None:
        """Log the message with its replies (the dedupe record), written by :meth:`finish`."""
        stored = {"texts": [r.text for r in replies], "delivery": "pending"}
        batch.logged[(inbound.channel, inbound.dedupe_key)] = stored
        batch.log_rows.append(
            {
                "channel": inbound.channel,
                "dedupe_key": _log_key(inbound),
                "sender_id": inbound.sender_id,
                "chat_id": inbound.chat_id,
                "person_id": person_id,
                "kind": inbound.kind,
                "text": inbound.text[:MAX_LOGGED_TEXT],
                "replies": stored,
                "received_at": now,
            }
        )

    async def _route(self, ctx: Context) -> None:
        # Events (menu clicks, subscribe, enter_agent) are never answers to a flow's question.
        resumable = not ctx.inbound.is_group and ctx.inbound.kind != "event"
        if resumable and await self.flows.resume(ctx):
            return
        handler = self.router.find(ctx)
        if handler is not None:
            await handler(ctx)

    async def _queue_outbound(self, ctx: Context) -> tuple[list[Outbound], int]:
        """Split the flow's messages: replies come back; the rest become outbox rows."""
        replies: list[Outbound] = []
        rows = []
        for i, message in enumerate(ctx.outbound):
            if message.is_reply:
                replies.append(message)
                continue
            key = message.key or answer_key("msg", ctx.inbound.channel, ctx.inbound.dedupe_key, i)
            row = await recipient_row(
                ctx.conn,
                key=key,
                text=message.text,
                person_id=message.person_id,
                group_id=message.group_id,
            )
            if row is None:
                log.info("no reachable target for %s; not queued", message)
                continue
            rows.append(row)
        await enqueue(ctx.conn, rows, self._outbox_insert)
        return replies, len(rows)

    def _reply_target(self, inbound: Inbound) -> Target:
        if inbound.chat_id:
            return Target(inbound.channel, "chat", inbound.chat_id)
        return Target(inbound.channel, "user", inbound.sender_id)
