"""Regenerate cookbook/figures/report.png: the evidence report of the bundled packet.

Runs offline on the BM25 baseline (no model), renders the report with
``zerank_core.report`` and photographs its top in headless Chromium
(Debian's ``chromium`` through Playwright):

    apt-get install -y chromium && pip install playwright
    python cookbook/prior_auth/make_report_screenshot.py
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))

from zerank_core.criteria import load_criteria  # noqa: E402
from zerank_core.gate import PageGate  # noqa: E402
from zerank_core.loaders import load_document  # noqa: E402
from zerank_core.report import write_report  # noqa: E402
from zerank_core.results import BackendInfo  # noqa: E402
from zerank_core.scorers.lexical import BM25Scorer  # noqa: E402
from zerank_core.select import SelectionPolicy  # noqa: E402

OUTPUT = ROOT / "cookbook" / "figures" / "report.png"
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def main() -> None:
    from playwright.sync_api import sync_playwright

    chromium = os.environ.get("ZERANK_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    policy = SelectionPolicy(threshold=0.5, top_k=3, order="original", dedupe=True)
    result = PageGate(BM25Scorer(), policy).run(
        load_document(ROOT / "cookbook" / "prior_auth" / "packet.txt"),
        load_criteria(ROOT / "cookbook" / "prior_auth" / "criteria.yaml"),
    )
    # The report names the document as given: keep the path relative to the checkout.
    result = result.model_copy(
        update={
            "document": result.document.model_copy(
                update={"source": "cookbook/prior_auth/packet.txt"}
            ),
            "backend": BackendInfo(
                name="lexical", description="BM25 lexical baseline (offline, uncalibrated)"
            ),
        }
    )
    with tempfile.TemporaryDirectory() as folder:
        report = write_report(Path(folder) / "report.html", result)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=LAUNCH_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1100, "height": 1250})
                page.goto(report.as_uri())
                OUTPUT.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(OUTPUT))
            finally:
                browser.close()
    print(OUTPUT)


if __name__ == "__main__":
    main()
