"""Custom-menu clicks (official account and WeCom app): each menu key does what its keyword does.

A ``CLICK`` event carries the menu item's ``EventKey``.  The keys below are what the menus
must be configured with; a click is handled exactly as if the person had typed the keyword, by
running the root router again on the same message as text.  A feature that wants a click of its
own registers ``router.event("click", keys=[...])`` before this router is included.

====================  ==============  ===================================================
EventKey              keyword         what it does
====================  ==============  ===================================================
``HELP``              帮助            the menu of what the bot can do
``MY_INFO``           我的信息        the person's grid and warden
``CHECKIN``           打卡            today's health check-in
``FAMILY_CHECKIN``    帮家人打卡      check in for a household member
``RUMOR_CHECK``       这是真的吗      ask whether something heard is true
``REQUEST``           求助            ask for help (supplies, medicine, a complaint)
``MY_REQUESTS``       我的诉求        the state of one's requests
``ACK``               收到            acknowledge the latest notice
``NOTICE``            发通知          staff: compose a notice
``NOTICE_RECEIPTS``   通知回执        staff: who acknowledged a notice
``TODAY_CHECKINS``    今日打卡        staff: today's check-in rate in scope
``NOT_CHECKED_IN``    未打卡          staff: who has not checked in
``ABNORMAL``          异常            staff: abnormal check-ins
``MY_TASKS``          待办            staff: requests waiting for them
====================  ==============  ===================================================

A key that is not listed gets the "not understood" text.  WeCom's ``enter_agent`` (opening the
app) from someone not registered yet is handled like their first message: registration starts.
"""

from __future__ import annotations

import dataclasses
import logging

from flows.context import Context
from handlers.router import Router

log = logging.getLogger(__name__)

MENU_KEYWORDS: dict[str, str] = {
    "HELP": "帮助",
    "MY_INFO": "我的信息",
    "CHECKIN": "打卡",
    "FAMILY_CHECKIN": "帮家人打卡",
    "RUMOR_CHECK": "这是真的吗",
    "REQUEST": "求助",
    "MY_REQUESTS": "我的诉求",
    "ACK": "收到",
    "NOTICE": "发通知",
    "NOTICE_RECEIPTS": "通知回执",
    "TODAY_CHECKINS": "今日打卡",
    "NOT_CHECKED_IN": "未打卡",
    "ABNORMAL": "异常",
    "MY_TASKS": "待办",
}
"""Menu ``EventKey`` -> the text keyword whose behaviour the click has."""


async def dispatch_as_text(root: Router, ctx: Context, text: str) -> bool:
    """Run ``root``'s handler for ``text`` as if the sender had typed it; ``False`` if none.

    The message stays the same one (same dedupe key, same transaction); only what the routes
    and the handler see of it is text.
    """
    event_inbound = ctx.inbound
    ctx.inbound = dataclasses.replace(
        event_inbound, kind="text", text=text, event=None, event_key=None
    )
    try:
        handler = root.find(ctx)
        if handler is None:
            return False
        await handler(ctx)
        return True
    finally:
        ctx.inbound = event_inbound


def build_menu_router(root: Router) -> Router:
    """The menu's router; ``root`` is the router clicks are dispatched through again."""
    menu = Router("menu")

    @menu.event("click")
    async def on_menu_click(ctx: Context) -> None:
        """A menu item: do what its keyword does."""
        key = (ctx.inbound.event_key or "").strip().upper()
        keyword = MENU_KEYWORDS.get(key)
        if keyword is None:
            log.info("menu click with unknown EventKey %r", ctx.inbound.event_key)
            ctx.say("help/not_understood")
            return
        if not await dispatch_as_text(root, ctx, keyword):
            ctx.say("help/not_understood")

    @menu.event("enter_agent", registered=False)
    async def on_enter_agent(ctx: Context) -> None:
        """Opened the WeCom app before registering: start as a first message would."""
        await dispatch_as_text(root, ctx, "")

    return menu
