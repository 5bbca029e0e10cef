"""Long documents in, pages out: PDF, form-feed text, a folder of pages or JSON.

A :class:`Document` is the tuple of its :class:`Page` objects, numbered from 1;
:func:`load_document` reads one from disk.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from zerank_core.errors import ConfigurationError, DocumentError

__all__ = ["Document", "Page", "load_document"]

TEXT_SUFFIXES = frozenset({".txt", ".text", ".md"})


@dataclass(frozen=True)
class Page:
    """One page: its 1-based ``number`` in the document and its text."""

    number: int
    text: str

    @property
    def is_empty(self) -> bool:
        """True when the page has no text (a blank or image-only page)."""
        return not self.text.strip()


@dataclass(frozen=True)
class Document:
    """A document as pages; ``source`` names where it came from."""

    source: str
    pages: tuple[Page, ...]

    @classmethod
    def from_texts(cls, texts: Iterable[str], source: str = "<texts>") -> Document:
        """Pages from strings, numbered from 1."""
        pages = []
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise ConfigurationError(
                    f"page {index + 1} of {source} must be a str, got {type(text).__name__}"
                )
            pages.append(Page(index + 1, text))
        return cls(source, tuple(pages))

    @property
    def empty_pages(self) -> tuple[int, ...]:
        """Numbers of the pages with no text; they are never sent to a model."""
        return tuple(p.number for p in self.pages if p.is_empty)


def load_document(path: str | Path) -> Document:
    """Read pages from a PDF, a folder of text files, JSON, or form-feed text.

    - ``*.pdf``: one page per PDF page, text through pypdf (no OCR: a scanned
      page without a text layer comes back empty);
    - a folder: one page per ``.txt``/``.md`` file, in natural name order
      (``page2`` before ``page10``);
    - ``*.json``: a list of page strings, a list of ``{"text": ...}``, or
      ``{"pages": [...]}`` of either;
    - anything else: UTF-8 text, pages separated by form feeds (``\\f``, as
      ``pdftotext`` writes them).

    Unreadable, encrypted or corrupt input raises :class:`DocumentError`.
    """
    path = Path(path)
    if path.is_dir():
        return _load_folder(path)
    if not path.is_file():
        raise DocumentError(f"{path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".pdf":
        return _load_pdf(path)
    text = _read_text(path)
    if suffix == ".json":
        return _load_json(path, text)
    pages = text.split("\f")
    if len(pages) > 1 and not pages[-1].strip():
        # pdftotext ends every page with a form feed, the last one included.
        pages.pop()
    return Document.from_texts(pages, str(path))


def _read_text(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
        if "\x00" in text:
            # Valid UTF-8, but a binary file: scoring it would give plausible noise.
            raise DocumentError(f"{path} holds NUL bytes: it is a binary file, not text")
        return text
    except UnicodeDecodeError as exc:
        raise DocumentError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except OSError as exc:
        raise DocumentError(f"cannot read {path}: {exc.strerror}") from exc


def _natural_key(name: str) -> list[tuple[int, int | str]]:
    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", name)]


def _load_folder(path: Path) -> Document:
    files = sorted(
        (
            p
            for p in path.iterdir()
            if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES and not p.name.startswith(".")
        ),
        key=lambda p: _natural_key(p.name),
    )
    if not files:
        raise DocumentError(f"{path} holds no .txt or .md files to read as pages")
    return Document.from_texts((_read_text(p) for p in files), str(path))


def _load_json(path: Path, text: str) -> Document:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DocumentError(f"{path} is not valid JSON: {exc}") from exc
    if isinstance(data, dict) and set(data) >= {"pages"}:
        data = data["pages"]
    if not isinstance(data, list):
        raise DocumentError(
            f"{path}: expected a list of pages or {{'pages': [...]}}, got {type(data).__name__}"
        )
    texts = []
    for index, item in enumerate(data):
        if isinstance(item, dict) and isinstance(item.get("text"), str):
            item = item["text"]
        if not isinstance(item, str):
            raise DocumentError(
                f"{path}: page {index + 1} must be a string or {{'text': ...}}, got {item!r:.60}"
            )
        texts.append(item)
    return Document.from_texts(texts, str(path))


def _load_pdf(path: Path) -> Document:
    from pypdf import PdfReader
    from pypdf.errors import DependencyError

    try:
        reader = PdfReader(path)
        if reader.is_encrypted:
            try:
                unlocked = reader.decrypt("")
            except (DependencyError, NotImplementedError) as exc:
                raise DocumentError(f"{path} is encrypted and cannot be opened: {exc}") from exc
            if not unlocked:
                raise DocumentError(
                    f"{path} is encrypted with a password; decrypt it first "
                    "(for example: qpdf --decrypt --password=... in.pdf out.pdf)"
                )
        texts = [page.extract_text() or "" for page in reader.pages]
    except DocumentError:
        raise
    except Exception as exc:
        # pypdf reports damage with many exception types (PdfReadError,
        # ValueError, KeyError, ...): all of them mean this file cannot be read.
        raise DocumentError(f"{path} is not a readable PDF ({type(exc).__name__}: {exc})") from exc
    if not texts:
        raise DocumentError(f"{path} has no pages")
    return Document.from_texts(texts, str(path))
