"""What ``zerank compress`` prints on stderr: per document, the same table and totals.

One document gets the full criterion table; several documents get, each,
their ``read:`` line, a header and a compact pages-per-criterion line, then
the job's totals. Page lists shorten runs (``3–7, 12``) and wrap in their
column.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import TextIO

from zerank_core.report import page_ranges
from zerank_core.results import GateReport, GateResult, MultiResult
from zerank_core.scorers.base import Scale

__all__ = ["empty_pages_text", "kept_line", "print_job", "print_result"]

#: The widest the kept-pages column grows before it wraps.
PAGES_WIDTH = 24


def empty_pages_text(pages: Sequence[int]) -> str:
    """``1 empty page (24)``, ``2 empty pages (3, 24)``; ``""`` with none."""
    if not pages:
        return ""
    return f"{len(pages)} empty page{'s' if len(pages) > 1 else ''} ({page_ranges(list(pages))})"


def kept_line(chars_kept: int, chars_total: int, criteria: int, documents: int = 1) -> str:
    """Characters kept for all criteria, against the text itself, and the per-criterion share.

    ``chars_total`` is the text of the document(s) once; the share is
    ``chars_kept / (chars_total × criteria)``, what each criterion reads of
    the whole on average.
    """
    what = (
        f"a {chars_total:,}-character document"
        if documents == 1
        else f"{documents} documents of {chars_total:,} characters"
    )
    full = chars_total * criteria
    if not chars_kept or not full:
        return f"kept nothing for {criteria} criteria, of {what}"
    return (
        f"kept {chars_kept:,} characters in all for {criteria} criteria, of {what}: "
        f"{chars_kept / full:.1%} of it per criterion ({full / chars_kept:.1f}× less than "
        "the whole for each)"
    )


def _header(result: GateResult) -> str:
    report = result.report
    empty = empty_pages_text(report.empty_pages)
    return (
        f"document: {result.document.source} — {report.pages} pages"
        + (f", {empty}, not scored" if empty else "")
        + f"; {report.criteria} criteria"
    )


def _table(result: GateResult, err: TextIO) -> None:
    ids = max(8, *(len(c.id) for c in result.criteria))
    cells = [page_ranges(list(item.pages)) or "—" for item in result.results]
    width = min(PAGES_WIDTH, max(10, *(len(c) for c in cells)))
    print(f"{'criterion':<{ids}}  {'kept pages':<{width}} {'best':>5} {'chars':>7}  text", file=err)
    for item, cell in zip(result.results, cells, strict=True):
        lines = textwrap.wrap(cell, width, break_on_hyphens=False) or ["—"]
        best = item.best_score if item.best_score is not None else 0.0
        text = " ".join(item.criterion.text.split())
        text = text if len(text) <= 52 else text[:51] + "…"
        print(
            f"{item.criterion.id:<{ids}}  {lines[0]:<{width}} {best:5.2f} "
            f"{item.chars_kept:7,}  {text}",
            file=err,
        )
        for more in lines[1:]:
            print(f"{'':<{ids}}  {more}", file=err)


def _duplicate_lines(result: GateResult, err: TextIO) -> None:
    if not result.policy.dedupe:
        return
    found = ", ".join(
        f"{d.page} ≈ {d.duplicate_of} ({d.method} {d.similarity:.2f})" for d in result.duplicates
    )
    print(f"duplicate pages: {found or 'none found'}", file=err)
    dropped = [
        item.criterion.id
        + " "
        + ", ".join(f"{d.page} (= {d.duplicate_of})" for d in item.duplicates)
        for item in result.results
        if item.duplicates
    ]
    if dropped:
        print(f"dropped as duplicates of a kept page: {'; '.join(dropped)}", file=err)


def _passage_lines(result: GateResult, err: TextIO) -> None:
    policy = result.passage_policy
    if policy is None:
        return
    parts = [f"≤ {policy.passage_chars} chars each"]
    if policy.top_k is not None:
        parts.append(f"top {policy.top_k} a page")
    if policy.threshold is not None:
        parts.append(f"floor {policy.threshold:.4g}")
    if policy.max_chars is not None:
        parts.append(f"≤ {policy.max_chars:,} chars a criterion")
    if policy.min_keep:
        parts.append(f"at least {policy.min_keep} a kept page")
    kept = "; ".join(
        f"{item.criterion.id} {len(item.passages)}" for item in result.results if item.pages
    )
    print(f"evidence passages ({', '.join(parts)}): {kept or 'no page kept'}", file=err)


def _evidence_lines(report: GateReport, scale: Scale, err: TextIO, *, quiet: bool = False) -> None:
    reasons: dict[str, list[str]] = {}
    for criterion_id, reason in report.kept_nothing.items():
        reasons.setdefault(reason, []).append(criterion_id)
    for reason, ids in reasons.items():
        print(f"kept nothing: {reason}: {', '.join(ids)}", file=err)
    if report.no_evidence:
        print(f"no evidence (no page above the floor): {', '.join(report.no_evidence)}", file=err)
    elif quiet:
        return
    elif reasons:
        print("no evidence: none (no criterion lacked a page above the floor)", file=err)
    elif scale is Scale.UNCALIBRATED:
        print(
            "no evidence: none flagged — uncalibrated scores only flag a criterion whose "
            "words appear on no page",
            file=err,
        )
    else:
        print("no evidence: none (every criterion kept at least one page)", file=err)


def print_result(result: GateResult, err: TextIO) -> None:
    """One document's summary: header, policy, criterion table, totals and model calls."""
    report = result.report
    print(_header(result), file=err)
    print(f"policy: {result.policy.describe()}", file=err)
    print(file=err)
    _table(result, err)
    _duplicate_lines(result, err)
    _passage_lines(result, err)
    print(file=err)
    print(
        kept_line(report.chars_kept, report.chars_total, report.criteria)
        + f"; ~{report.tokens_kept_estimate:,} tokens kept in all, the document is "
        f"~{report.tokens_full_estimate // max(1, report.criteria):,}",
        file=err,
    )
    _evidence_lines(report, result.scale, err)
    tokens = (
        f"{report.model_tokens:,} tokens"
        if report.model_tokens is not None
        else "tokens not reported by this backend"
    )
    cost = f", ~${report.estimated_cost_usd:.4f}" if report.estimated_cost_usd is not None else ""
    print(
        f"model calls: {report.model_requests} requests, {report.model_texts} "
        f"{'page and passage' if result.passage_policy is not None else 'page'} scores, "
        f"{tokens}{cost}",
        file=err,
    )


def _compact(result: GateResult) -> list[str]:
    """``DX 3, 6 · ACTIVITY 13–15, 41 · HBV — ...``, wrapped to 100 columns."""
    parts = [
        f"{item.criterion.id} {page_ranges(list(item.pages)) or '—'}" for item in result.results
    ]
    return textwrap.wrap(
        " · ".join(parts), 98, initial_indent="  ", subsequent_indent="  ", break_on_hyphens=False
    )


def print_job(job: MultiResult, err: TextIO) -> None:
    """Several documents: per document its header, kept pages per criterion and totals."""
    print(f"policy: {job.results[0].policy.describe()}" if job.results else "", file=err)
    for result in job.results:
        report = result.report
        print(file=err)
        print(_header(result), file=err)
        for line in _compact(result):
            print(line, file=err)
        print("  " + kept_line(report.chars_kept, report.chars_total, report.criteria), file=err)
        _duplicate_lines(result, err)
        _passage_lines(result, err)
        _evidence_lines(report, result.scale, err, quiet=True)
    summary = job.summary
    chars_total = sum(r.report.chars_total for r in job.results)
    tokens = f", {summary.model_tokens:,} tokens" if summary.model_tokens is not None else ""
    print(file=err)
    print(
        kept_line(summary.chars_kept, chars_total, summary.criteria, summary.documents)
        + f"; {summary.no_evidence} document × criterion pairs without evidence",
        file=err,
    )
    print(
        f"model calls: {summary.model_requests} requests, {summary.model_texts} page scores "
        f"({summary.unique_texts} distinct pages){tokens}; "
        f"{summary.seconds:.1f} s, {summary.documents_per_second:.2f} documents/s",
        file=err,
    )
