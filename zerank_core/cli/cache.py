"""``zerank cache``: inspect or clear the score cache."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, TextIO

from zerank_core.cache import ScoreStore, default_cache_path

__all__ = ["add_parser", "run"]


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "cache",
        help="inspect or clear the score cache",
        description="Inspect or clear the score cache.",
    )
    parser.add_argument("action", choices=("info", "clear"))
    parser.add_argument("--cache", metavar="PATH", type=Path, help="cache file (default as above)")


def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    path = args.cache or default_cache_path()
    if not path.exists():
        print(f"no score cache at {path}", file=err)
        return 0
    store = ScoreStore(path)
    try:
        if args.action == "clear":
            removed = store.clear()
            print(f"cleared {removed:,} scores from {path}", file=err)
        else:
            info = store.info()
            print(
                f"{info.path}: {info.entries:,} scores, {info.size_bytes / 1024:,.1f} KiB",
                file=err,
            )
    finally:
        store.close()
    return 0
