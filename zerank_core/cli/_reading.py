"""Reading documents from the command line: page splitting, OCR, and what reading took."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TextIO

from zerank_core.cli._common import positive_arg
from zerank_core.loaders import Document, load_document
from zerank_core.ocr import OCR_INSTALL

__all__ = ["add_reading_options", "print_reading", "read_document"]


def add_reading_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("reading")
    group.add_argument(
        "--page-chars",
        type=positive_arg,
        metavar="N",
        help="text files: cut pages longer than N characters at paragraph boundaries (for "
        "text without form feeds; e.g. 3000)",
    )
    group.add_argument(
        "--ocr",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="read PDF pages that have no text layer (scans) by OCR (default: when "
        f"zerank-gate[ocr] is installed; --ocr requires it: {OCR_INSTALL})",
    )


def read_document(path: Path, args: argparse.Namespace) -> Document:
    """Load ``path`` with the reading options (``--page-chars``, ``--ocr``)."""
    return load_document(path, page_chars=args.page_chars, ocr=args.ocr)


def print_reading(document: Document, args: argparse.Namespace, err: TextIO) -> None:
    """Say on ``err`` what reading took, which pages were OCR'd and which need OCR."""
    reading = document.reading
    if reading is None:
        return
    ocr = ""
    if reading.ocr_pages:
        ocr = (
            f"; OCR ({reading.ocr_engine}) on pages {_numbers(reading.ocr_pages)} "
            f"in {reading.ocr_seconds:.2f} s"
        )
    print(
        f"read: {document.source} — {len(document.pages)} pages in {reading.seconds:.2f} s "
        f"({reading.reader}){ocr}",
        file=err,
    )
    if reading.needs_ocr:
        count = len(reading.needs_ocr)
        which = (
            f"page {reading.needs_ocr[0]} has"
            if count == 1
            else f"{count} pages ({_numbers(reading.needs_ocr)}) have"
        )
        how = "OCR is off (--no-ocr)" if args.ocr is False else f"to read them: {OCR_INSTALL}"
        print(
            f"note: {which} no text layer, only images, and need OCR; they stay empty "
            f"and are not scored ({how})",
            file=err,
        )


def _numbers(pages: tuple[int, ...]) -> str:
    return ", ".join(map(str, pages))
