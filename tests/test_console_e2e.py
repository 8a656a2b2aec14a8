"""End to end in a real browser: Debian's Chromium driven by Playwright against the real app
(``main.py serve``) on a free port, with a real SQLite file seeded with the demo city.

Screenshots at a phone width (375x812) and a desktop width (1440x900) go to tests/output/.
Chromium comes from ``scripts/install-browser.sh`` (``make test`` runs it); without it these
tests skip with one line, except in CI, where they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import create_engine, text

from storage.seed import DEMO_PASSWORD
from tests.checkin_support import NORMAL

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "tests" / "output"
CHROMIUM = Path("/usr/bin/chromium")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PHONE = {"width": 375, "height": 812}
DESKTOP = {"width": 1440, "height": 900}
FEVER = ["38.6", "发烧 咳嗽", "是", "否", "1"]

if not CHROMIUM.exists():
    if IN_CI:
        pytest.fail("/usr/bin/chromium is missing: run scripts/install-browser.sh", pytrace=False)
    pytest.skip(
        "/usr/bin/chromium is missing: run scripts/install-browser.sh for the browser tests",
        allow_module_level=True,
    )

from playwright.sync_api import Browser, Page, sync_playwright  # noqa: E402


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _post_json(url: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _cli(config: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "main.py", "--config", str(config), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout


class DemoServer:
    """The real app in its own process, and the facts the tests check the pages against."""

    def __init__(self, tmp: Path, sqlite_template: Path) -> None:
        self.db_file = tmp / "e2e.db"
        shutil.copy(sqlite_template, self.db_file)
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.config = tmp / "e2e.yaml"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "server": {"host": "127.0.0.1", "port": self.port},
                    "database": {"url": f"sqlite+aiosqlite:///{self.db_file}"},
                    "scheduler": {"enabled": False},
                    "console": {"session_key": "k" * 43 + "="},
                    "log_level": "WARNING",
                }
            ),
            encoding="utf-8",
        )
        out = _cli(self.config, "seed-demo", "--residents", "60")
        self.admin_phone = out.split("console demo login: ")[1].split(" /")[0]
        self.log = tmp / "server.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "main.py", "--config", str(self.config), "serve"],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._wait_until_up()

    def _wait_until_up(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(self.log.read_text(encoding="utf-8", errors="replace"))
            try:
                with urllib.request.urlopen(self.base + "/healthz", timeout=2):
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("the app did not start within 60 s")

    def query(self, sql: str) -> list[Any]:
        engine = create_engine(f"sqlite:///{self.db_file}")
        try:
            with engine.connect() as conn:
                return list(conn.execute(text(sql)))
        finally:
            engine.dispose()

    def chat(self, person_id: int, *texts: str) -> None:
        for line in texts:
            _post_json(self.base + "/sim/api/send", {"address": f"sim-{person_id}", "text": line})

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=20)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[DemoServer]:
    demo = DemoServer(tmp_path_factory.mktemp("e2e"), sqlite_template)
    try:
        # Some of the day's check-ins, through the simulator as residents would send them.
        grids = {
            r.code: r.id for r in demo.query("SELECT id, code FROM regions WHERE level='grid'")
        }
        residents = demo.query(
            "SELECT p.id, p.region_id FROM people p JOIN person_roles r ON r.person_id = p.id "
            "WHERE r.role = 'resident' ORDER BY p.id"
        )
        in_grid = {
            code: [r.id for r in residents if r.region_id == gid] for code, gid in grids.items()
        }
        for pid in in_grid["G0101"][:5] + in_grid["G0102"][:2] + in_grid["G0201"][:6]:
            demo.chat(pid, "打卡", *NORMAL)
        demo.chat(in_grid["G0101"][5], "打卡", *FEVER)
        yield demo
    finally:
        demo.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            yield launched
        finally:
            launched.close()


def _page(browser: Browser, viewport: dict[str, int]) -> Page:
    context = browser.new_context(viewport=viewport, locale="zh-CN", device_scale_factor=1)
    return context.new_page()


def _log_in(page: Page, server: DemoServer) -> None:
    page.goto(server.base + "/console/")
    assert "/console/login" in page.url
    page.fill("input[name=account]", server.admin_phone)
    page.fill("input[name=password]", DEMO_PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(server.base + "/console/")


def _expected_rates(server: DemoServer) -> tuple[list[str], list[float | None]]:
    """Today's check-in rate per grid, computed here straight from the tables."""
    rows = server.query(
        "SELECT g.code, COUNT(p.id) AS residents, "
        "SUM(CASE WHEN EXISTS (SELECT 1 FROM checkin_records c WHERE c.person_id = p.id "
        "AND c.replaced_at IS NULL AND c.status = 'complete') THEN 1 ELSE 0 END) AS done "
        "FROM regions g LEFT JOIN people p ON p.region_id = g.id AND p.opted_out = 0 "
        "WHERE g.level = 'grid' GROUP BY g.code ORDER BY g.code"
    )
    return [r.code for r in rows], [
        round(100 * r.done / r.residents, 1) if r.residents else None for r in rows
    ]


def _chart_option(page: Page, element_id: str) -> dict[str, Any]:
    page.wait_for_function(
        "id => window.echarts && echarts.getInstanceByDom(document.getElementById(id))",
        arg=element_id,
    )
    return dict(
        page.evaluate(
            "id => { const o = echarts.getInstanceByDom(document.getElementById(id)).getOption();"
            " return {series: o.series.map(s => ({type: s.type, data: s.data})),"
            " x: o.xAxis[0].data || null, y: o.yAxis[0].data || null}; }",
            element_id,
        )
    )


def test_overview_chart_shows_each_grids_rate(server: DemoServer, browser: Browser) -> None:
    OUTPUT.mkdir(parents=True, exist_ok=True)
    codes, rates = _expected_rates(server)
    assert any(rates)  # the check-ins made through the simulator count
    for name, viewport in (("phone", PHONE), ("desktop", DESKTOP)):
        page = _page(browser, viewport)
        _log_in(page, server)
        rate = _chart_option(page, "rate-chart")
        assert rate["series"] == [{"type": "bar", "data": rates}]
        names = [
            r.name
            for r in server.query("SELECT name FROM regions WHERE level='grid' ORDER BY code")
        ]
        assert rate["y"] == names and len(codes) == len(names)
        trend = _chart_option(page, "trend-chart")
        assert trend["series"][0]["type"] == "line" and len(trend["series"][0]["data"]) == 14
        assert trend["series"][0]["data"][-1] > 0
        # The canvas really has the chart's size (not a zero-height box).
        box = page.locator("#rate-chart canvas").first.bounding_box()
        assert box and box["width"] > 200 and box["height"] >= 200
        # The page fits the screen: nothing pushes it wider than the viewport.
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= viewport["width"], f"{name}: page is {width}px wide"
        page.screenshot(path=str(OUTPUT / f"overview-{name}.png"), full_page=True)
        page.context.close()


def test_phone_menu_and_sorting_and_the_board(server: DemoServer, browser: Browser) -> None:
    OUTPUT.mkdir(parents=True, exist_ok=True)
    page = _page(browser, PHONE)
    _log_in(page, server)
    assert not page.is_visible("#nav a[href='/console/audit']")
    page.click(".nav-toggle")
    assert page.is_visible("#nav a[href='/console/audit']")
    page.screenshot(path=str(OUTPUT / "menu-phone.png"))
    page.click(".nav-toggle")
    # Sorting the table by rate puts the best grid first.
    page.click("#grid-table th:nth-child(6)")
    page.click("#grid-table th:nth-child(6)")
    first = page.inner_text("#grid-table tbody tr:first-child td:first-child")
    codes, rates = _expected_rates(server)
    best = codes[max(range(len(rates)), key=lambda i: rates[i] or 0)]
    assert first == server.query(f"SELECT name FROM regions WHERE code='{best}'")[0].name
    page.click("#grid-table tbody a >> nth=0")
    page.wait_for_url("**/checkin")
    assert page.is_visible("text=提醒未打卡居民")
    page.screenshot(path=str(OUTPUT / "board-phone.png"), full_page=True)
    page.context.close()

    desktop = _page(browser, DESKTOP)
    _log_in(desktop, server)
    desktop.goto(server.base + "/console/grids/G0101/checkin")
    assert desktop.is_visible("text=高风险")
    desktop.screenshot(path=str(OUTPUT / "board-desktop.png"), full_page=True)
    desktop.goto(server.base + "/console/audit")
    desktop.screenshot(path=str(OUTPUT / "audit-desktop.png"), full_page=True)
    desktop.goto(server.base + "/console/grids/NOPE/checkin")
    assert desktop.is_visible("text=页面不存在")
    desktop.context.close()
    login = _page(browser, PHONE)
    login.goto(server.base + "/console/login")
    login.screenshot(path=str(OUTPUT / "login-phone.png"), full_page=True)
    login.context.close()


def test_requests_board_and_timeline(server: DemoServer, browser: Browser) -> None:
    OUTPUT.mkdir(parents=True, exist_ok=True)
    residents = [
        r.id
        for r in server.query(
            "SELECT p.id FROM people p JOIN person_roles r ON r.person_id = p.id "
            "JOIN regions g ON g.id = p.region_id "
            "WHERE r.role = 'resident' AND g.code = 'G0101' ORDER BY p.id"
        )
    ]
    [warden] = [
        r.person_id
        for r in server.query(
            "SELECT r.person_id FROM person_roles r JOIN regions g ON g.id = r.scope_region_id "
            "WHERE r.role = 'warden' AND g.code = 'G0101'"
        )
    ]
    # Residents ask for help in chat, as they would.
    server.chat(
        residents[0],
        "求助",
        "1",
        "家里老人行动不便，米和油都吃完了",
        "大米、食用油",
        "大米10斤，油1桶",
        "紧急",
    )
    server.chat(residents[1], "求助", "2", "需要代买降压药，药店缺货", "一般")
    server.chat(residents[2], "求助", "4", "楼下垃圾三天没人清运，气味很大", "一般")
    numbers = [r.number for r in server.query("SELECT number FROM requests ORDER BY id")]
    assert len(numbers) == 3
    server.chat(warden, f"{numbers[0]} 受理", f"{numbers[0]} 备注 已电话联系，下午送到")

    for name, viewport in (("phone", PHONE), ("desktop", DESKTOP)):
        page = _page(browser, viewport)
        _log_in(page, server)
        page.goto(server.base + "/console/requests?region=G0101")
        assert page.is_visible(f"text={numbers[1]}") and page.is_visible(f"text={numbers[2]}")
        assert page.inner_text(".tab[aria-current=page] .count") == "2"
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= viewport["width"], f"{name}: board is {width}px wide"
        page.screenshot(path=str(OUTPUT / f"requests-board-{name}.png"), full_page=True)

        page.click("text=办理中")
        page.click(f"text={numbers[0]}")
        page.wait_for_url(f"**/requests/{numbers[0]}")
        if name == "phone":
            # The admin presses the warden (督办); the timeline shows it.
            page.click("summary:has-text('督办')")
            page.fill("textarea[name=text]", "老人独居，请今天送到")
            page.click("button:has-text('督办')")
            page.wait_for_url(f"**/requests/{numbers[0]}")
            assert page.is_visible("text=已督办")
            page.click("summary:has-text('办结并答复居民')")
            page.click("summary:has-text('转交其他网格')")
            assert page.is_visible("textarea[name=reply]") and page.is_visible("select[name=grid]")
            page.evaluate("window.scrollTo(0, 0)")  # the sticky header back at the top
            page.screenshot(path=str(OUTPUT / "request-actions-phone.png"), full_page=True)
        timeline = page.inner_text(".timeline")
        for step in ("提交诉求", "分派至网格", "受理", "备注", "已电话联系，下午送到", "督办"):
            assert step in timeline, step
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= viewport["width"], f"{name}: request page is {width}px wide"
        page.screenshot(path=str(OUTPUT / f"request-{name}.png"), full_page=True)
        page.context.close()
