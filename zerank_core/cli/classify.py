"""``zerank classify``: calibrated label probabilities for texts."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from zerank_core.classify import LabelClassifier
from zerank_core.cli._common import (
    add_backend_options,
    add_output_option,
    cache_line,
    close_scorer,
    make_scorer,
    threshold_arg,
    write_json,
)
from zerank_core.errors import ConfigurationError
from zerank_core.scorers.base import Scale

__all__ = ["add_parser", "run"]


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "classify",
        help="calibrated label probabilities for texts",
        description="Score each text against each label description; print probabilities "
        "and the chosen labels.",
        epilog="texts: a .json list of strings, or one text per line ('-' reads stdin). "
        "labels: .yaml/.json mapping name -> description, or lines 'name: description'. "
        "Each label description is scored as the query and each text as the document. "
        "example (a sample pair ships with the repository): zerank classify "
        "cookbook/classify/tickets.txt --labels cookbook/classify/labels.yaml --default general",
    )
    parser.add_argument("texts", help="texts file, or '-' for stdin")
    parser.add_argument("-l", "--labels", type=Path, required=True, help="labels file")
    parser.add_argument(
        "--threshold",
        type=threshold_arg,
        default=0.5,
        metavar="T",
        help="floor a label must reach (default %(default)s)",
    )
    parser.add_argument(
        "--multi-label", action="store_true", help="choose every label above the floor"
    )
    parser.add_argument(
        "--default",
        metavar="LABEL",
        help="label chosen when none passes; like the library's default=, it need not be "
        "one of the labels (e.g. 'general')",
    )
    parser.add_argument("--instruction", help="instruction appended to every label description")
    add_output_option(parser)
    add_backend_options(parser)


def _read_texts(source: str) -> list[str]:
    if source == "-":
        return [line.rstrip("\n") for line in sys.stdin if line.strip()]
    path = Path(source)
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"cannot read texts file {path}: {exc}") from exc
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigurationError(f"{path} is not valid JSON: {exc}") from exc
        if not isinstance(data, list) or not all(isinstance(t, str) for t in data):
            raise ConfigurationError(f"{path} must hold a JSON list of strings")
        return data
    return [line for line in raw.splitlines() if line.strip()]


def _read_labels(path: Path) -> dict[str, str]:
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"cannot read labels file {path}: {exc}") from exc
    suffix = path.suffix.lower()
    data: object
    if suffix in (".yaml", ".yml", ".json"):
        import yaml

        try:
            # JSON is YAML, so one parser reads both.
            data = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigurationError(f"{path} is not valid YAML/JSON: {exc}") from exc
    else:
        pairs: dict[str, str] = {}
        for number, line in enumerate(raw.splitlines(), start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            name, sep, description = line.partition(":")
            if not sep:
                raise ConfigurationError(
                    f"{path}:{number}: expected 'name: description', got {line.strip()!r:.60}"
                )
            pairs[name.strip()] = description.strip()
        data = pairs
    if not isinstance(data, dict) or not data:
        raise ConfigurationError(f"{path} must map label names to descriptions")
    labels = {}
    for name, description in data.items():
        if not isinstance(description, str):
            raise ConfigurationError(
                f"{path}: the description of label {name!r} must be a string, got {description!r}"
            )
        labels[str(name)] = description
    return labels


def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    texts = _read_texts(args.texts)
    labels = _read_labels(args.labels)
    if not texts:
        raise ConfigurationError(f"no texts in {args.texts}")
    scorer, cached = make_scorer(args, err)
    if scorer.scale is Scale.UNCALIBRATED:
        print(
            "warning: this backend is not calibrated: its scores are not probabilities, so "
            "the threshold does not mean 'likely to be this label' (BM25 scores the best-matching "
            "label 1.0, whether or not it fits). Use zerank "
            "(ZEROENTROPY_API_KEY, ZERANK_SERVER_URL, ZERANK_LOCAL_MODEL or --model) or a "
            "fitted calibrator to classify.",
            file=err,
        )
    threshold = 0.0 if args.threshold is None else args.threshold
    try:
        classifier = LabelClassifier(
            scorer,
            labels,
            threshold=threshold,
            multi_label=args.multi_label,
            default=args.default,
            instruction=args.instruction,
        )
        before = cached.stats if cached is not None else None
        results = classifier.classify(texts)
        stats = cached.stats - before if cached is not None and before is not None else None
    finally:
        close_scorer(scorer, cached)
    width = max(5, *(len(n) for n in labels))
    print(f"{'#':>4}  {'label':<{width}} {'p':>5}  text", file=err)
    rows = []
    for index, (text, result) in enumerate(zip(texts, results, strict=True)):
        chosen = ", ".join(result.labels) or "—"
        best = max(result.probabilities.values())
        short = text if len(text) <= 60 else text[:59] + "…"
        print(f"{index:>4}  {chosen:<{width}} {best:5.2f}  {short}", file=err)
        rows.append(
            {
                "index": index,
                "text": text,
                "label": result.label,
                "labels": list(result.labels),
                "is_default": result.is_default,
                "probabilities": {k: round(v, 6) for k, v in result.probabilities.items()},
            }
        )
    print(
        cache_line(
            cached, None if stats is None else stats.hits, None if stats is None else stats.misses
        ),
        file=err,
    )
    write_json(
        {"backend": args.backend_used, "labels": labels, "results": rows}, args.output, out, err
    )
    return 0
