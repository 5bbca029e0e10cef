"""Charts: recall against characters kept, reliability diagrams, and page × criterion heatmaps.

Both functions return a matplotlib ``Figure`` (built without pyplot, so no
global state or display backend is involved) and write a PNG when given a
path. matplotlib comes with ``pip install 'zerank-gate[eval]'``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from zerank_core.calibrate import reliability_bins
from zerank_core.errors import ConfigurationError, MissingDependencyError
from zerank_core.evaluate import LabelledQuery, recall_at_fraction
from zerank_core.scorers.base import Scale

if TYPE_CHECKING:
    from zerank_core.results import GateResult

__all__ = ["plot_heatmap", "plot_recall_curves", "plot_reliability"]


def plot_recall_curves(
    series: Mapping[str, Sequence[LabelledQuery]],
    path: str | os.PathLike[str] | None = None,
    *,
    max_fraction: float = 0.5,
    points: int = 51,
    reference: Mapping[str, Mapping[float, float]] | None = None,
    title: str = "Evidence recall against characters kept",
    dpi: int = 100,
) -> Any:
    """Mean recall against the share of characters kept, one line per scorer.

    ``series`` maps a name to that scorer's labelled queries. ``reference``
    maps a name to ``{fraction: recall}`` points drawn as markers (published
    figures to compare with).
    """
    figure_cls = _figure()
    if not series:
        raise ConfigurationError("series is empty: nothing to plot")
    if not 0.0 < max_fraction <= 1.0:
        raise ConfigurationError(f"max_fraction must be in (0, 1], got {max_fraction!r}")
    if isinstance(points, bool) or not isinstance(points, int) or points < 2:
        raise ConfigurationError(f"points must be an integer >= 2, got {points!r}")
    fractions = np.linspace(0.0, max_fraction, points)
    figure = figure_cls(figsize=(6.4, 4.4))
    axes = figure.add_subplot()
    for name, queries in series.items():
        reports = recall_at_fraction(queries, [float(f) for f in fractions])
        axes.plot(fractions * 100, [r.mean_recall for r in reports], label=name)
    for name, marks in (reference or {}).items():
        xs = sorted(marks)
        axes.plot([x * 100 for x in xs], [marks[x] for x in xs], "o--", label=name, alpha=0.7)
    axes.set_xlabel("characters kept (% of each document)")
    axes.set_ylabel("mean recall of evidence units")
    axes.set_xlim(0, max_fraction * 100)
    axes.set_ylim(0, 1)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize="small")
    axes.set_title(title)
    figure.tight_layout()
    if path is not None:
        figure.savefig(path, dpi=dpi)
    return figure


def plot_reliability(
    series: Mapping[str, tuple[Sequence[float], Sequence[int | bool]]],
    path: str | os.PathLike[str] | None = None,
    *,
    n_bins: int = 10,
    title: str = "Reliability",
    dpi: int = 100,
) -> Any:
    """Reliability diagram: observed frequency against predicted probability.

    ``series`` maps a name to ``(probabilities, labels)``; each name is drawn
    with its expected calibration error in the legend. The diagonal is
    perfect calibration.
    """
    figure_cls = _figure()
    if not series:
        raise ConfigurationError("series is empty: nothing to plot")
    figure = figure_cls(figsize=(5.2, 5.0))
    axes = figure.add_subplot()
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfectly calibrated")
    for name, (probabilities, labels) in series.items():
        bins = reliability_bins(probabilities, labels, n_bins=n_bins)
        pairs = [
            (p, o)
            for p, o in zip(bins.mean_predicted, bins.observed, strict=True)
            if p is not None and o is not None
        ]
        axes.plot(
            [p for p, _ in pairs],
            [o for _, o in pairs],
            "o-",
            label=f"{name} (ECE {bins.ece:.3f})",
        )
    axes.set_xlabel("predicted probability (bin mean)")
    axes.set_ylabel("observed share relevant")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left", fontsize="small")
    axes.set_title(title)
    figure.tight_layout()
    if path is not None:
        figure.savefig(path, dpi=dpi)
    return figure


def _figure() -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise MissingDependencyError("matplotlib", "eval") from exc
    return Figure


def plot_heatmap(
    result: GateResult, path: str | Path, *, title: str | None = None, dpi: int = 150
) -> Path:
    """Save a pages × criteria picture of the scores to ``path`` (PNG, SVG, PDF).

    Colour is the score; a dot marks a kept page (hollow: a neighbour or a
    forced page); hatched grey columns are empty pages. Needs matplotlib
    (``pip install 'zerank-gate[eval]'``).
    """
    try:
        import numpy as np
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise MissingDependencyError("matplotlib", "eval") from exc

    path = Path(path)
    n_pages, n_criteria = len(result.document.pages), len(result.criteria)
    values = np.array(
        [[math.nan if v is None else v for v in row] for row in result.matrix], dtype=float
    )
    figure = Figure(figsize=(max(6.0, 0.28 * n_pages + 3.0), max(3.0, 0.42 * n_criteria + 1.6)))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    masked = np.ma.masked_invalid(values)
    upper = 1.0 if result.scale in (Scale.PROBABILITY, Scale.UNCALIBRATED) else None
    image = axes.imshow(
        masked, aspect="auto", cmap="viridis", vmin=0.0, vmax=upper, interpolation="nearest"
    )
    axes.set_facecolor("#d9d9d9")
    for page in result.document.empty_pages:
        axes.axvspan(page - 1.5, page - 0.5, facecolor="none", hatch="///", edgecolor="#999999")
    for row, item in enumerate(result.results):
        evidence = set(item.evidence_pages)
        for page in item.pages:
            axes.plot(
                page - 1,
                row,
                marker="o",
                markersize=5,
                markeredgecolor="white",
                markerfacecolor="white" if page in evidence else "none",
            )
    step = 1 if n_pages <= 40 else 5
    axes.set_xticks(range(0, n_pages, step))
    axes.set_xticklabels([str(i + 1) for i in range(0, n_pages, step)], fontsize=7)
    axes.set_yticks(range(n_criteria))
    axes.set_yticklabels([f"{c.id}  {_shorten(c.text, 38)}" for c in result.criteria], fontsize=7)
    axes.set_xlabel("page")
    scale_label = {
        Scale.PROBABILITY: "calibrated probability",
        Scale.UNCALIBRATED: "uncalibrated score (1 = best page)",
    }.get(result.scale, result.scale.value)
    colorbar = figure.colorbar(image, ax=axes, fraction=0.03, pad=0.02)
    colorbar.set_label(scale_label, fontsize=8)
    name = Path(result.document.source).name
    axes.set_title(
        title or f"{name}: {n_pages} pages × {n_criteria} criteria (dot = kept page)", fontsize=9
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi)
    return path


def _shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
