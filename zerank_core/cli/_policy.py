"""``zerank compress --policy FILE``: apply the thresholds ``zerank calibrate`` fitted."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from zerank_core.calibrate import ThresholdPolicy
from zerank_core.criteria import Criterion
from zerank_core.select import SelectionPolicy

__all__ = ["add_policy_option", "apply_policy_file"]


def add_policy_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--policy",
        type=Path,
        metavar="FILE",
        help="thresholds fitted by zerank calibrate: they replace --threshold, --top-k and "
        "the criteria file's thresholds (every page at or above its criterion's threshold "
        "is kept, as the recall target assumes)",
    )


def apply_policy_file(
    args: argparse.Namespace,
    policy: SelectionPolicy,
    criteria: Sequence[Criterion],
    err: TextIO,
) -> tuple[SelectionPolicy, list[Criterion]]:
    """The selection policy and criteria with the file's thresholds (unchanged without one)."""
    if args.policy is None:
        return policy, list(criteria)
    fitted = ThresholdPolicy.load(args.policy)
    selection = dataclasses.replace(policy, threshold=fitted.threshold, top_k=None)
    updated = [dataclasses.replace(c, threshold=fitted.threshold_for(c.id)) for c in criteria]
    own = [c.id for c in criteria if c.id in fitted.criteria]
    print(
        f"policy file: {args.policy} — {fitted.fit.method}, recall target {fitted.target:g}, "
        f"threshold {fitted.threshold:.4g}"
        + (f"; own thresholds for {', '.join(own)}" if own else ""),
        file=err,
    )
    used = getattr(args, "backend_used", None)
    fitted_with = fitted.backend.get("name")
    if fitted_with is None:
        return selection, updated
    if used is None:
        # On Ray each actor resolves the backend on its node; only --backend is known here.
        if args.backend != fitted_with:
            print(
                f"note: the policy was fitted on {fitted_with} scores; on Ray each actor "
                f"chooses its backend from the flags and its node's environment"
                + (f" (here --backend {args.backend})" if args.backend else "")
                + f": its thresholds hold for {fitted_with} scores only",
                file=err,
            )
    elif fitted_with != used.get("name"):
        print(
            f"note: the policy was fitted on {fitted_with} scores and this run uses "
            f"{used.get('name')}: its thresholds do not carry over between backends",
            file=err,
        )
    return selection, updated
