"""Notices in the console: compose (audience limited to the user's scope, acknowledgement
required or not, now or at a time), the list with receipt counts, one notice with the status
of each recipient (paged), reminding those who have not acknowledged, cancelling a scheduled
one.

Every rule is the notices service's (:mod:`flows.notices`), the same as in chat and the API:
``submit_notice`` validates, stores and queues; ``list_visible``, ``view_notice`` and
``list_recipients`` read and audit; ``remind_unacknowledged`` and ``cancel_notice`` act and
audit.  A refused form is shown again with the service's reason, and nothing is stored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multidict import MultiMapping

from bot.console.forms import (
    checked,
    flash_refusal,
    local_input,
    refusal_page,
    refusal_text,
    region_choices,
    text_of,
)
from bot.console.site import (
    Console,
    PageError,
    console_of,
    flash,
    is_number,
    keyset_links,
    query_choice,
    query_int,
    redirect,
    render,
    user_of,
)
from flows import notices
from flows.notice_input import NoticeInputError, parse_send_time
from storage import repo
from storage.models import MAX_ID, utcnow
from storage.notices_models import NoticeStatus

SENDERS = tuple(notices.SENDER_ROLES)
STATUSES = tuple(s.value for s in NoticeStatus)
_WORDS = re.compile(r"[\s,，、;；]+")


def install(console: Console) -> None:
    console.add_page("GET", "/notices", list_page, name="notices", roles=SENDERS)
    console.add_page("GET", "/notices/new", compose_page, name="notice_new", roles=SENDERS)
    console.add_page("POST", "/notices", send, name="notice_send", roles=SENDERS)
    console.add_page("GET", r"/notices/{id:\d+}", notice_page, name="notice", roles=SENDERS)
    console.add_page(
        "POST", r"/notices/{id:\d+}/resend", resend, name="notice_resend", roles=SENDERS
    )
    console.add_page(
        "POST", r"/notices/{id:\d+}/cancel", cancel, name="notice_cancel", roles=SENDERS
    )
    console.add_nav("notices", "notices", roles=SENDERS)


@dataclass
class ComposeForm:
    """What the compose form holds (as typed, so a refused form comes back unchanged)."""

    text: str = ""
    regions: list[str] = field(default_factory=list)
    more: str = ""
    groups: bool = True
    individuals: bool = True
    ack_required: bool = False
    urgent: bool = False
    when: str = "now"
    send_at: str = ""

    @classmethod
    def of(cls, form: MultiMapping[Any]) -> ComposeForm:
        return cls(
            text=text_of(form, "text"),
            regions=[v for v in form.getall("regions", []) if isinstance(v, str) and v],
            more=text_of(form, "more_regions").strip(),
            groups=checked(form, "groups"),
            individuals=checked(form, "individuals"),
            ack_required=checked(form, "ack_required"),
            urgent=checked(form, "urgent"),
            when="later" if text_of(form, "when") == "later" else "now",
            send_at=text_of(form, "send_at").strip(),
        )

    def region_words(self) -> list[str]:
        """Ticked regions, then any codes or names typed in the extra field."""
        typed = [word for word in _WORDS.split(self.more) if word]
        return list(dict.fromkeys([*self.regions, *typed]))


def _notice_id(request: web.Request) -> int:
    raw = request.match_info["id"]
    if not is_number(raw) or int(raw) > MAX_ID:
        raise PageError(404, "not_found")
    return int(raw)


# -- list --------------------------------------------------------------------------------------


async def list_page(request: web.Request) -> web.Response:
    """Notices the user sent or whose audience lies in their scope, newest first."""
    console, user = console_of(request), user_of(request)
    status = query_choice(request, "status", STATUSES)
    before = query_int(request, "before", MAX_ID, 1, MAX_ID)
    size = console.settings.page_size
    try:
        async with console.db.write() as conn:
            rows = await notices.list_visible(
                conn, user.person, status=status, limit=size, before_id=before, via="console"
            )
    except notices.NoticeRefused as refused:
        raise refusal_page(console.texts, refused) from None
    return await render(
        request,
        "console/notices/list.html",
        rows=rows,
        status=status,
        statuses=STATUSES,
        **keyset_links(
            "before", [notice.id for notice, _ in rows], size, paged=before != MAX_ID, status=status
        ),
    )


# -- compose -----------------------------------------------------------------------------------


async def _compose(
    request: web.Request, form: ComposeForm, *, error: str | None = None, status: int = 200
) -> web.Response:
    console, user = console_of(request), user_of(request)
    async with console.db.read() as conn:
        choices = await region_choices(conn, notices.sender_scopes(user.person))
    return await render(
        request,
        "console/notices/compose.html",
        form=form,
        choices=choices,
        error=error,
        max_chars=console.config.notices.max_text_chars,
        _status=status,
    )


async def compose_page(request: web.Request) -> web.Response:
    """The empty compose form (the user's own region ticked when they have just one)."""
    user = user_of(request)
    scopes = notices.sender_scopes(user.person)
    form = ComposeForm(regions=[scopes[0].code] if len(scopes) == 1 else [])
    return await _compose(request, form)


async def send(request: web.Request) -> web.StreamResponse:
    """Validate and store the notice through the service; send it now or at its time."""
    console, user = console_of(request), user_of(request)
    form = ComposeForm.of(await request.post())
    now = utcnow()
    try:
        send_at = None
        if form.when == "later":
            try:
                send_at = parse_send_time(form.send_at, now, console.config.tz)
            except NoticeInputError as error:
                raise notices.NoticeRefused.from_input(error) from None
            if send_at is None:  # "现在" typed as the time
                form.when = "now"
        created = await notices.submit_notice(
            console.db,
            user.person,
            texts=console.texts,
            settings=console.config,
            now=now,
            via="console",
            text=form.text,
            region_words=form.region_words(),
            groups=form.groups,
            individuals=form.individuals,
            ack_required=form.ack_required,
            urgent=form.urgent,
            send_at=send_at,
            max_chars=console.config.notices.max_text_chars,
        )
    except notices.NoticeRefused as refused:
        message = refusal_text(console.texts, refused)
        return await _compose(request, form, error=message, status=refused.http_status)
    tz = console.config.tz
    if send_at is None:
        console.wake_delivery()
    held = created.deliver_at > created.send_at
    await flash(
        request,
        "notice_scheduled" if send_at is not None else "notice_sent",
        "ok",
        code=created.code,
        people=created.people,
        groups=created.groups,
        when=local_input(created.send_at, tz).replace("T", " "),
        held_until=local_input(created.deliver_at, tz).replace("T", " ") if held else "",
    )
    raise redirect(request, "notice", id=str(created.notice_id))


# -- one notice --------------------------------------------------------------------------------


async def notice_page(request: web.Request) -> web.Response:
    """One notice: its text, audience, counts, and each recipient's status (paged)."""
    console, user = console_of(request), user_of(request)
    notice_id = _notice_id(request)
    unacked = request.query.get("unacked") == "1"
    after = query_int(request, "after", 0, 0, MAX_ID)
    size = console.settings.page_size
    try:
        async with console.db.write() as conn:
            notice, receipt = await notices.view_notice(conn, user.person, notice_id, via="console")
            recipients = await notices.list_recipients(
                conn,
                user.person,
                notice,
                unacked_only=unacked,
                limit=size,
                after_id=after,
                via="console",
            )
            sender = await repo.load_person(conn, notice.sender_id)
            regions = [await repo.get_region(conn, rid) for rid in notice.audience["region_ids"]]
    except notices.NoticeRefused as refused:
        raise refusal_page(console.texts, refused) from None
    return await render(
        request,
        "console/notices/notice.html",
        notice=notice,
        receipt=receipt,
        recipients=recipients,
        sender=sender,
        regions=[r for r in regions if r is not None],
        unacked=unacked,
        **keyset_links(
            "after",
            [r.id for r in recipients],
            size,
            paged=after > 0,
            unacked="1" if unacked else None,
        ),
        can_remind=notice.ack_required and notice.status == NoticeStatus.SENT,
        can_cancel=notice.status == NoticeStatus.SCHEDULED,
    )


async def resend(request: web.Request) -> web.StreamResponse:
    """Remind the recipients and groups that have not acknowledged."""
    console, user = console_of(request), user_of(request)
    notice_id = _notice_id(request)
    try:
        async with console.db.write() as conn:
            notice = await notices.find_managed(conn, user.person, notice_id=notice_id)
            reminded = await notices.remind_unacknowledged(
                conn,
                user.person,
                notice,
                texts=console.texts,
                settings=console.config,
                now=utcnow(),
            )
    except notices.NoticeRefused as refused:
        await flash_refusal(request, refused)
        raise redirect(request, "notice", id=str(notice_id)) from None
    console.wake_delivery()
    await flash(
        request,
        "notice_reminded",
        "ok",
        targets=reminded.targets,
        at=local_input(reminded.deliver_at, console.config.tz).replace("T", " "),
    )
    raise redirect(request, "notice", id=str(notice_id))


async def cancel(request: web.Request) -> web.StreamResponse:
    """Cancel a notice that has not been sent yet."""
    console, user = console_of(request), user_of(request)
    notice_id = _notice_id(request)
    try:
        async with console.db.write() as conn:
            notice = await notices.find_managed(conn, user.person, notice_id=notice_id)
            await notices.cancel_notice(conn, user.person, notice, now=utcnow())
    except notices.NoticeRefused as refused:
        await flash_refusal(request, refused)
        raise redirect(request, "notice", id=str(notice_id)) from None
    await flash(request, "notice_cancelled", "ok", code=notice.code)
    raise redirect(request, "notice", id=str(notice_id))
