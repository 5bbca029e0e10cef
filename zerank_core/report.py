"""The evidence report: one self-contained HTML file per gate result.

:func:`render_report` turns a :class:`~zerank_core.results.GateResult` (fresh
from a run, or loaded back from its JSON) into a page a reviewer can open or
print: the summary and its warnings, the criteria that kept nothing, the
pages × criteria heatmap (inline SVG, each cell a link to its page), and per
criterion the kept pages in the policy's order, each with its score as a
bar and its text with the matched passages highlighted.

The page needs nothing from the network (inline CSS, no script, no font, no
image file) and forbids it too: its Content-Security-Policy allows no
script and no request. Document text is untrusted: the Jinja2 template
escapes every value, so a page holding ``<script>`` or ``onerror=`` shows
it as text.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zerank_core.results import CriterionResult, GateResult, PageRecord, Passage
from zerank_core.scorers.base import Scale

__all__ = ["page_ranges", "render_report", "write_report"]


@dataclass(frozen=True)
class _Segment:
    text: str
    mark: bool
    score: float | None = None


def _segments(text: str, passages: list[Passage]) -> list[_Segment]:
    """``text`` cut into plain and highlighted runs at the passages' offsets."""
    spans = sorted((max(0, p.start), min(len(text), p.end), p.score) for p in passages)
    out: list[_Segment] = []
    at = 0
    for start, end, score in spans:
        start = max(start, at)
        if end <= start:
            continue
        if start > at:
            out.append(_Segment(text[at:start], False))
        out.append(_Segment(text[start:end], True, score))
        at = end
    if at < len(text):
        out.append(_Segment(text[at:], False))
    return out


def _heat(score: float | None) -> str:
    """A cell's fill: white to deep blue with the score; grey hatching for an empty page."""
    if score is None:
        return "url(#empty)"
    value = min(1.0, max(0.0, score))
    light = round(97 - 62 * value)
    return f"hsl(212, 70%, {light}%)"


def page_ranges(pages: tuple[int, ...] | list[int]) -> str:
    """Page numbers with runs of three or more shortened: ``3–7, 12`` (in the given order)."""
    parts: list[str] = []
    run: list[int] = []
    for number in pages:
        if run and number == run[-1] + 1:
            run.append(number)
            continue
        parts += _run(run)
        run = [number]
    parts += _run(run)
    return ", ".join(parts)


def _run(run: list[int]) -> list[str]:
    if len(run) >= 3:
        return [f"{run[0]}–{run[-1]}"]
    return [str(n) for n in run]


_ranges = page_ranges


def _context(result: GateResult) -> dict[str, Any]:
    document = result.document
    pages = {p.number: p for p in document.pages}
    report = result.report
    criteria = []
    for item in result.results:
        criteria.append(_criterion(item, pages))
    kept_by: dict[int, list[str]] = {}
    for item in result.results:
        for number in item.pages:
            kept_by.setdefault(number, []).append(item.criterion.id)
    cell_w, cell_h, label_w = 16, 20, max(60, 8 * max(len(c.id) for c in result.criteria))
    heatmap = {
        "cell_w": cell_w,
        "cell_h": cell_h,
        "label_w": label_w,
        "width": label_w + cell_w * len(document.pages) + 10,
        "height": 24 + cell_h * len(result.results) + 6,
        "pages": [p.number for p in document.pages],
        "rows": [
            {
                "id": item.criterion.id,
                "cells": [
                    {
                        "page": p.number,
                        "score": item.scores.get(p.number),
                        "fill": _heat(item.scores.get(p.number)),
                        "kept": p.number in item.pages,
                        "evidence": p.number in item.evidence_pages,
                        "anchor": f"{_slug(item.criterion.id)}-page-{p.number}"
                        if p.number in item.pages
                        else f"page-{p.number}",
                    }
                    for p in document.pages
                ],
            }
            for item in result.results
        ],
    }
    warnings = []
    if result.scale is Scale.UNCALIBRATED and result.model in (None, "bm25"):
        warnings.append(
            "Scores are uncalibrated (BM25 lexical baseline): 1.0 is the best page for each "
            "criterion, not a probability, and a lack of evidence is flagged only when a "
            "criterion's words appear on no page."
        )
    elif result.scale is Scale.UNCALIBRATED:
        warnings.append(
            f"Scores are uncalibrated ({result.model} is not a zerank model): they order "
            "pages, but are not probabilities, so a threshold on them means nothing until "
            "zerank calibrate --calibrator fits a calibrator that --policy applies."
        )
    source = result.policy_source
    backend = result.backend.name if result.backend is not None else None
    if source is not None and source.fitted_on is not None and source.fitted_on != backend:
        warnings.append(
            f"The policy ({source.path}) was fitted on {source.fitted_on} scores and this run "
            f"used {backend or 'another backend'}: its thresholds do not carry over between "
            "backends."
        )
    if any(
        p.text is None for p in document.pages if any(p.number in c.pages for c in result.results)
    ):
        warnings.append(
            "This result was saved without its text (--no-context): kept pages are listed "
            "without their text."
        )
    no_evidence = [r for r in result.results if r.no_evidence]
    kept_nothing = [r for r in result.results if not r.no_evidence and r.kept_nothing]
    appendix = [
        {
            "number": p.number,
            "chars": p.chars,
            "empty": p.empty,
            "kept_by": [
                {"id": cid, "anchor": f"{_slug(cid)}-page-{p.number}"}
                for cid in kept_by.get(p.number, [])
            ],
            "best": _best(result, p),
        }
        for p in document.pages
    ]
    return {
        "r": result,
        "report": report,
        "document": document,
        "name": Path(document.source).name or document.source,
        "criteria": criteria,
        "heatmap": heatmap,
        "warnings": warnings,
        "no_evidence": no_evidence,
        "kept_nothing": kept_nothing,
        "appendix": appendix,
        "empty_pages": _ranges(list(document.empty_pages)),
        "policy_line": result.policy.describe(),
        "slug": _slug,
        "ranges": _ranges,
    }


def _best(result: GateResult, page: PageRecord) -> dict[str, Any] | None:
    scored = [
        (r.scores[page.number], r.criterion.id) for r in result.results if page.number in r.scores
    ]
    if not scored:
        return None
    score, cid = max(scored)
    return {"score": score, "id": cid}


def _criterion(item: CriterionResult, pages: dict[int, PageRecord]) -> dict[str, Any]:
    by_page: dict[int, list[Passage]] = {}
    for passage in item.passages:
        by_page.setdefault(passage.page, []).append(passage)
    duplicates: dict[int, list[Any]] = {}
    for d in item.duplicates:
        duplicates.setdefault(d.duplicate_of, []).append(d)
    kept = []
    for number in item.pages:
        page = pages.get(number)
        text = page.text if page is not None else None
        role = (
            "evidence"
            if number in item.evidence_pages
            else "neighbour"
            if number in item.neighbor_pages
            else "forced"
            if number in item.forced_pages
            else "kept"
        )
        score = item.scores.get(number)
        kept.append(
            {
                "number": number,
                "role": role,
                "score": score,
                "percent": 0 if score is None else round(100 * min(1.0, max(0.0, score)), 1),
                "chars": page.chars if page is not None else None,
                "segments": None if text is None else _segments(text, by_page.get(number, [])),
                "passages": len(by_page.get(number, [])),
                "duplicates": duplicates.get(number, []),
            }
        )
    return {"item": item, "kept": kept, "best": item.best_score}


def _slug(text: str) -> str:
    return "c-" + "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in text)


def _environment() -> Any:
    from jinja2 import Environment, PackageLoader, StrictUndefined

    return Environment(
        loader=PackageLoader("zerank_core", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_report(result: GateResult) -> str:
    """The evidence report of ``result`` as one self-contained HTML page."""
    if not isinstance(result, GateResult):
        raise TypeError(f"result must be a GateResult, got {type(result).__name__}")
    template = _environment().get_template("report.html.j2")
    return str(template.render(**_context(result)))


def write_report(path: str | os.PathLike[str], result: GateResult) -> Path:
    """Write :func:`render_report`'s page to ``path`` (parent folders are created)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render_report(result), encoding="utf-8")
    return target
