"""The evidence report opened in headless Chromium (Debian's ``chromium``, driven by Playwright).

It checks what a reviewer sees: every criterion and kept page visible, no
console error, no network request, a planted script-injection page inert.
The screenshot and a printed PDF go to ``$ZERANK_ARTIFACTS`` (default
``test-artifacts/`` in the checkout).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from zerank_core.criteria import load_criteria
from zerank_core.gate import PageGate
from zerank_core.loaders import Document, load_document
from zerank_core.report import write_report
from zerank_core.scorers.lexical import BM25Scorer
from zerank_core.select import SelectionPolicy

ROOT = Path(__file__).resolve().parent.parent
PACKET = ROOT / "cookbook" / "prior_auth" / "packet.txt"
CRITERIA = ROOT / "cookbook" / "prior_auth" / "criteria.yaml"
CHROMIUM = os.environ.get("ZERANK_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
INSTALL = "apt-get install -y chromium && pip install playwright"
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PAYLOAD = (
    "\n<script>window.pwned = 1; console.error('pwned')</script>\n"
    '<img src="https://example.com/x.png" onerror="window.pwned = 2">\n'
    '<a href="javascript:window.pwned = 3">open the chart</a>\n'
    '<iframe src="https://example.com/"></iframe><svg onload="window.pwned = 4"></svg>\n'
)

playwright_api = pytest.importorskip(
    "playwright.sync_api", reason=f"Playwright is not installed: {INSTALL}"
)
if not Path(CHROMIUM).is_file():
    pytest.skip(f"no Chromium browser at {CHROMIUM}: {INSTALL}", allow_module_level=True)


def artifacts() -> Path:
    folder = Path(os.environ.get("ZERANK_ARTIFACTS", ROOT / "test-artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def planted_packet() -> Document:
    """The bundled packet with an injection payload on page 18, which TB keeps."""
    packet = load_document(PACKET)
    pages = [p.text + (PAYLOAD if p.number == 18 else "") for p in packet.pages]
    return Document.from_texts(pages, source=str(PACKET))


def test_the_packet_report_in_a_real_browser(tmp_path: Path) -> None:
    policy = SelectionPolicy(threshold=0.5, top_k=3, order="original", dedupe=True)
    result = PageGate(BM25Scorer(), policy).run(planted_packet(), load_criteria(CRITERIA))
    assert 18 in result.result_for("TB").pages
    report = write_report(tmp_path / "report.html", result)

    console: list[Any] = []
    requests: list[str] = []
    errors: list[str] = []
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 1400})
            page.on("console", lambda message: console.append(message))
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("request", lambda request: requests.append(request.url))
            page.goto(report.as_uri())
            page.wait_for_load_state("load")

            for item in result.results:
                section = page.locator(f"#c-{item.criterion.id}")
                assert section.is_visible(), item.criterion.id
                for number in item.pages:
                    kept = page.locator(f"#c-{item.criterion.id}-page-{number}")
                    kept.scroll_into_view_if_needed()
                    assert kept.is_visible(), (item.criterion.id, number)
            assert page.locator("#heatmap svg a rect").count() == len(result.results) * 41

            # The payload is shown as text and did nothing.
            assert page.evaluate("window.pwned") is None
            assert page.locator("script, img, iframe, main svg[onload]").count() == 0
            assert page.locator("a[href^='javascript']").count() == 0
            tb_page = page.locator("#c-TB-page-18 .text")
            assert "<script>window.pwned = 1;" in tb_page.inner_text()
            page.get_by_text("open the chart").first.click()
            assert page.evaluate("window.pwned") is None

            page.screenshot(path=str(artifacts() / "report.png"), full_page=False)
            page.emulate_media(media="print")
            assert page.locator(".text").first.evaluate("e => getComputedStyle(e).maxHeight") == (
                "none"
            )
            pdf = page.pdf(path=str(artifacts() / "report.pdf"))
            assert pdf.startswith(b"%PDF")
        finally:
            browser.close()

    assert [m.text for m in console if m.type in ("error", "warning")] == []
    assert errors == []
    assert requests == [report.as_uri()]
    assert (artifacts() / "report.png").stat().st_size > 10_000
