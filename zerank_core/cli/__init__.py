"""The ``zerank`` command: gate long documents, classify texts, manage the score cache.

Results go to stdout as JSON (or to ``-o FILE``); the backend used, the
summary table and the progress bar go to stderr, so stdout stays parseable.
Each subcommand is a module of this package with ``add_parser`` and ``run``.
Every expected failure (bad input or settings, an unreadable document, a
backend that fails or answers nonsense) is one line on stderr naming what
failed, the criterion and the batch where known, with exit status 2;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TextIO

import httpx

from zerank_core import __version__
from zerank_core.cli import cache, calibrate, classify, compress, evaluate, report
from zerank_core.cli._common import (
    ArgumentParser,
    choose_backend,
    finish_resumable,
    resume_hint,
)
from zerank_core.errors import ZeRankError
from zerank_core.redaction import redact

__all__ = ["build_parser", "choose_backend", "main"]

DESCRIPTION = """\
Gate long documents page by page against many criteria, or classify texts,
with ZeroEntropy's calibrated zerank rerankers (or an offline BM25 baseline).

backend: chosen by --backend (or ZERANK_BACKEND), by --server-url, by --device
or --model (a Hugging Face id or folder: open weights in-process; a plain name
such as zerank-2: the API or your server; bm25: the baseline), else the
environment, in this order (the same rules as the Python adapters):
  ZEROENTROPY_API_KEY   hosted ZeroEntropy API (model: --model or ZERANK_MODEL)
  ZERANK_SERVER_URL     your rerank server, e.g. http://localhost:8000/v1/rerank
                        (vLLM, llama.cpp; also --server-url)
  ZERANK_LOCAL_MODEL    open weights in-process (pip install 'zerank-gate[local]')
  otherwise             BM25, lexical and uncalibrated: works offline, no model
The backend used is always printed on stderr.

score cache: on by default at $ZERANK_CACHE or ~/.cache/zerank-gate/scores.sqlite3
(--cache PATH, --no-cache); it stores hashes and scores, never text.

examples:
  zerank compress packet.pdf --criteria criteria.yaml -o result.json
  zerank compress packet.txt --criteria criteria.yaml --heatmap heatmap.png
  zerank compress packet.pdf --criteria criteria.yaml --html report.html
  zerank report result.json -o report.html
  zerank calibrate evidence.yaml --target 0.9 -o policy.json
  zerank compress packet.pdf --criteria criteria.yaml --policy policy.json
  zerank evaluate evidence.yaml --policy policy.json --png recall.png
  zerank classify cookbook/classify/tickets.txt --labels cookbook/classify/labels.yaml
  zerank cache info
"""


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="zerank",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_debug(parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS.values():
        module.add_parser(commands)
    for subparser in commands.choices.values():
        _add_debug(subparser)
    return parser


def _add_debug(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: a subcommand's default must not overwrite ``zerank --debug COMMAND``.
    parser.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="on an error, show the full traceback instead of one line",
    )


def _expected_errors() -> tuple[type[BaseException], ...]:
    """What a run can fail with for reasons outside the program: reported, not traced."""
    errors: tuple[type[BaseException], ...] = (ZeRankError, httpx.HTTPError, OSError)
    sdk = sys.modules.get("zeroentropy")
    if sdk is not None:
        errors += (sdk.ZeroEntropyError,)
    return errors


def describe_error(exc: BaseException) -> str:
    """One redacted line: the package's message, or the type and message of anything else."""
    text = str(exc) if isinstance(exc, ZeRankError) else f"{type(exc).__name__}: {exc}"
    return redact(" ".join(text.split()))


COMMANDS = {
    "compress": compress,
    "classify": classify,
    "calibrate": calibrate,
    "evaluate": evaluate,
    "report": report,
    "cache": cache,
}


def main(
    argv: Sequence[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    """Run the command line; return the exit status (0 ok, 2 an expected error).

    A bug still ends in a traceback; so does an expected error with ``--debug``.
    """
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = int(COMMANDS[args.command].run(args, out, err))
    except _expected_errors() as exc:
        if getattr(args, "debug", False):
            raise
        print(f"zerank: error: {describe_error(exc)}{resume_hint(args)}", file=err)
        return 2
    finish_resumable(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
