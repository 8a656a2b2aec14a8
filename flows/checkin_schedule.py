"""The check-in clock: what is due at ``now`` and the outbox rows it makes.

Called every minute by the scheduler (``bot.checkin_jobs``) and directly by tests with a given
``now``.  Every outbox row has a deterministic key (person, day, kind), so two schedulers, a
restart or a rerun never send anything twice; each batch done (a grid's morning prompt, a
reminder, a summary, a quarantine slot) is also marked in ``checkin_runs`` so later ticks skip
it without touching the outbox.

* prompt at ``prompt_at`` to every reachable resident of the grid;
* reminders at each ``reminders`` time to those without a complete record that day (when the
  scheduler catches up late, only the latest due reminder goes, and none in the same tick as
  the prompt);
* a summary to the grid's wardens at ``summary_at``;
* nothing to residents in quiet hours: a push that falls there waits for their end, and a
  prompt or reminder that would only arrive the next day is dropped;
* quarantine: prompts at each slot of every day of the period, an alert to the warden when a
  slot is still unanswered ``missed_after_minutes`` later, and the release message on the day
  after the period;
* escalation of unacknowledged alerts.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from flows.checkin_alerts import escalate_due
from flows.checkin_config import CheckinConfig
from flows.checkin_push import (
    GridSchedule,
    at_local,
    grid_schedules,
    local_time,
    push_to_person,
    quiet_end,
    schedule_of,
)
from flows.texts import Texts
from storage import checkin as store
from storage import repo
from storage.db import Database
from storage.models import Role

log = logging.getLogger(__name__)


GRIDS_PER_SUMMARY_TRANSACTION = 50
"""Daily summaries are written this many grids per transaction."""
FEW_GRIDS = 10
"""A prompt or reminder for at most this many grids is one statement through the region
index; a larger one (a whole city at 08:00) walks the people table in id slices."""
PEOPLE_PER_TRANSACTION = 25_000
"""Size of those slices: bounds each transaction (chat messages wait for SQLite's writer)."""


@dataclass(frozen=True, slots=True)
class _Batch:
    """One scheduled event of the day, shared by every grid with the same timing."""

    kind: str  # "prompt", "reminder1000", "summary"
    send_at: datetime
    send: bool  # False: only mark it done (a reminder that would come too late)


async def run_checkin_schedule(
    db: Database, cfg: CheckinConfig, tz: ZoneInfo, texts: Texts, now: datetime
) -> Counter[str]:
    """Do everything due at ``now``; returns counts of queued messages by kind."""
    counts: Counter[str] = Counter()
    if not cfg.enabled:
        return counts
    local = local_time(now, tz)
    day = local.date()
    async with db.read() as conn:
        grids = await grid_schedules(conn, cfg)
        done = await store.run_keys(conn, day)
    due: dict[_Batch, list[GridSchedule]] = defaultdict(list)
    for grid in grids:
        for batch in _due_batches(grid, local, done):
            due[batch].append(grid)
    for batch, members in due.items():
        if batch.kind != "summary":
            kind = "prompt" if batch.kind == "prompt" else "reminder"
            counts[kind] += await _grid_pushes(db, texts, members, batch, day)
            continue
        for start in range(0, len(members), GRIDS_PER_SUMMARY_TRANSACTION):
            chunk = members[start : start + GRIDS_PER_SUMMARY_TRANSACTION]
            counts["summary"] += await _summaries(db, cfg, texts, chunk, batch, day)
    counts += await _quarantine_events(db, cfg, tz, texts, now, done)
    counts["escalated"] += await escalate_due(db, texts, cfg, tz, now)
    return +counts


def _run_key(kind: str, scope: str, day: date) -> str:
    return f"{kind}:{scope}:{day.isoformat()}"


def _grid_key(kind: str, grid: GridSchedule, day: date) -> str:
    return _run_key(kind, f"g{grid.grid.id}", day)


def _due_batches(grid: GridSchedule, local: datetime, done: set[str]) -> list[_Batch]:
    """What is due for one grid at ``local`` and not done yet."""
    schedule, day, clock = grid.schedule, local.date(), local.time()
    send_at = quiet_end(local, schedule.quiet_hours)
    same_day = send_at.date() == day
    batches = []
    prompting = schedule.prompt_at <= clock and _grid_key("prompt", grid, day) not in done
    if prompting:
        batches.append(_Batch("prompt", send_at, same_day))
    reminders = [
        f"reminder{r:%H%M}"
        for r in schedule.reminders
        if r <= clock and _grid_key(f"reminder{r:%H%M}", grid, day) not in done
    ]
    for index, kind in enumerate(reminders):
        # Catching up: only the latest due reminder goes, and none together with the prompt.
        last = index == len(reminders) - 1
        batches.append(_Batch(kind, send_at, same_day and last and not prompting))
    if schedule.summary_at <= clock and _grid_key("summary", grid, day) not in done:
        batches.append(_Batch("summary", send_at, True))
    return batches


async def _grid_pushes(
    db: Database, texts: Texts, grids: list[GridSchedule], batch: _Batch, day: date
) -> int:
    """Queue a prompt or reminder batch for some grids, then mark it done.

    The mark comes last, in its own transaction: a crash half-way leaves the batch unmarked and
    the next tick completes it (the outbox keys skip what was queued already)."""
    keys = {_grid_key(batch.kind, g, day): g.grid.id for g in grids}
    async with db.read() as conn:
        # Another scheduler may have finished this batch since the tick began.
        done = await store.run_keys(conn, day, among=list(keys))
        last_id = await store.max_person_id(conn)
    grid_ids = [grid_id for key, grid_id in keys.items() if key not in done]
    count = 0
    if grid_ids and batch.send:
        template = "checkin/prompt" if batch.kind == "prompt" else "checkin/reminder"
        text = texts.render(template)
        slices: list[tuple[int, int] | None] = [None]
        if len(grid_ids) > FEW_GRIDS:
            slices = [
                (lo, lo + PEOPLE_PER_TRANSACTION)
                for lo in range(0, last_id, PEOPLE_PER_TRANSACTION)
            ]
        for id_range in slices:
            async with db.write() as conn:
                count += await store.queue_grid_push(
                    conn,
                    db.insert_ignore(store.outbox),
                    grid_ids=grid_ids,
                    day=day,
                    kind=batch.kind,
                    text=text,
                    not_before=batch.send_at,
                    only_missing=batch.kind != "prompt",
                    id_range=id_range,
                )
    if grid_ids:
        async with db.write() as conn:
            await store.claim_runs(conn, db.insert_ignore(store.runs), list(keys), day)
        log.info("check-in %s for %d grids: %d queued", batch.kind, len(grid_ids), count)
    return count


@dataclass(frozen=True, slots=True)
class Reminded:
    """What :func:`remind_grid_now` did: ``queued`` reminders, due at ``send_at`` (the end of
    quiet hours when asked during them); ``held`` when that would only be tomorrow, so none
    were queued."""

    queued: int
    send_at: datetime
    held: bool = False


async def remind_grid_now(
    db: Database,
    cfg: CheckinConfig,
    tz: ZoneInfo,
    texts: Texts,
    grid: repo.RegionInfo,
    now: datetime,
) -> Reminded:
    """A staff member's "remind those who have not checked in" for one grid, outside the
    schedule: the same reminder text and the same bulk push as a scheduled reminder.

    The outbox key carries the hour, so pressing the button twice (or two staff members
    pressing it) within one hour reminds each resident once."""
    local = local_time(now, tz)
    async with db.read() as conn:
        schedule = await schedule_of(conn, cfg, grid)
    send_at = quiet_end(local, schedule.quiet_hours)
    if send_at.date() != local.date():
        return Reminded(0, send_at, held=True)
    async with db.write() as conn:
        queued = await store.queue_grid_push(
            conn,
            db.insert_ignore(store.outbox),
            grid_ids=[grid.id],
            day=local.date(),
            kind=f"remind{local:%H}",
            text=texts.render("checkin/reminder"),
            not_before=send_at,
            only_missing=True,
        )
    log.info("check-in reminder on demand for grid %s: %d queued", grid.code, queued)
    return Reminded(queued, send_at)


async def _summaries(
    db: Database,
    cfg: CheckinConfig,
    texts: Texts,
    grids: list[GridSchedule],
    batch: _Batch,
    day: date,
) -> int:
    """The day's summary of each grid to its wardens."""
    keys = {_grid_key("summary", g, day): g for g in grids}
    sent = 0
    async with db.write() as conn:
        claimed = await store.claim_runs(conn, db.insert_ignore(store.runs), list(keys), day)
        for key in (k for k in keys if k in claimed):
            grid = keys[key].grid
            wardens = await repo.responsible_people(conn, grid, Role.WARDEN)
            if not wardens:
                continue
            paths = [grid.path]
            counts = await store.day_counts(conn, paths, day)
            total, missing = await store.missing_people(
                conn, paths, day, limit=cfg.summary_max_names, offset=0
            )
            text = texts.render(
                "checkin/summary",
                grid=grid,
                day=day,
                counts=counts[0] if counts else None,
                missing=missing,
                missing_total=total,
                abnormal=await store.abnormal_records(conn, paths, day),
            )
            for warden in wardens:
                sent += await push_to_person(
                    conn,
                    db,
                    key=store.outbox_key(f"summary-g{grid.id}", warden, day),
                    person_id=warden,
                    text=text,
                    not_before=batch.send_at,
                )
    return sent


# -- quarantine ----------------------------------------------------------------------------


async def _quarantine_events(
    db: Database, cfg: CheckinConfig, tz: ZoneInfo, texts: Texts, now: datetime, done: set[str]
) -> Counter[str]:
    counts: Counter[str] = Counter()
    local = local_time(now, tz)
    day = local.date()
    missed_after = timedelta(minutes=cfg.quarantine.missed_after_minutes)
    async with db.read() as conn:
        current = await store.quarantines_on(conn, day)
        ending = await store.quarantines_ending(conn, day)
    for q in current:
        scope = f"q{q.id}"
        for slot, spec in enumerate(cfg.quarantine.slots):
            slot_at = at_local(day, spec.at, tz)
            if slot_at > local or slot_at < q.created_at:
                continue  # not yet, or before the person was marked
            key = _run_key(f"qslot{slot}", scope, day)
            if key not in done:
                counts["quarantine_prompt"] += await _quarantine_prompt(
                    db, cfg, texts, q, slot, key, day, now, tz
                )
            key = _run_key(f"qmiss{slot}", scope, day)
            if slot_at + missed_after <= local and key not in done:
                counts["quarantine_missed"] += await _quarantine_missed(
                    db, texts, q, slot, spec.at, key, day, now, tz, cfg
                )
    for q in ending:
        release_at = at_local(q.end_day, cfg.quarantine.release_at, tz)
        if release_at <= local:
            counts["quarantine_release"] += await _release(db, cfg, texts, q, now, tz)
    return counts


async def _quarantine_prompt(
    db: Database,
    cfg: CheckinConfig,
    texts: Texts,
    q: Any,
    slot: int,
    run_key: str,
    day: date,
    now: datetime,
    tz: ZoneInfo,
) -> int:
    async with db.write() as conn:
        if not await store.claim_run(conn, db.insert_ignore(store.runs), run_key, day):
            return 0
        if q.opted_out:
            return 0
        grid = await repo.get_region(conn, q.region_id) if q.region_id else None
        schedule = await schedule_of(conn, cfg, grid)
        send_at = quiet_end(local_time(now, tz), schedule.quiet_hours)
        if send_at.date() != day:
            return 0
        questions = cfg.quarantine.slots[slot].questions
        text = texts.render(
            "checkin/quarantine_prompt",
            kind=q.kind,
            day_number=(day - q.start_day).days + 1,
            days=(q.end_day - q.start_day).days,
            labels=[cfg.question(qid).label for qid in questions],
        )
        queued = await push_to_person(
            conn,
            db,
            key=store.outbox_key(f"qslot{slot}", q.person_id, day),
            person_id=q.person_id,
            text=text,
            not_before=send_at,
            ref_id=q.id,
        )
    return int(queued)


async def _quarantine_missed(
    db: Database,
    texts: Texts,
    q: Any,
    slot: int,
    slot_time: Any,
    run_key: str,
    day: date,
    now: datetime,
    tz: ZoneInfo,
    cfg: CheckinConfig,
) -> int:
    async with db.write() as conn:
        if not await store.claim_run(conn, db.insert_ignore(store.runs), run_key, day):
            return 0
        record = await store.current_record(conn, q.person_id, day, slot)
        if record is not None and record.status == "complete":
            return 0
        grid = await repo.get_region(conn, q.region_id) if q.region_id else None
        if grid is None:
            return 0
        # The warden hears about a missed quarantine check-in the same day, quiet hours or not.
        text = texts.render(
            "checkin/quarantine_missed",
            person_name=q.name,
            household=await repo.household_label(conn, q.household_id),
            kind=q.kind,
            day_number=(day - q.start_day).days + 1,
            slot_time=slot_time,
            incomplete=record is not None,
        )
        sent = 0
        for warden in await repo.responsible_people(conn, grid, Role.WARDEN):
            sent += await push_to_person(
                conn,
                db,
                key=store.outbox_key(f"qmiss{slot}-w{warden}", q.person_id, day),
                person_id=warden,
                text=text,
                not_before=now,
                ref_id=q.id,
            )
    return sent


async def _release(
    db: Database, cfg: CheckinConfig, texts: Texts, q: Any, now: datetime, tz: ZoneInfo
) -> int:
    async with db.write() as conn:
        if not await store.close_quarantine(conn, q.id, status="released", now=now):
            return 0
        grid = await repo.get_region(conn, q.region_id) if q.region_id else None
        schedule = await schedule_of(conn, cfg, grid)
        send_at = quiet_end(local_time(now, tz), schedule.quiet_hours)
        values = {
            "person_name": q.name,
            "kind": q.kind,
            "start_day": q.start_day,
            "end_day": q.end_day,
            "days": (q.end_day - q.start_day).days,
        }
        sent = int(
            await push_to_person(
                conn,
                db,
                key=store.outbox_key("release", q.person_id, q.end_day),
                person_id=q.person_id,
                text=texts.render("checkin/quarantine_release", **values),
                not_before=send_at,
                ref_id=q.id,
            )
        )
        wardens = await repo.responsible_people(conn, grid, Role.WARDEN) if grid else []
        text = texts.render("checkin/quarantine_release_warden", **values)
        for warden in wardens:
            sent += await push_to_person(
                conn,
                db,
                key=store.outbox_key(f"release-w{warden}", q.person_id, q.end_day),
                person_id=warden,
                text=text,
                not_before=send_at,
                ref_id=q.id,
            )
        await repo.record_audit(
            conn,
            actor_id=None,
            action="checkin.quarantine.release",
            target_type="person",
            target_id=q.person_id,
            region_id=q.region_id,
        )
    return sent
