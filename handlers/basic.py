"""Everyone's basics: joining (subscribe, QR scene, first message), help, my info, opting out."""

from __future__ import annotations

from flows import rumors
from flows.context import Context
from flows.posters import grid_code_from_scene
from handlers.router import Router
from storage import repo

router = Router("basic")

HELP_WORDS = ("帮助", "菜单", "help", "?", "？", "功能", "你好", "您好")
ROLE_NAMES = {
    "resident": "居民",
    "warden": "网格员",
    "doctor": "签约医生",
    "volunteer": "志愿者",
    "admin": "管理员",
}


def _roles(ctx: Context) -> set[str]:
    return {scope.role for scope in ctx.person.scopes} if ctx.person else set()


@router.event("subscribe", "scan")
async def on_subscribe(ctx: Context) -> None:
    """Followed the account, or scanned a grid's QR poster (scene = grid code)."""
    scene = grid_code_from_scene(ctx.inbound.extra.get("scene"))
    if ctx.person is None:
        await ctx.flows.start(ctx, "registration", grid_code=scene)
        return
    if ctx.person.opted_out:
        await repo.set_opted_out(ctx.conn, ctx.person.id, False)
        ctx.say("help/welcome_back", person=ctx.person)
        return
    ctx.say("help/menu", person=ctx.person, features=ctx.features, roles=_roles(ctx))


@router.event("unsubscribe", registered=True)
async def on_unsubscribe(ctx: Context) -> None:
    """Unfollowed: no more pushes until they come back (PIPL: respect the withdrawal)."""
    assert ctx.person is not None
    await repo.set_opted_out(ctx.conn, ctx.person.id, True)
    await repo.record_audit(ctx.conn, actor_id=ctx.person.id, action="person.opt_out")
    ctx.say("help/goodbye")


@router.message(registered=False)
async def on_first_message(ctx: Context) -> None:
    """Anyone we do not know yet is registered before anything else."""
    await ctx.flows.start(ctx, "registration")


@router.message(*HELP_WORDS)
async def on_help(ctx: Context) -> None:
    ctx.say("help/menu", person=ctx.person, features=ctx.features, roles=_roles(ctx))


@router.message("我的信息", "我的网格", "我是谁")
async def on_my_info(ctx: Context) -> None:
    person = ctx.person
    assert person is not None
    warden = ""
    if person.region is not None:
        wardens = await repo.responsible_people(ctx.conn, person.region, "warden")
        if wardens:
            loaded = await repo.load_person(ctx.conn, wardens[0])
            warden = loaded.name if loaded else ""
    household = await repo.household_label(ctx.conn, person.household_id)
    ctx.say(
        "help/my_info", person=person, warden=warden, household=household, role_names=ROLE_NAMES
    )


fallback = Router("fallback")


@fallback.message()
async def on_anything_else(ctx: Context) -> None:
    """No command and no flow waiting: a short rumor stated without "是真的吗" still gets its
    clarification when the matcher is sure of it; anything else gets the "not understood" text."""
    if await rumors.answer_unprompted(ctx, ctx.text):
        return
    ctx.say("help/not_understood")
