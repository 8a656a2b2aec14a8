"""Rumor clarification in the console: the knowledge base (list, create, edit, publish,
withdraw, the history of a clarification), pushing a clarification to regions in scope, the
review queue (most askers first; attach to an existing clarification, create a new one, or
dismiss), and the "what is spreading" report.

Every rule is the rumor service's (:mod:`flows.rumors`), the same as the API's: this module
turns forms into the service's request bodies and shows its answers.  A refused form is shown
again with the service's reason, and nothing is stored (each action is one transaction).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multidict import MultiMapping

from bot.console.forms import (
    checked,
    flash_refusal,
    local_input,
    parse_local,
    refusal_page,
    refusal_text,
    region_choices,
    text_of,
)
from bot.console.site import (
    Console,
    PageError,
    audit,
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
from flows import notices, rumors
from storage import repo
from storage.models import MAX_ID, utcnow
from storage.rumor_models import MAX_CLAIM, ClarificationStatus, ReviewStatus, Verdict

MANAGERS = tuple(rumors.MANAGER_ROLES)
REPORTERS = tuple(rumors.REPORT_ROLES)
VERDICTS = tuple(v.value for v in Verdict)
STATUSES = tuple(s.value for s in ClarificationStatus)
REPORT_DAYS = (1, 3, 7, 14, 30)
ATTACH_CHOICES = 200
"""Clarifications offered to attach a review item to (newest first)."""


def install(console: Console) -> None:
    page = console.add_page
    page("GET", "/rumors", list_page, name="rumors", roles=MANAGERS)
    page("GET", "/rumors/new", new_page, name="rumor_new", roles=MANAGERS)
    page("POST", "/rumors", create, name="rumor_create", roles=MANAGERS)
    page("GET", r"/rumors/{id:\d+}", clarification_page, name="rumor", roles=MANAGERS)
    page("GET", r"/rumors/{id:\d+}/edit", edit_page, name="rumor_edit", roles=MANAGERS)
    page("POST", r"/rumors/{id:\d+}/edit", edit, name="rumor_save", roles=MANAGERS)
    page("POST", r"/rumors/{id:\d+}/publish", publish, name="rumor_publish", roles=MANAGERS)
    page("POST", r"/rumors/{id:\d+}/withdraw", withdraw, name="rumor_withdraw", roles=MANAGERS)
    page("POST", r"/rumors/{id:\d+}/push", push, name="rumor_push", roles=MANAGERS)
    page("GET", "/rumors/review", review_page, name="rumor_review", roles=MANAGERS)
    page("POST", r"/rumors/review/{id:\d+}/attach", attach, name="rumor_attach", roles=MANAGERS)
    page(
        "GET",
        r"/rumors/review/{id:\d+}/clarify",
        clarify_page,
        name="rumor_clarify_form",
        roles=MANAGERS,
    )
    page("POST", r"/rumors/review/{id:\d+}/clarify", clarify, name="rumor_clarify", roles=MANAGERS)
    page("POST", r"/rumors/review/{id:\d+}/dismiss", dismiss, name="rumor_dismiss", roles=MANAGERS)
    page("GET", "/rumors/report", report_page, name="rumor_report", roles=REPORTERS)
    console.add_nav("rumors", "rumors", roles=MANAGERS)
    console.add_nav("rumor_report", "rumor_report", roles=REPORTERS)


# -- forms -------------------------------------------------------------------------------------


@dataclass
class ClarificationForm:
    """The clarification form as typed (a refused form comes back unchanged)."""

    claim: str = ""
    verdict: str = "false"
    explanation: str = ""
    source_name: str = ""
    source_url: str = ""
    region: str = ""
    expires_at: str = ""
    publish: bool = False
    notify: bool = True

    @classmethod
    def of(cls, form: MultiMapping[Any]) -> ClarificationForm:
        return cls(
            claim=text_of(form, "claim"),
            verdict=text_of(form, "verdict"),
            explanation=text_of(form, "explanation"),
            source_name=text_of(form, "source_name"),
            source_url=text_of(form, "source_url").strip(),
            region=text_of(form, "region").strip(),
            expires_at=text_of(form, "expires_at").strip(),
            publish=checked(form, "publish"),
            notify=checked(form, "notify"),
        )

    @classmethod
    def from_row(cls, row: Any, region: repo.RegionInfo | None, console: Console) -> Any:
        return cls(
            claim=row.claim,
            verdict=row.verdict,
            explanation=row.explanation,
            source_name=row.source_name,
            source_url=row.source_url,
            region=region.code if region else "",
            expires_at=local_input(row.expires_at, console.config.tz),
        )

    def body(self, console: Console, *, unchanged: ClarificationForm | None = None) -> dict:
        """The service's request body (the API's JSON fields).  For an edit, fields the form
        shows unchanged are left out, so that the service sees only what the user changed."""
        expires: str | None = None
        if self.expires_at:
            moment = parse_local(self.expires_at, console.config.tz)
            expires = moment.isoformat() if moment is not None else self.expires_at
        body: dict[str, Any] = {
            "claim": self.claim,
            "verdict": self.verdict,
            "explanation": self.explanation,
            "source_name": self.source_name,
            "source_url": self.source_url,
            "region": self.region or None,
            "expires_at": expires,
        }
        if unchanged is not None:
            body = {k: v for k, v in body.items() if getattr(self, k) != getattr(unchanged, k)}
        return body


@dataclass
class PushForm:
    """Where to push a clarification, as ticked."""

    regions: list[str] = field(default_factory=list)
    groups: bool = True
    individuals: bool = True
    urgent: bool = False

    @classmethod
    def of(cls, form: MultiMapping[Any]) -> PushForm:
        return cls(
            regions=[v for v in form.getall("regions", []) if isinstance(v, str) and v],
            groups=checked(form, "groups"),
            individuals=checked(form, "individuals"),
            urgent=checked(form, "urgent"),
        )


def _id(request: web.Request) -> int:
    raw = request.match_info["id"]
    value = int(raw) if is_number(raw) else 0
    if not 0 < value <= MAX_ID:
        raise PageError(404, "not_found")
    return value


async def _after_commit(console: Console, delivered: rumors.Delivered) -> None:
    await rumors.queue_corrections(
        console.db, delivered, texts=console.texts, settings=console.config, now=utcnow()
    )
    console.wake_delivery()


def _default_region(person: repo.PersonInfo) -> str:
    """The region a new clarification starts with: the user's one scope, unless they may
    write for everyone or have several scopes (then "everyone" / nothing chosen)."""
    roots = repo.scope_roots(person.scope_regions(*MANAGERS))
    everyone = rumors.can_manage(person, None)
    return "" if everyone or len(roots) != 1 else roots[0].code


async def _form_choices(conn: Any, person: repo.PersonInfo) -> dict[str, Any]:
    """Regions a clarification may be scoped to, and whether "everyone" is offered."""
    roots = repo.scope_roots(person.scope_regions(*MANAGERS))
    return {
        "regions": await region_choices(conn, roots),
        "everyone": rumors.can_manage(person, None),
    }


# -- knowledge base ----------------------------------------------------------------------------


async def list_page(request: web.Request) -> web.Response:
    """Clarifications for everyone or for regions related to the user's scope."""
    console, user = console_of(request), user_of(request)
    status = query_choice(request, "status", STATUSES)
    before = query_int(request, "before", MAX_ID, 1, MAX_ID)
    size = console.settings.page_size
    try:
        async with console.db.read() as conn:
            rows = await rumors.list_managed_clarifications(
                conn, user.person, status=status, limit=size, before=before
            )
    except rumors.RumorRefused as refused:
        raise refusal_page(console.texts, refused) from None
    return await render(
        request,
        "console/rumors/list.html",
        rows=rows,
        status=status,
        statuses=STATUSES,
        **keyset_links("before", [r.id for r in rows], size, paged=before != MAX_ID, status=status),
    )


async def _form_page(
    request: web.Request,
    form: ClarificationForm,
    *,
    action: str,
    parts: dict[str, str],
    mode: str,
    item: Any = None,
    refused: rumors.RumorRefused | None = None,
) -> web.Response:
    """The clarification form; ``refused``: shown again with the service's reason (and the
    field it names marked), with the refusal's status."""
    console, user = console_of(request), user_of(request)
    async with console.db.read() as conn:
        choices = await _form_choices(conn, user.person)
    return await render(
        request,
        "console/rumors/form.html",
        form=form,
        action=action,
        parts=parts,
        mode=mode,
        error=refusal_text(console.texts, refused) if refused else None,
        error_field=refused.values.get("field") if refused else None,
        item=item,
        verdicts=VERDICTS,
        _status=refused.http_status if refused else 200,
        **choices,
    )


async def new_page(request: web.Request) -> web.Response:
    form = ClarificationForm(region=_default_region(user_of(request).person))
    return await _form_page(request, form, action="rumor_create", parts={}, mode="create")


async def create(request: web.Request) -> web.StreamResponse:
    """Store a draft (and publish it at once when ticked)."""
    console, user = console_of(request), user_of(request)
    form = ClarificationForm.of(await request.post())
    now = utcnow()
    delivered = rumors.Delivered()
    try:
        async with console.db.write() as conn:
            cid = await rumors.create_clarification(
                conn,
                console.db,
                user.person,
                form.body(console),
                settings=console.config,
                now=now,
                via="console",
            )
            if form.publish:
                delivered = await rumors.publish_clarification(
                    conn,
                    console.db,
                    user.person,
                    cid,
                    settings=console.config,
                    texts=console.texts,
                    now=now,
                )
    except rumors.RumorRefused as refused:
        return await _form_page(
            request,
            form,
            action="rumor_create",
            parts={},
            mode="create",
            refused=refused,
        )
    await _after_commit(console, delivered)
    await _delivered_flash(request, "rumor_published" if form.publish else "rumor_saved", delivered)
    raise redirect(request, "rumor", id=str(cid))


async def clarification_page(request: web.Request) -> web.Response:
    """One clarification: content, status, history, pushes, and its actions."""
    return await _clarification(request)


async def _clarification(
    request: web.Request,
    *,
    push_form: PushForm | None = None,
    push_error: str | None = None,
    status: int = 200,
) -> web.Response:
    console, user = console_of(request), user_of(request)
    cid = _id(request)
    try:
        async with console.db.read() as conn:
            record = await rumors.read_clarification(conn, user.person, cid)
            editors = {
                pid: await repo.load_person(conn, pid)
                for pid in {h.edited_by for h in record.history}
                | {p.pushed_by for p in record.pushes}
            }
            choices = await region_choices(conn, notices.sender_scopes(user.person))
    except rumors.RumorRefused as refused:
        raise refusal_page(console.texts, refused) from None
    row = record.row
    if row.scope_path is not None:  # a scoped clarification goes only to its own regions
        choices = [c for c in choices if c.region.path.startswith(row.scope_path)]
    return await render(
        request,
        "console/rumors/clarification.html",
        row=row,
        region=record.region,
        history=record.history,
        pushes=record.pushes,
        editors={pid: p.name for pid, p in editors.items() if p is not None},
        can_manage=rumors.can_manage(user.person, row.scope_path),
        choices=choices,
        push_form=push_form or PushForm(),
        push_error=push_error,
        _status=status,
    )


async def edit_page(request: web.Request) -> web.Response:
    console, user = console_of(request), user_of(request)
    cid = _id(request)
    try:
        async with console.db.read() as conn:
            row = await rumors.find_managed(conn, user.person, cid)
            region = await repo.get_region(conn, row.region_id) if row.region_id else None
    except rumors.RumorRefused as refused:
        raise refusal_page(console.texts, refused) from None
    form = ClarificationForm.from_row(row, region, console)
    return await _form_page(
        request,
        form,
        action="rumor_save",
        parts={"id": str(cid)},
        mode="edit",
        item=row,
    )


async def edit(request: web.Request) -> web.StreamResponse:
    """Save changes; a published clarification keeps the replaced version as history and
    its earlier recipients get the update (unless the box is unticked)."""
    console, user = console_of(request), user_of(request)
    cid = _id(request)
    form = ClarificationForm.of(await request.post())
    row = None
    try:
        async with console.db.write() as conn:
            row = await rumors.find_managed(conn, user.person, cid)
            region = await repo.get_region(conn, row.region_id) if row.region_id else None
            stored = ClarificationForm.from_row(row, region, console)
            body = form.body(console, unchanged=stored)
            body["notify"] = form.notify
            delivered = await rumors.edit_clarification(
                conn,
                console.db,
                user.person,
                cid,
                body,
                settings=console.config,
                texts=console.texts,
                now=utcnow(),
            )
    except rumors.RumorRefused as refused:
        if row is None:  # not found, or not the user's to change
            raise refusal_page(console.texts, refused) from None
        return await _form_page(
            request,
            form,
            action="rumor_save",
            parts={"id": str(cid)},
            mode="edit",
            item=row,
            refused=refused,
        )
    await _after_commit(console, delivered)
    await _delivered_flash(request, "rumor_edited", delivered)
    raise redirect(request, "rumor", id=str(cid))


async def publish(request: web.Request) -> web.StreamResponse:
    return await _change_status(
        request, rumors.publish_clarification, "rumor_published", counts=True
    )


async def withdraw(request: web.Request) -> web.StreamResponse:
    return await _change_status(
        request, rumors.withdraw_clarification, "rumor_withdrawn", counts=False
    )


async def _change_status(
    request: web.Request, change: Any, flash_key: str, *, counts: bool
) -> web.StreamResponse:
    """Publish or withdraw a clarification through the rumors service, then queue what it owes
    people (after commit) and go back to the clarification's page."""
    console, user = console_of(request), user_of(request)
    cid = _id(request)
    try:
        async with console.db.write() as conn:
            delivered = await change(
                conn,
                console.db,
                user.person,
                cid,
                settings=console.config,
                texts=console.texts,
                now=utcnow(),
            )
    except rumors.RumorRefused as refused:
        await flash_refusal(request, refused)
        raise redirect(request, "rumor", id=str(cid)) from None
    await _after_commit(console, delivered)
    if counts:  # the flash says how many people were told
        await _delivered_flash(request, flash_key, delivered)
    else:
        await flash(request, flash_key, "ok")
    raise redirect(request, "rumor", id=str(cid))


async def push(request: web.Request) -> web.StreamResponse:
    """Push a published clarification to regions in scope as a notice."""
    console, user = console_of(request), user_of(request)
    cid = _id(request)
    form = PushForm.of(await request.post())
    now = utcnow()
    try:
        async with console.db.write() as conn:
            created = await rumors.push_clarification(
                conn,
                user.person,
                cid,
                region_codes=form.regions,
                groups=form.groups,
                individuals=form.individuals,
                urgent=form.urgent,
                settings=console.config,
                texts=console.texts,
                now=now,
            )
    except rumors.RumorRefused as refused:
        if refused.http_status == 404:
            raise refusal_page(console.texts, refused) from None
        return await _clarification(
            request,
            push_form=form,
            push_error=refusal_text(console.texts, refused),
            status=refused.http_status,
        )
    await notices.queue_notice(
        console.db, created.notice_id, texts=console.texts, settings=console.config, now=now
    )
    console.wake_delivery()
    await flash(
        request,
        "rumor_pushed",
        "ok",
        code=created.code,
        notice_id=created.notice_id,
        people=created.people,
        groups=created.groups,
    )
    raise redirect(request, "rumor", id=str(cid))


# -- review queue ------------------------------------------------------------------------------


async def review_page(request: web.Request) -> web.Response:
    """Pending questions nobody has answered yet, most askers first."""
    console, user = console_of(request), user_of(request)
    page = query_int(request, "page", 1, 1, 10_000)
    size = console.settings.page_size
    try:
        async with console.db.write() as conn:
            items = await rumors.list_review(
                conn,
                user.person,
                status=ReviewStatus.PENDING,
                limit=size + 1,
                offset=(page - 1) * size,
                via="console",
            )
            options = await rumors.list_managed_clarifications(
                conn, user.person, status=None, limit=ATTACH_CHOICES, before=None
            )
    except rumors.RumorRefused as refused:
        raise refusal_page(console.texts, refused) from None
    options = [o for o in options if o.status != ClarificationStatus.WITHDRAWN]
    options.sort(key=lambda o: (o.status != ClarificationStatus.PUBLISHED, -o.id))
    return await render(
        request,
        "console/rumors/review.html",
        items=items[:size],
        options=options,
        page=page,
        more=len(items) > size,
    )


async def attach(request: web.Request) -> web.StreamResponse:
    """Answer a review item with an existing clarification."""
    console, user = console_of(request), user_of(request)
    item_id = _id(request)
    raw = text_of(await request.post(), "clarification_id")
    try:
        if not is_number(raw) or not 0 < int(raw) <= MAX_ID:
            raise rumors.RumorRefused("attach_choose")
        async with console.db.write() as conn:
            delivered = await rumors.attach_item(
                conn,
                console.db,
                user.person,
                item_id,
                int(raw),
                settings=console.config,
                texts=console.texts,
                now=utcnow(),
            )
    except rumors.RumorRefused as refused:
        await flash_refusal(request, refused)
        raise redirect(request, "rumor_review") from None
    await _after_commit(console, delivered)
    await _delivered_flash(request, "rumor_attached", delivered)
    raise redirect(request, "rumor_review")


async def dismiss(request: web.Request) -> web.StreamResponse:
    console, user = console_of(request), user_of(request)
    item_id = _id(request)
    try:
        async with console.db.write() as conn:
            await rumors.dismiss_item(conn, user.person, item_id, now=utcnow())
    except rumors.RumorRefused as refused:
        await flash_refusal(request, refused)
        raise redirect(request, "rumor_review") from None
    await flash(request, "rumor_dismissed", "ok")
    raise redirect(request, "rumor_review")


async def _review_item(request: web.Request, item_id: int) -> Any:
    """A pending review item in the user's scope; what residents asked is personal data, so
    showing it is audited."""
    console, user = console_of(request), user_of(request)
    try:
        async with console.db.write() as conn:
            item = await rumors.find_review_item(conn, user.person, item_id)
            await audit(
                conn,
                request,
                "console.rumors.review_item",
                target_type="rumor_review_item",
                target_id=item.id,
            )
    except rumors.RumorRefused as refused:
        raise refusal_page(console.texts, refused) from None
    if item.status != ReviewStatus.PENDING:
        closed = rumors.RumorRefused("item_closed", 409, status=item.status)
        raise refusal_page(console.texts, closed)
    return item


async def clarify_page(request: web.Request) -> web.Response:
    """A new clarification for a review item, its claim taken from what residents asked."""
    item = await _review_item(request, _id(request))
    form = ClarificationForm(
        claim=item.sample[:MAX_CLAIM],
        region=_default_region(user_of(request).person),
        publish=True,
    )
    return await _form_page(
        request,
        form,
        action="rumor_clarify",
        parts={"id": str(item.id)},
        mode="clarify",
        item=item,
    )


async def clarify(request: web.Request) -> web.StreamResponse:
    """Create the clarification, attach the item, and publish when ticked (its askers are
    told once)."""
    console, user = console_of(request), user_of(request)
    item_id = _id(request)
    form = ClarificationForm.of(await request.post())
    body = form.body(console)
    body["publish"] = form.publish
    try:
        async with console.db.write() as conn:
            cid, delivered = await rumors.clarify_item(
                conn,
                console.db,
                user.person,
                item_id,
                body,
                settings=console.config,
                texts=console.texts,
                now=utcnow(),
            )
    except rumors.RumorRefused as refused:
        if refused.reason in ("item_not_found", "not_allowed"):
            raise refusal_page(console.texts, refused) from None
        async with console.db.read() as conn:
            item = await rumors.find_review_item(conn, user.person, item_id)
        return await _form_page(
            request,
            form,
            action="rumor_clarify",
            parts={"id": str(item_id)},
            mode="clarify",
            item=item,
            refused=refused,
        )
    await _after_commit(console, delivered)
    await _delivered_flash(request, "rumor_published" if form.publish else "rumor_saved", delivered)
    raise redirect(request, "rumor", id=str(cid))


# -- report ------------------------------------------------------------------------------------


async def report_page(request: web.Request) -> web.Response:
    """The most asked claims of a period, answered and unanswered, per region below."""
    console, user = console_of(request), user_of(request)
    config = console.config.rumors
    days = query_int(request, "days", config.report_days, 1, 366)
    code = request.query.get("region") or None
    try:
        async with console.db.write() as conn:
            root, result = await rumors.report_for(
                conn,
                user.person,
                region_code=code,
                days=days,
                limit=config.report_limit,
                now=utcnow(),
                via="console",
            )
            roots = repo.scope_roots(user.person.scope_regions(*REPORTERS))
            choices = await region_choices(conn, roots)
    except rumors.RumorRefused as refused:
        raise refusal_page(console.texts, refused) from None
    lines = (*result.unanswered, *result.answered)
    return await render(
        request,
        "console/rumors/report.html",
        root=root,
        report=result,
        days=days,
        day_choices=sorted({*REPORT_DAYS, days}),
        region=code or "",
        choices=choices,
        top=max((line.asks for line in lines), default=0),
    )


# -- flashes -----------------------------------------------------------------------------------


async def _delivered_flash(request: web.Request, key: str, delivered: rumors.Delivered) -> None:
    await flash(
        request,
        key,
        "ok",
        notified=delivered.notified,
        updated=delivered.updated,
        notices=len(delivered.notice_ids),
    )
