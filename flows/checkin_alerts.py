"""Alerts on abnormal check-ins: who is told, acknowledgement, escalation up the region tree.

Level 0 is the grid: its wardens, the nearest doctor up the tree (the community doctor) and,
if configured, the grid's staff group.  An alert nobody acknowledges within
``alerts.escalate_after_minutes`` goes to the admins of the next region up that has any
(community, street, district, city), one level at a time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from flows.checkin_config import CheckinConfig
from flows.checkin_push import (
    local_time,
    push_to_group,
    push_to_person,
    quiet_end,
    schedule_of,
    staff_groups,
)
from flows.texts import Texts
from storage import checkin as store
from storage import repo
from storage.db import Database
from storage.models import Role

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AlertSubject:
    """What an alert says about the record: who, where, what was answered and why."""

    person_id: int
    name: str
    reporter_name: str
    household: str
    grid_name: str
    level: str
    status: str
    reasons: tuple[str, ...]
    answers: dict[str, Any]


@dataclass(frozen=True, slots=True)
class RaisedAlert:
    id: int
    notified: int
    """Staff members and staff groups the alert was queued to (0: nobody reachable in the
    grid; the alert still escalates to the admins above)."""


def answer_items(cfg: CheckinConfig, answers: dict[str, Any]) -> list[tuple[Any, Any]]:
    """(question, answer) pairs in questionnaire order, for the ``checkin/_answers`` partial."""
    return [(q, answers[q.id]) for q in cfg.questions if q.id in answers]


async def grid_recipients(conn: Any, grid: repo.RegionInfo) -> list[int]:
    """The grid's wardens and the nearest doctors up the tree, without duplicates."""
    people = list(await repo.responsible_people(conn, grid, Role.WARDEN))
    for region in await repo.region_chain(conn, grid):
        doctors = await repo.responsible_people(conn, region, Role.DOCTOR)
        if doctors:
            people += doctors
            break
    return list(dict.fromkeys(people))


async def _send_time(
    conn: Any, cfg: CheckinConfig, grid: repo.RegionInfo, level: str, now: datetime, tz: ZoneInfo
) -> datetime:
    if level in cfg.alerts.urgent_levels:
        return now
    schedule = await schedule_of(conn, cfg, grid)
    return quiet_end(local_time(now, tz), schedule.quiet_hours)


async def raise_alert(
    conn: Any,
    db: Database,
    texts: Texts,
    cfg: CheckinConfig,
    tz: ZoneInfo,
    *,
    record_id: int,
    grid: repo.RegionInfo | None,
    subject: AlertSubject,
    now: datetime,
) -> RaisedAlert | None:
    """Create the alert of an abnormal record and queue it to the grid's staff."""
    if subject.level not in cfg.alerts.levels:
        return None
    send_at = now if grid is None else await _send_time(conn, cfg, grid, subject.level, now, tz)
    after = timedelta(minutes=cfg.alerts.escalate_after_minutes)
    alert_id = await store.create_alert(
        conn,
        record_id=record_id,
        person_id=subject.person_id,
        region_id=grid.id if grid else None,
        level=subject.level,
        next_escalation_at=send_at + after,
        now=now,
    )
    text = texts.render(
        "checkin/alert",
        alert_id=alert_id,
        s=subject,
        items=answer_items(cfg, subject.answers),
        escalated_minutes=None,
        region_name=None,
    )
    recipients = await grid_recipients(conn, grid) if grid else []
    notified = 0
    for person_id in recipients:
        notified += await push_to_person(
            conn,
            db,
            key=f"checkin:alert:{alert_id}:p{person_id}",
            person_id=person_id,
            text=text,
            not_before=send_at,
            ref_id=alert_id,
        )
    if grid is not None and cfg.alerts.staff_group:
        for group_id in await staff_groups(conn, grid.id):
            notified += await push_to_group(
                conn,
                db,
                key=f"checkin:alert:{alert_id}:g{group_id}",
                group_id=group_id,
                text=text,
                not_before=send_at,
                ref_id=alert_id,
            )
    return RaisedAlert(alert_id, notified)


async def subject_of_record(conn: Any, record: Any) -> AlertSubject:
    """Rebuild what an alert says from its stored record (for escalation)."""
    person = await repo.load_person(conn, record.person_id)
    reporter = (
        await repo.load_person(conn, record.reporter_id)
        if record.reporter_id not in (None, record.person_id)
        else None
    )
    grid = await repo.get_region(conn, record.region_id) if record.region_id else None
    return AlertSubject(
        person_id=record.person_id,
        name=person.name if person else "",
        reporter_name=reporter.name if reporter else "",
        household=await repo.household_label(conn, record.household_id),
        grid_name=grid.name if grid else "",
        level=record.risk,
        status=record.status,
        reasons=tuple(record.reasons or ()),
        answers=dict(record.answers or {}),
    )


async def escalate_due(
    db: Database, texts: Texts, cfg: CheckinConfig, tz: ZoneInfo, now: datetime
) -> int:
    """Send every open alert past its escalation time one level up; returns how many went."""
    sent = 0
    after = timedelta(minutes=cfg.alerts.escalate_after_minutes)
    async with db.write() as conn:
        due = await store.claim_due_escalations(conn, now=now, skip_locked=not db.is_sqlite)
        for alert in due:
            grid = await repo.get_region(conn, alert.region_id) if alert.region_id else None
            chain = await repo.region_chain(conn, grid) if grid else []
            level = alert.escalation_level + 1
            admins: list[int] = []
            while level < len(chain):
                admins = await repo.responsible_people(conn, chain[level], Role.ADMIN)
                if admins:
                    break
                level += 1
            if not admins:
                # Nobody further up: stop escalating; the alert stays open in "异常".
                await store.set_escalation(
                    conn, alert.id, level=alert.escalation_level, next_at=None
                )
                continue
            assert grid is not None
            record = (
                await conn.execute(
                    store.records.select().where(store.records.c.id == alert.record_id)
                )
            ).first()
            subject = await subject_of_record(conn, record)
            send_at = await _send_time(conn, cfg, grid, alert.level, now, tz)
            waited = int((now - alert.created_at).total_seconds() // 60)
            text = texts.render(
                "checkin/alert",
                alert_id=alert.id,
                s=subject,
                items=answer_items(cfg, subject.answers),
                escalated_minutes=waited,
                region_name=chain[level].name,
            )
            for person_id in admins:
                await push_to_person(
                    conn,
                    db,
                    key=f"checkin:alert:{alert.id}:l{level}:p{person_id}",
                    person_id=person_id,
                    text=text,
                    not_before=send_at,
                    ref_id=alert.id,
                )
            await store.set_escalation(conn, alert.id, level=level, next_at=send_at + after)
            sent += 1
    return sent


async def acknowledge(conn: Any, person: repo.PersonInfo, alert_id: int, now: datetime) -> str:
    """Acknowledge an alert for ``person``: ``ok``, ``already``, ``superseded`` (the record was
    answered again the same day), ``unknown`` or ``out_of_scope``.

    Anyone who can act on the resident's grid as warden, doctor or admin may acknowledge."""
    alert = await store.get_alert(conn, alert_id)
    if alert is None:
        return "unknown"
    grid = await repo.get_region(conn, alert.region_id) if alert.region_id else None
    if grid is None or not person.can_act_on(grid, Role.WARDEN, Role.DOCTOR, Role.ADMIN):
        return "out_of_scope"
    if alert.status == store.SUPERSEDED:
        return "superseded"
    if not await store.acknowledge_alert(conn, alert_id, by=person.id, now=now):
        return "already"
    await repo.record_audit(
        conn,
        actor_id=person.id,
        action="checkin.alert.acknowledge",
        target_type="checkin_alert",
        target_id=alert_id,
        region_id=grid.id,
    )
    return "ok"
