"""Charts for evaluation: recall against characters kept, and reliability diagrams.

Both functions return a matplotlib ``Figure`` (built without pyplot, so no
global state or display backend is involved) and write a PNG when given a
path. matplotlib comes with ``pip install 'zerank-gate[eval]'``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from zerank_core.calibrate import reliability_bins
from zerank_core.errors import ConfigurationError, MissingDependencyError
from zerank_core.evaluate import LabelledQuery, recall_at_fraction

__all__ = ["plot_recall_curves", "plot_reliability"]


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
