"""Long documents against many criteria: pages in, evidence pages per criterion out.

This module gathers the page-gating API in one import; each part lives in its
own module: :mod:`zerank_core.loaders` (documents as pages),
:mod:`zerank_core.criteria` (what to look for), :mod:`zerank_core.gate`
(:class:`PageGate`), :mod:`zerank_core.results` (what it returns) and
:mod:`zerank_core.plots` (:func:`plot_heatmap`).
"""

from __future__ import annotations

from zerank_core.criteria import Criterion, load_criteria, parse_criteria
from zerank_core.gate import DEFAULT_PAGE_POLICY, PageGate
from zerank_core.loaders import Document, Page, load_document
from zerank_core.plots import plot_heatmap
from zerank_core.results import CriterionResult, GateReport, GateResult

__all__ = [
    "DEFAULT_PAGE_POLICY",
    "Criterion",
    "CriterionResult",
    "Document",
    "GateReport",
    "GateResult",
    "Page",
    "PageGate",
    "load_criteria",
    "load_document",
    "parse_criteria",
    "plot_heatmap",
]
