"""The ``zerank`` command: gate long documents, classify texts, manage the score cache.

Results go to stdout as JSON (or to ``-o FILE``); the backend used, the
summary table and the progress bar go to stderr, so stdout stays parseable.
Each subcommand is a module of this package with ``add_parser`` and ``run``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TextIO

import httpx

from zerank_core import __version__
from zerank_core.cli import cache, classify, compress
from zerank_core.cli._common import choose_backend, redact
from zerank_core.errors import ConfigurationError, DocumentError, ZeRankError

__all__ = ["build_parser", "choose_backend", "main"]

DESCRIPTION = """\
Gate long documents page by page against many criteria, or classify texts,
with ZeroEntropy's calibrated zerank rerankers (or an offline BM25 baseline).

backend: chosen by --backend, else the environment, in this order:
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
  zerank classify tickets.txt --labels labels.yaml --multi-label
  zerank cache info
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zerank",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS.values():
        module.add_parser(commands)
    return parser


COMMANDS = {"compress": compress, "classify": classify, "cache": cache}


def main(
    argv: Sequence[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    """Run the command line; return the exit status (0 ok, 1 failed, 2 bad input)."""
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(COMMANDS[args.command].run(args, out, err))
    except (ConfigurationError, DocumentError) as exc:
        print(f"zerank: error: {redact(str(exc))}", file=err)
        return 2
    except (ZeRankError, httpx.HTTPError, OSError) as exc:
        print(f"zerank: error: {redact(str(exc))}", file=err)
        return 1


if __name__ == "__main__":
    sys.exit(main())
