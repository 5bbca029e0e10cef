"""``zerank evaluate``: recall vs characters kept and no-evidence detection on a labelled set.

Prints the recall curve of a scorer's ranking (as a table, and as a PNG with
``--png``), what a policy keeps (``--policy FILE`` from ``zerank calibrate``,
or ``--threshold T``), and how often that policy keeps nothing: rightly, for
queries with no relevant unit, and wrongly, for queries with evidence.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from typing import Any, TextIO

from zerank_core.calibrate import ThresholdPolicy
from zerank_core.cli._common import (
    add_backend_options,
    add_output_option,
    threshold_arg,
    write_json,
)
from zerank_core.cli.calibrate import (
    DATA_EPILOG,
    add_data_options,
    policy_selections,
    print_recall_curve,
    score_labelled,
)
from zerank_core.errors import MissingDependencyError
from zerank_core.evaluate import evaluate_selection, no_evidence_detection
from zerank_core.gate import DEFAULT_PAGE_POLICY
from zerank_core.plots import plot_recall_curves
from zerank_core.select import SelectionPolicy

__all__ = ["add_parser", "run"]


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "evaluate",
        help="recall vs characters kept and no-evidence detection on a labelled set",
        description="Score a labelled set and print the ranking's recall against the share\n"
        "of characters kept, what a threshold policy keeps, and how often it keeps\n"
        "nothing for queries without evidence (right) and with evidence (wrong).",
        epilog=DATA_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_data_options(parser)
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--policy", type=Path, metavar="FILE", help="threshold policy from zerank calibrate"
    )
    which.add_argument(
        "--threshold",
        type=threshold_arg,
        metavar="T",
        help=f"one threshold for every query (default without --policy: "
        f"{DEFAULT_PAGE_POLICY.threshold}, zerank compress's floor)",
    )
    parser.add_argument(
        "--png",
        type=Path,
        metavar="FILE.png",
        help="draw recall against characters kept (needs zerank-gate[eval])",
    )
    add_output_option(parser)
    add_backend_options(parser)


def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.png is not None and importlib.util.find_spec("matplotlib") is None:
        raise MissingDependencyError("matplotlib", "eval")
    policy = ThresholdPolicy.load(args.policy) if args.policy is not None else None
    labelled, queries, backend = score_labelled(args, err)
    rows = print_recall_curve(queries, err)

    if policy is not None:
        selections = policy_selections(policy, labelled)
        described = (
            f"policy {args.policy} ({policy.fit.method}, target {policy.target:g}, "
            f"threshold {policy.threshold:.4g}"
            + (f", {len(policy.criteria)} criteria with their own" if policy.criteria else "")
            + ")"
        )
        fitted_with = policy.backend.get("name"), policy.backend.get("model")
        if fitted_with != (backend["name"], backend["model"]):
            print(
                f"note: the policy was fitted with {fitted_with[0]} ({fitted_with[1]}); "
                f"these scores come from {backend['name']} ({backend['model']})",
                file=err,
            )
    else:
        threshold = args.threshold if args.threshold is not None else DEFAULT_PAGE_POLICY.threshold
        selections = [SelectionPolicy(threshold=threshold)] * len(queries)
        described = f"threshold {threshold}"
    kept = evaluate_selection(queries, selections)
    empty = no_evidence_detection(queries, selections)
    print(f"\n{described}:", file=err)
    print(
        f"  mean recall {kept.mean_recall:.3f}, full recall on {kept.full_recall_rate:.1%} of "
        f"queries, {kept.chars_kept:.1%} of characters kept",
        file=err,
    )
    print("no-evidence detection (the policy keeps nothing):", file=err)
    if empty.detection_rate is None:
        print("  queries without evidence: none in this set", file=err)
    else:
        print(
            f"  queries without evidence: {empty.correct_empty} of {empty.n_without_evidence} "
            f"kept nothing ({empty.detection_rate:.1%}, right)",
            file=err,
        )
    if empty.false_empty_rate is not None:
        print(
            f"  queries with evidence:    {empty.wrong_empty} of {empty.n_with_evidence} "
            f"kept nothing ({empty.false_empty_rate:.1%}, wrong)",
            file=err,
        )
    if args.png is not None:
        name = f"{backend['name']} ({labelled.format})"
        plot_recall_curves(
            {name: queries},
            args.png,
            title=f"{labelled.path.name}: evidence recall vs characters kept",
        )
        print(f"chart: {args.png}", file=err)
    write_json(
        {
            "data": {"path": str(labelled.path), "format": labelled.format},
            "backend": backend,
            "recall_curve": rows,
            "policy": {
                "description": described,
                "mean_recall": round(kept.mean_recall, 6),
                "full_recall_rate": round(kept.full_recall_rate, 6),
                "chars_kept": round(kept.chars_kept, 6),
            },
            "no_evidence": {
                "queries_without_evidence": empty.n_without_evidence,
                "kept_nothing_without_evidence": empty.correct_empty,
                "queries_with_evidence": empty.n_with_evidence,
                "kept_nothing_with_evidence": empty.wrong_empty,
            },
        },
        args.output,
        out,
        err,
    )
    return 0
