"""The dispatcher: one inbound message in, the replies out, everything else into the outbox.

Middlewares run in this order, inside one group-commit job (a share of a transaction that
many messages commit together), in three statements for a plain message:

1. **identify**: the sender's person, home region, roles and scopes (one statement), and the
   group chat if any.
2. **lock**: per-person serialization, taken *before* conversation state is read (a row lock on
   PostgreSQL; on SQLite the single writer lane serializes), in the statement that reads the
   state...
3. **dedupe**: ...which also reads the replies stored for this (channel, dedupe key).  A message
   handled before gets those replies and nothing runs again.  Across processes the unique key
   decides: the loser's insert fails, its job is rolled back and it answers with the winner's
   replies.
4. **errors**: a handler that raises fails its job, which rolls back every write of the
   message; the error is logged with context and the sender gets a neutral apology, logged
   like any reply so that a retry gets it again without running the handler twice.
5. **handler**: the active flow, else the first matching route; then the message is logged with
   its replies (the dedupe record).

Replies come back to the channel to answer inline.  If the channel's budget runs out first
(WeChat waits 5 s), :meth:`Dispatcher.handle` returns ``None`` and the replies go out through the
outbox once the job is done.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.config import Config
from bot.errors import ErrorReporter
from flows.context import Context
from flows.engine import FlowEngine
from flows.messages import Inbound, Outbound
from flows.texts import Texts
from handlers.router import Router
from storage import repo
from storage.db import Database, GroupCommitter
from storage.models import Identity, InboundMessage, utcnow
from storage.outbox import Target, enqueue, outbox, outbox_row, recipient_row

log = logging.getLogger(__name__)

inbound_log = InboundMessage.__table__
identities = Identity.__table__

MAX_LOGGED_TEXT = 4000
SEEN_REFRESH = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class Handled:
    replies: list[Outbound]
    duplicate: bool = False
    queued: int = 0


@dataclass(slots=True)
class _LateReply:
    """A message whose replies missed the inline window and will go through the outbox."""

    task: asyncio.Future[Handled]
    answered_inline: bool = False


class Dispatcher:
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
        self._late_by_key: dict[tuple[str, str], _LateReply] = {}
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
        self._log_insert = insert(inbound_log)
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
        late = self._late_by_key.get(key)
        if late is not None:
            # A platform retry while the first attempt is still being answered late: it may
            # carry the replies inline after all, and then the late path stands down.
            try:
                handled = await asyncio.wait_for(asyncio.shield(late.task), budget)
            except TimeoutError:
                return None
            late.answered_inline = True
            return handled.replies
        task = asyncio.ensure_future(self._run_chain(inbound))
        if budget is None:
            handled = await task
        else:
            try:
                handled = await asyncio.wait_for(asyncio.shield(task), budget)
            except TimeoutError:
                late = _LateReply(task)
                self._late_by_key[key] = late
                self._late.add(task)
                task.add_done_callback(lambda t: self._deliver_late(late, inbound))
                return None
        if handled.queued:
            self.on_queued()
        return handled.replies

    async def _run_chain(self, inbound: Inbound) -> Handled:
        """Steps 1-5 in one group-commit job; the error step around it.

        A failing handler fails its job, whose savepoint rolls back every write it made; the
        message is then logged with the apology in a second, tiny job, so that a platform
        retry gets the same apology instead of running the handler again.
        """
        lane = f"{inbound.channel}:{inbound.sender_id}"
        try:
            return await self.committer.run(
                lambda conn: self._process(conn, inbound), lane_key=lane
            )
        except sa_exc.IntegrityError as exc:
            # Most likely another process logged the same message first: answer as it did.
            seen = await self.committer.run(
                lambda conn: self._stored_replies(conn, inbound), lane_key=lane
            )
            if seen is not None:
                return seen
            failure: Exception = exc
        except Exception as exc:
            failure = exc
        self.errors.report(
            failure,
            where="dispatcher",
            channel=inbound.channel,
            dedupe_key=inbound.dedupe_key,
            sender=inbound.sender_id,
        )
        return await self.committer.run(
            lambda conn: self._log_apology(conn, inbound), lane_key=lane
        )

    async def _log_apology(self, conn: AsyncConnection, inbound: Inbound) -> Handled:
        seen = await self._stored_replies(conn, inbound)
        if seen is not None:
            return seen
        replies = [Outbound(self.texts.render("common/error"))]
        await self._log_inbound(conn, inbound, None, replies, utcnow())
        return Handled(replies)

    async def drain(self) -> None:
        """Wait for replies that missed their inline window to be queued (shutdown, tests)."""
        while self._late:
            await asyncio.gather(*list(self._late), return_exceptions=True)
            await asyncio.sleep(0)

    # -- late replies ------------------------------------------------------------------------

    def _deliver_late(self, late: _LateReply, inbound: Inbound) -> None:
        task = late.task
        self._late.discard(task)
        key = (inbound.channel, inbound.dedupe_key)
        if task.cancelled() or task.exception() is not None:
            self._late_by_key.pop(key, None)
            return

        async def queue(conn: AsyncConnection) -> None:
            if not late.answered_inline:
                await self._queue_late_replies(conn, inbound, task.result().replies)

        follow_up = asyncio.ensure_future(
            self.committer.run(queue, lane_key=f"{inbound.channel}:{inbound.sender_id}")
        )
        self._late.add(follow_up)
        follow_up.add_done_callback(self._late.discard)
        follow_up.add_done_callback(lambda _: self._late_by_key.pop(key, None))
        follow_up.add_done_callback(lambda _: self.on_queued())

    async def _queue_late_replies(
        self, conn: AsyncConnection, inbound: Inbound, replies: list[Outbound]
    ) -> None:
        """Send the replies through the outbox, unless a platform retry already got them."""
        row = await self._log_row(conn, inbound)
        if row is None or (row.replies or {}).get("delivery") != "pending":
            return
        await conn.execute(
            update(inbound_log)
            .where(inbound_log.c.id == row.id)
            .values(replies={**row.replies, "delivery": "outbox"})
        )
        target = self._reply_target(inbound)
        rows = [
            outbox_row(
                key=f"reply:{inbound.channel}:{inbound.dedupe_key}:{i}",
                target=target,
                payload={"text": reply.text},
            )
            for i, reply in enumerate(replies)
        ]
        await enqueue(conn, rows, self._outbox_insert)

    # -- the chain ---------------------------------------------------------------------------

    async def _log_row(self, conn: AsyncConnection, inbound: Inbound) -> Any:
        params = {"channel": inbound.channel, "dedupe_key": inbound.dedupe_key}
        return (await conn.execute(self._log_select, params)).first()

    def _replay(self, stored: dict[str, Any] | None) -> Handled:
        stored = stored or {}
        if stored.get("delivery") == "outbox":
            return Handled([], duplicate=True)  # the late replies are on their way
        return Handled([Outbound(text) for text in stored.get("texts", [])], duplicate=True)

    async def _process(self, conn: AsyncConnection, inbound: Inbound) -> Handled:
        now = utcnow()
        # 1. identify (one statement: identity, person, home region, roles and scopes)
        found = await repo.person_by_identity(conn, inbound.channel, inbound.sender_id)
        person = found[2] if found else None
        group = (
            await repo.find_group(conn, inbound.channel, inbound.chat_id)
            if inbound.chat_id
            else None
        )
        person_id = person.id if person else None
        # 2. lock, then read state; 3. dedupe, in the same statement
        key = f"p:{person_id}" if person_id else f"anon:{inbound.channel}:{inbound.sender_id}"
        conversation, stored = await self._checked_lock.run(
            conn, key, channel=inbound.channel, dedupe_key=inbound.dedupe_key
        )
        if stored is not None:
            return self._replay(stored)
        if found is not None and (found[1] is None or now - found[1] > SEEN_REFRESH):
            await conn.execute(self._seen_update, {"identity_id": found[0], "now": now})
        return await self._handle_new(conn, inbound, person, group, key, conversation, now)

    async def _stored_replies(self, conn: AsyncConnection, inbound: Inbound) -> Handled | None:
        row = await self._log_row(conn, inbound)
        return None if row is None else self._replay(row.replies)

    async def _handle_new(
        self,
        conn: AsyncConnection,
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
        # 4. errors: see _run_chain.  5. handler
        await self._route(ctx)
        if ctx.person is not None and person is None:
            # Registered during this message: the conversation moves to the person.
            conversation.key = f"p:{ctx.person.id}"
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
        await self._log_inbound(conn, inbound, ctx.person.id if ctx.person else None, replies, now)
        return Handled(replies, queued=queued)

    async def _log_inbound(
        self,
        conn: AsyncConnection,
        inbound: Inbound,
        person_id: int | None,
        replies: list[Outbound],
        now: datetime,
    ) -> None:
        await conn.execute(
            self._log_insert,
            {
                "channel": inbound.channel,
                "dedupe_key": inbound.dedupe_key,
                "sender_id": inbound.sender_id,
                "chat_id": inbound.chat_id,
                "person_id": person_id,
                "kind": inbound.kind,
                "text": inbound.text[:MAX_LOGGED_TEXT],
                "replies": {"texts": [r.text for r in replies], "delivery": "pending"},
                "received_at": now,
            },
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
            key = message.key or f"msg:{ctx.inbound.channel}:{ctx.inbound.dedupe_key}:{i}"
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
