"""``zerank report``: the evidence report of a saved result, as one HTML file."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, TextIO

from pydantic import ValidationError

from zerank_core.errors import ConfigurationError
from zerank_core.report import write_report
from zerank_core.results import SCHEMA_VERSION, GateResult, MultiResult

__all__ = ["add_parser", "run"]


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "report",
        help="render the evidence report of a saved result (HTML)",
        description="Render the evidence report of a result that zerank compress wrote "
        "(-o FILE.json, or one file of -o DIR): no rescoring, nothing from the network.",
    )
    parser.add_argument("result", type=Path, metavar="RESULT.json", help="a saved gate result")
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="FILE.html",
        help="where to write the report (default: RESULT.html next to the result)",
    )


def load_results(path: Path) -> list[GateResult]:
    """The gate results in ``path``: one document's, or each of a several-document file."""
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        return [GateResult.model_validate_json(text)]
    except ValidationError as single:
        try:
            return list(MultiResult.model_validate_json(text).results)
        except ValidationError:
            errors = single.errors()
            first = errors[0] if errors else {"loc": (), "msg": str(single)}
            where = ".".join(str(part) for part in first["loc"]) or "the file"
            raise ConfigurationError(
                f"{path} is not a zerank gate result (schema version {SCHEMA_VERSION}): "
                f"{where}: {first['msg']}"
            ) from None


def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    results = load_results(args.result)
    if len(results) == 1:
        target = args.output or args.result.with_suffix(".html")
        print(f"report: {write_report(target, results[0])}", file=err)
        return 0
    folder = args.output or args.result.with_suffix("")
    from zerank_core.cli._documents import result_names

    names = result_names([r.document.source for r in results])
    for name, result in zip(names, results, strict=True):
        write_report(folder / Path(name).with_suffix(".html"), result)
    print(f"reports: {folder}/ — {len(results)} documents", file=err)
    return 0
