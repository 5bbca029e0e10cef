"""The evidence report: what it shows, escaped document text, and the two ways to make it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.cli_run import call
from zerank_core.calibrate import ThresholdFit, ThresholdPolicy
from zerank_core.criteria import Criterion, load_criteria
from zerank_core.gate import PageGate
from zerank_core.loaders import Document, load_document
from zerank_core.report import page_ranges, render_report
from zerank_core.results import GateResult, Passage
from zerank_core.scorers.lexical import BM25Scorer
from zerank_core.select import SelectionPolicy

ROOT = Path(__file__).resolve().parent.parent
PACKET = ROOT / "cookbook" / "prior_auth" / "packet.txt"
CRITERIA = ROOT / "cookbook" / "prior_auth" / "criteria.yaml"
PAYLOAD = (
    '<script>window.pwned = 1; console.error("pwned")</script>'
    '<img src="x" onerror="window.pwned = 2">'
    '<a href="javascript:window.pwned = 3">open</a>'
)
POLICY = SelectionPolicy(threshold=0.5, top_k=3, order="original", dedupe=True)


def packet_result(extra: list[Criterion] | None = None) -> GateResult:
    criteria = load_criteria(CRITERIA) + (extra or [])
    return PageGate(BM25Scorer(), POLICY).run(load_document(PACKET), criteria)


def test_every_criterion_and_kept_page_is_rendered_with_its_score_bar() -> None:
    result = packet_result()
    html = render_report(result)
    for item in result.results:
        assert f'id="c-{item.criterion.id}"' in html
        for number in item.pages:
            assert f'id="c-{item.criterion.id}-page-{number}"' in html
            page = result.document.page(number)
            assert page.text is not None
            first_line = page.text.strip().splitlines()[0]
            assert first_line.replace("&", "&amp;").replace("'", "&#39;")[:30] in html
    assert html.count('class="bar"') == sum(len(r.pages) for r in result.results)
    # Near-duplicates are folded under the page they repeat (TB's copy of page 18).
    assert "page 40 repeats page 18" in html
    assert "<details" in html


def test_the_heatmap_links_every_cell_to_its_page() -> None:
    result = packet_result()
    html = render_report(result)
    svg = html[html.index("<svg") : html.index("</svg>")]
    cells = re.findall(r'<a href="#([^"]+)"><rect', svg)
    assert len(cells) == len(result.results) * len(result.document.pages)
    anchors = set(re.findall(r'id="([^"]+)"', html))
    assert set(cells) <= anchors
    assert "url(#empty)" in svg  # the blank page 24


def test_missing_evidence_and_warnings_come_first() -> None:
    missing = Criterion("ZEBRA", "quokka xylophone zeppelin")
    result = packet_result([missing])
    html = render_report(result)
    top = html.index('id="missing"')
    assert top < html.index('id="heatmap"')
    assert "ZEBRA</a> — no evidence" in html[top:]
    assert "Scores are uncalibrated" in html[: html.index('id="heatmap"')]

    nothing = PageGate(BM25Scorer(), SelectionPolicy(top_k=0)).run(
        load_document(PACKET), load_criteria(CRITERIA)[:2]
    )
    html = render_report(nothing)
    assert "kept nothing: top-K is 0" in html[: html.index('id="heatmap"')]


def test_a_policy_fitted_on_another_backend_is_a_visible_warning(tmp_path: Path) -> None:
    policy = ThresholdPolicy(
        fit=ThresholdFit("conformal", 0.9, 0.3, 30, 30, 0.92, 0.09), backend={"name": "hosted"}
    ).save(tmp_path / "policy.json")
    out = tmp_path / "result.json"
    code, _, err = call(
        "compress", str(PACKET), "-c", str(CRITERIA), "--backend", "lexical", "--no-cache",
        "--policy", str(policy), "-o", str(out), "--html",
    )  # fmt: skip
    assert code == 0, err
    html = (tmp_path / "result.html").read_text(encoding="utf-8")
    assert "was fitted on hosted scores and this run used lexical" in html


def test_document_text_is_inert_text() -> None:
    document = Document.from_texts(
        [f"Negative QuantiFERON tuberculosis screening. {PAYLOAD}", "Nothing here.", ""],
        source='packet "<b>x</b>".txt',
    )
    criteria = [Criterion("TB", "negative tuberculosis screening QuantiFERON")]
    html = render_report(PageGate(BM25Scorer(), POLICY).run(document, criteria))
    assert "<script" not in html.lower()
    assert "<img" not in html.lower()
    assert 'href="javascript' not in html.lower()
    assert "onerror=&#34;" in html or "onerror=&quot;" in html
    assert "&lt;script&gt;window.pwned = 1" in html
    assert "&lt;b&gt;x&lt;/b&gt;" in html
    # Nothing may load or run: the page's own policy forbids scripts and requests.
    assert "default-src 'none'" in html
    assert not re.search(r"""(src|href)=["'](https?:|//)""", html)


def test_passages_are_highlighted_at_their_offsets() -> None:
    result = packet_result()
    tb = result.result_for("TB")
    number = tb.pages[0]
    text = result.document.page(number).text
    assert text is not None
    start = text.index("QUANTIFERON")
    passage = Passage(page=number, start=start, end=start + 30, score=0.91, text="")
    updated = tb.model_copy(update={"passages": (passage,)})
    results = tuple(updated if r is tb else r for r in result.results)
    html = render_report(result.model_copy(update={"results": results}))
    marked = re.findall(r"<mark[^>]*>(.*?)</mark>", html, flags=re.S)
    assert marked == [text[start : start + 30]]
    assert 'title="passage score 0.910"' in html


def test_compress_html_and_report_from_the_saved_result_are_the_same_page(
    tmp_path: Path,
) -> None:
    out = tmp_path / "result.json"
    code, _, err = call(
        "compress", str(PACKET), "-c", str(CRITERIA), "--backend", "lexical", "--no-cache",
        "--dedupe", "-o", str(out), "--html",
    )  # fmt: skip
    assert code == 0, err
    assert f"report: {tmp_path / 'result.html'}" in err
    code, _, err = call("report", str(out), "-o", str(tmp_path / "again.html"))
    assert code == 0, err
    first = (tmp_path / "result.html").read_text(encoding="utf-8")
    assert (tmp_path / "again.html").read_text(encoding="utf-8") == first

    pages = PACKET.read_text(encoding="utf-8").split("\f")
    (tmp_path / "a.txt").write_text("\f".join(pages[:20]), encoding="utf-8")
    (tmp_path / "b.txt").write_text("\f".join(pages[20:]), encoding="utf-8")
    docs = [str(tmp_path / "a.txt"), str(tmp_path / "b.txt")]
    common = ["-c", str(CRITERIA), "--backend", "lexical", "--no-cache"]
    code, _, err = call("compress", *docs, *common, "-o", str(tmp_path / "dir"), "--html")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "dir").iterdir() if p.suffix != ".jsonl") == [
        "a.html", "a.json", "b.html", "b.json", "summary.json",
    ]  # fmt: skip
    code, out_text, err = call("compress", *docs, *common, "-o", "-")
    assert code == 0, err
    (tmp_path / "both.json").write_text(out_text, encoding="utf-8")
    code, _, err = call("report", str(tmp_path / "both.json"))
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "both").iterdir()) == ["a.html", "b.html"]


def test_report_refuses_a_file_that_is_not_a_result(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema_version": 1, "document": 3}', encoding="utf-8")
    code, _, err = call("report", str(bad))
    assert code != 0
    assert "is not a zerank gate result" in err
    with pytest.raises(TypeError, match="GateResult"):
        render_report({"document": 1})  # type: ignore[arg-type]


def test_page_ranges_shorten_runs() -> None:
    assert page_ranges([3, 4, 5, 6, 7, 12]) == "3–7, 12"
    assert page_ranges([1, 2, 9]) == "1, 2, 9"
    assert page_ranges([]) == ""
