"""The delivery worker: claims due outbox rows in batches and sends them through channels.

Claims are one statement (``FOR UPDATE SKIP LOCKED`` on PostgreSQL), so several workers in
several processes share the queue without sending a row twice.  Per-target rate limits are
counted from the outbox itself (rows sent to the same target in the last minute, and rows
another worker claimed in it and is still sending), so they hold across processes too.
Failures retry with exponential backoff and jitter; after ``max_attempts`` a row is dead.

A claimed text longer than its channel takes (the table in ``flows.notices``) is split there
and then into numbered parts, as notices are: the row keeps the first part and each other part
becomes a row of its own, so every part is sent once however often a send is retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
from collections import defaultdict
from datetime import datetime, timedelta

from bot.channels.base import Sender, SendResult
from bot.config import OutboxConfig
from bot.errors import ErrorReporter
from flows.notices import Limit, channel_limits, limit_for, part_labeller, split_text
from flows.texts import Texts
from storage import outbox as repo
from storage.db import Database
from storage.models import utcnow
from storage.outbox import ClaimedMessage

log = logging.getLogger(__name__)

RATE_WINDOW = timedelta(minutes=1)


class DeliveryWorker:
    """Runs in the app's lifecycle; ``run_once`` is also what tests and the CLI call."""

    def __init__(
        self,
        db: Database,
        senders: dict[str, Sender],
        config: OutboxConfig,
        errors: ErrorReporter,
        *,
        limits: dict[str, Limit] | None = None,
        texts: Texts | None = None,
        part_gap_s: float = 2.0,
        rng: random.Random | None = None,
    ) -> None:
        self.db = db
        self.senders = senders
        self.config = config
        self.errors = errors
        self.limits = limits if limits is not None else channel_limits({})
        self.part_label = part_labeller(texts or Texts())
        self.part_gap = timedelta(seconds=part_gap_s)
        self.rng = rng or random.Random()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._semaphore = asyncio.Semaphore(config.send_concurrency)

    def wake(self) -> None:
        """Something was queued: look now instead of at the next poll."""
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="outbox-delivery")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _loop(self) -> None:
        while True:
            try:
                handled = await self.run_once()
            except Exception as exc:  # a database hiccup must not stop delivery for good
                self.errors.report(exc, where="delivery")
                handled = 0
            if handled < self.config.batch_size:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.config.poll_interval_s)

    async def run_once(self) -> int:
        """Claim one batch of due rows and attempt them; returns how many were claimed."""
        now = utcnow()
        async with self.db.write() as conn:
            claimed = await repo.claim_due(
                conn,
                limit=self.config.batch_size,
                claim_timeout=timedelta(seconds=self.config.claim_timeout_s),
                skip_locked=not self.db.is_sqlite,
                now=now,
            )
            if not claimed:
                return 0
            claimed = [await self._fit(conn, message, now) for message in claimed]
            to_send, deferred = await self._apply_rate_limits(conn, claimed, now)
            await repo.release(conn, deferred, not_before=now + RATE_WINDOW / 4)
        results = await asyncio.gather(*(self._attempt(m) for m in to_send))
        await self._record(list(zip(to_send, results, strict=True)))
        return len(claimed)

    async def _fit(self, conn: object, message: ClaimedMessage, now: datetime) -> ClaimedMessage:
        """The message as it goes out: a plain text over its channel's limit is split, and the
        message carries its first part (template and subscribe messages are left alone)."""
        payload = message.payload
        text = payload.get("text")
        if not isinstance(text, str) or "template" in payload or "subscribe" in payload:
            return message
        limit = limit_for(self.limits, message.channel, message.target.kind)
        parts = split_text(text, limit, self.part_label)
        if len(parts) == 1:
            return message
        await repo.split_row(conn, message, parts, now=now, gap=self.part_gap)  # type: ignore[arg-type]
        return dataclasses.replace(message, payload={**payload, "text": parts[0]})

    async def _apply_rate_limits(
        self, conn: object, claimed: list[ClaimedMessage], now: object
    ) -> tuple[list[ClaimedMessage], list[int]]:
        by_target: dict[str, list[ClaimedMessage]] = defaultdict(list)
        for message in claimed:
            by_target[message.target.rate_key].append(message)
        recent = await repo.recent_sends(
            conn,  # type: ignore[arg-type]
            by_target,
            since=utcnow() - RATE_WINDOW,
            own_claims=[m.id for m in claimed],
        )
        to_send: list[ClaimedMessage] = []
        deferred: list[int] = []
        for rate_key, messages in by_target.items():
            limit = self._limit_for(messages[0])
            room = max(0, limit - recent.get(rate_key, 0))
            to_send.extend(messages[:room])
            deferred.extend(m.id for m in messages[room:])
        return to_send, deferred

    def _limit_for(self, message: ClaimedMessage) -> int:
        sender = self.senders.get(message.channel)
        limit = sender.rate_per_minute(message) if sender else None
        if limit is None:
            limit = (
                self.config.robot_rate_per_minute
                if message.target.kind == "robot"
                else self.config.default_rate_per_minute
            )
        return limit

    async def _attempt(self, message: ClaimedMessage) -> SendResult:
        sender = self.senders.get(message.channel)
        if sender is None:
            return SendResult.transient(f"channel {message.channel} is not enabled")
        async with self._semaphore:
            try:
                return await sender.send(message)
            except Exception as exc:  # a sender bug or a network error: retry later
                log.warning("send of outbox row %s raised %r", message.id, exc)
                return SendResult.transient(f"{exc.__class__.__name__}: {exc}")

    async def _record(self, outcomes: list[tuple[ClaimedMessage, SendResult]]) -> None:
        if not outcomes:
            return
        now = utcnow()
        async with self.db.write() as conn:
            await repo.mark_sent(
                conn,
                [(m.id, r.platform_msg_id) for m, r in outcomes if r.ok],
                now=now,
            )
            for message, result in outcomes:
                if result.ok:
                    continue
                retry_at = None
                if result.retry and message.attempts < self.config.max_attempts:
                    delay = result.retry_after or repo.backoff_delay(
                        message.attempts,
                        base=self.config.backoff_base_s,
                        cap=self.config.backoff_max_s,
                        rng=self.rng,
                    )
                    retry_at = now + timedelta(seconds=delay)
                dead = result.dead or (result.retry and retry_at is None)
                recorded = await repo.mark_failed(
                    conn, message, error=result.error, retry_at=retry_at, dead=dead
                )
                if recorded and retry_at is None:
                    log.warning(
                        "outbox row %s (%s) %s: %s",
                        message.id,
                        message.key,
                        "dead" if dead else "failed",
                        result.error,
                    )
