"""End to end in a real browser (the console's Playwright setup, Debian's Chromium): compose
and send a notice and see its receipt counts; review a rumor question, create the
clarification and publish it.  Screenshots of every notices and rumors page at a phone width
(375 px) and a desktop width (1440 px) go to tests/output/.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request

from playwright.sync_api import Browser, Page

from tests.test_console_e2e import (  # the browser and the demo server are shared
    DESKTOP,
    OUTPUT,
    PHONE,
    DemoServer,
    _log_in,
    _page,
    browser,  # noqa: F401  (a fixture)
    server,  # noqa: F401  (a fixture)
)

OTHER_POST = "扩散！小区东门的快递柜检测出病毒了，这几天千万别去取快递，已经有人被隔离了。"
POST = (
    "紧急扩散：听说明天全市地铁停运一个月，公交也要全部停开，大家赶紧囤好物资，"
    "上班的人提前请假，转给家里人！"
)


def _residents(demo: DemoServer, grid: str) -> list[int]:
    rows = demo.query(
        "SELECT p.id FROM people p JOIN regions g ON g.id = p.region_id "
        "JOIN person_roles r ON r.person_id = p.id "
        f"WHERE r.role = 'resident' AND g.code = '{grid}' ORDER BY p.id"
    )
    return [r.id for r in rows]


def _ask(demo: DemoServer, person_id: int, text: str) -> list[str]:
    """A resident's message through the simulator; its replies.  The first rumor question
    of a server process builds the match index (jieba's lexicon loads for seconds), so the
    bound on the wait is generous: a guard against hanging, not a timing assertion."""
    body = json.dumps({"address": f"sim-{person_id}", "text": text}).encode()
    request = urllib.request.Request(
        demo.base + "/sim/api/send", body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return list(json.loads(response.read())["replies"])


def _fits(page: Page, viewport: dict[str, int], what: str) -> None:
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= viewport["width"], f"{what}: page is {width}px wide"


def _shoot(page: Page, name: str) -> None:
    OUTPUT.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(OUTPUT / f"{name}.png"), full_page=True)


def _wait_delivered(demo: DemoServer, notice_id: int) -> int:
    """Wait until the server's delivery worker has sent the notice to every person; how many
    people that is.  A bound against hanging, not a timing assertion."""
    deadline = time.monotonic() + 60
    while True:
        [row] = demo.query(
            "SELECT COUNT(*) AS total, SUM(CASE WHEN status = 'sent' THEN 1 ELSE 0 END) AS sent "
            f"FROM outbox WHERE ref_type = 'notice' AND ref_id = {notice_id} "
            "AND target_kind = 'user'"
        )
        if row.total and row.sent == row.total:
            return int(row.total)
        assert time.monotonic() < deadline, f"notice {notice_id}: {row.sent}/{row.total} sent"
        time.sleep(0.3)


def test_compose_and_send_a_notice_then_see_its_receipts(
    server: DemoServer,  # noqa: F811
    browser: Browser,  # noqa: F811
) -> None:
    residents = _residents(server, "G0101")
    page = _page(browser, PHONE)
    _log_in(page, server)
    page.goto(server.base + "/console/notices/new")
    _fits(page, PHONE, "compose")
    _shoot(page, "notice-compose-phone")
    page.fill("textarea[name=text]", "明天上午9点在小区东门做核酸检测，请带好身份证。")
    page.uncheck("input[name=regions][value=D01]")
    page.check("input[name=regions][value=G0101]")
    page.check("input[name=ack_required]")
    page.check("input[name=urgent]")  # not held by the quiet hours, whatever the hour
    page.click("form.compose button[type=submit]")
    page.wait_for_url("**/console/notices/*")
    assert page.is_visible("text=已开始发送")
    code = page.inner_text("h1").split()[1]
    [notice] = server.query(f"SELECT id, ack_required FROM notices WHERE code = '{code}'")
    assert notice.ack_required
    people = _wait_delivered(server, notice.id)
    server.chat(residents[0], "收到")  # a recipient acknowledges once it has reached them
    page.reload()
    _fits(page, PHONE, "notice")
    _shoot(page, "notice-receipts-phone")
    page.context.close()

    desktop = _page(browser, DESKTOP)
    _log_in(desktop, server)
    desktop.goto(server.base + "/console/notices")
    row = desktop.locator("ul.notices li", has_text=code)
    assert f"居民 {people}：送达 {people}，确认 1" in " ".join(row.inner_text().split())
    _fits(desktop, DESKTOP, "notices")
    _shoot(desktop, "notice-list-desktop")
    desktop.click(f"text={code}")
    desktop.click(".card-head .pills a:has-text('未确认')")
    desktop.wait_for_url("**unacked=1")
    assert desktop.locator("td.name").count() == people - 1
    _shoot(desktop, "notice-receipts-desktop")
    desktop.goto(server.base + "/console/notices/new")
    _shoot(desktop, "notice-compose-desktop")
    desktop.context.close()


def test_review_a_rumor_question_create_and_publish(
    server: DemoServer,  # noqa: F811
    browser: Browser,  # noqa: F811
) -> None:
    askers = _residents(server, "G0102")[:2]
    for person in askers:
        assert "核实后会告诉您" in "".join(_ask(server, person, "这是真的吗 " + POST))

    page = _page(browser, DESKTOP)
    _log_in(page, server)
    page.goto(server.base + "/console/rumors/review")
    item = page.locator("section.review-item", has_text="地铁停运")
    assert "2 人问过" in " ".join(item.inner_text().split())
    _fits(page, DESKTOP, "review")
    _shoot(page, "rumor-review-desktop")
    item.locator("text=新建辟谣").click()
    page.wait_for_url("**/clarify")
    page.fill("textarea[name=claim]", "明天起全市地铁公交停运一个月")
    page.select_option("select[name=verdict]", "false")
    page.fill("textarea[name=explanation]", "地铁和公交正常运营，没有停运安排。")
    page.fill("input[name=source_name]", "市交通运输局")
    assert page.is_checked("input[name=publish]")
    _shoot(page, "rumor-clarify-desktop")
    page.click("main form.stack button[type=submit]")
    page.wait_for_url(re.compile(r"/console/rumors/\d+$"))
    assert page.is_visible("text=已通知 2 位问过的居民")
    told = server.query("SELECT person_id FROM outbox WHERE ref_type = 'rumor' ORDER BY person_id")
    assert [r.person_id for r in told] == sorted(askers)
    _shoot(page, "rumor-clarification-desktop")
    page.goto(server.base + "/console/rumors/report")
    assert page.is_visible("text=明天起全市地铁公交停运一个月")
    _shoot(page, "rumor-report-desktop")
    page.goto(server.base + "/console/rumors")
    _shoot(page, "rumor-list-desktop")
    page.context.close()


def test_notices_and_rumors_pages_fit_a_phone(
    server: DemoServer,  # noqa: F811
    browser: Browser,  # noqa: F811
) -> None:
    for person in _residents(server, "G0201")[:3]:
        assert "核实后会告诉您" in "".join(_ask(server, person, "这是真的吗 " + OTHER_POST))
    page = _page(browser, PHONE)
    _log_in(page, server)
    # A refused form comes back with the reason, as typed.
    page.goto(server.base + "/console/notices/new")
    page.fill("textarea[name=text]", "今晚8点停水，请提前储水。")
    page.uncheck("input[name=regions][value=D01]")
    page.click("form.compose button[type=submit]")
    assert page.is_visible("text=请至少勾选一个区域")
    assert page.input_value("textarea[name=text]") == "今晚8点停水，请提前储水。"
    _fits(page, PHONE, "refused compose")
    _shoot(page, "notice-compose-refused-phone")
    [clarification] = server.query("SELECT id FROM rumor_clarifications ORDER BY id LIMIT 1")
    [item] = server.query(
        "SELECT id FROM rumor_review_items WHERE status = 'pending' ORDER BY id DESC LIMIT 1"
    )
    for name, path in (
        ("notice-list-phone", "/console/notices"),
        ("rumor-list-phone", "/console/rumors"),
        ("rumor-review-phone", "/console/rumors/review"),
        ("rumor-clarify-phone", f"/console/rumors/review/{item.id}/clarify"),
        ("rumor-new-phone", "/console/rumors/new"),
        ("rumor-clarification-phone", f"/console/rumors/{clarification.id}"),
        ("rumor-report-phone", "/console/rumors/report"),
    ):
        page.goto(server.base + path)
        assert page.title(), path
        _fits(page, PHONE, path)
        _shoot(page, name)
    page.context.close()
