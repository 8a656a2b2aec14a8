"""People and regions in a real browser (Debian's Chromium through Playwright, the real app in
its own process): the region tree and a community's QR posters at a phone width and a desktop
width, and the posters printed to PDF, one A4 page each.  Screenshots go to tests/output/.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from test_console_e2e import DESKTOP, OUTPUT, PHONE, DemoServer, _log_in, _page

from flows.posters import qr_svg

SCANNED_URL = "http://weixin.qq.com/q/02e2eTestTicketG0101"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[DemoServer]:
    demo = DemoServer(tmp_path_factory.mktemp("e2e-people"), sqlite_template)
    try:
        # G0101 got its code earlier (as qrcode/create would have stored it); G0102 did not,
        # and this server has no official account to make one: its poster says so.
        engine = create_engine(f"sqlite:///{demo.db_file}")
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO grid_qr_codes (region_id, scene, ticket, url, created_at) "
                    "SELECT id, code, 'e2e-ticket', :url, CURRENT_TIMESTAMP FROM regions "
                    "WHERE code = 'G0101'"
                ),
                {"url": SCANNED_URL},
            )
        engine.dispose()
        yield demo
    finally:
        demo.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator:
    from playwright.sync_api import sync_playwright
    from test_console_e2e import CHROMIUM

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            yield launched
        finally:
            launched.close()


def test_region_tree_and_posters_at_phone_and_desktop_width(server: DemoServer, browser) -> None:
    OUTPUT.mkdir(parents=True, exist_ok=True)
    communities = [r.name for r in server.query("SELECT name FROM regions WHERE level='community'")]
    for name, viewport in (("phone", PHONE), ("desktop", DESKTOP)):
        page = _page(browser, viewport)
        _log_in(page, server)
        page.goto(server.base + "/console/regions")
        # Down to communities at first; a community opens on a tap to show its grids.
        for community in communities:
            assert page.is_visible(f"summary >> text={community}")
        assert not page.is_visible("text=桃园社区第1网格")
        page.click("summary >> text=桃园社区")
        assert page.is_visible("text=桃园社区第1网格") and page.is_visible("text=桃园社区第2网格")
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= viewport["width"], f"{name}: region tree is {width}px wide"
        page.screenshot(path=str(OUTPUT / f"regions-{name}.png"), full_page=True)

        page.goto(server.base + "/console/regions/C0101/posters")
        qr = page.locator("#poster-G0101 svg.qr")
        box = qr.bounding_box()
        assert box is not None and box["width"] >= 200 and abs(box["width"] - box["height"]) < 2
        assert page.is_visible("#poster-G0102 >> text=需要先配置微信公众号")
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= viewport["width"], f"{name}: posters are {width}px wide"
        page.screenshot(path=str(OUTPUT / f"posters-{name}.png"), full_page=True)
        page.context.close()


def test_posters_print_one_a4_page_each_without_the_console_around_them(
    server: DemoServer, browser
) -> None:
    page = _page(browser, DESKTOP)
    _log_in(page, server)
    page.goto(server.base + "/console/regions/C0101/posters")
    # The drawn code is the one for the stored URL (nothing fetched from Tencent).
    drawn = page.inner_html("#poster-G0101 .poster-qr")
    assert re.search(r'd="([^"]+)"', drawn).group(1) == re.search(  # type: ignore[union-attr]
        r'd="([^"]+)"', qr_svg(SCANNED_URL)
    ).group(1)  # type: ignore[union-attr]
    page.set_viewport_size({"width": 794, "height": 1123})  # A4 at 96 dpi
    page.emulate_media(media="print")
    assert not page.is_visible("header.top") and not page.is_visible(".poster-tools")
    page.screenshot(path=str(OUTPUT / "posters-print.png"), full_page=True)
    pdf = page.pdf(format="A4", print_background=True)
    (OUTPUT / "posters.pdf").write_bytes(pdf)
    pages = len(re.findall(rb"/Type\s*/Page[^s]", pdf))
    assert pages == 2  # the community's two grids, a page each
    page.context.close()
