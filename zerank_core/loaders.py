"""Long documents in, pages out: PDF, form-feed text, a folder of pages or JSON.

A :class:`Document` is the tuple of its :class:`Page` objects, numbered from 1;
:func:`load_document` reads one from disk and records how (:class:`Reading`:
time taken, OCR'd pages, pages that need OCR). :func:`split_pages` cuts text
without page breaks into pages at paragraph boundaries.

PDF text comes from PDFium (pypdfium2), about 18 times faster than pure-Python
pypdf on a 252-page filing; a page without a text layer that holds an image
(a scan or a fax) is read by OCR when the ``ocr`` extra is installed
(:mod:`zerank_core.ocr`).
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zerank_core.errors import ConfigurationError, DocumentError
from zerank_core.ocr import OcrEngine, default_ocr_engine, ocr_available
from zerank_core.results import Reading

__all__ = ["Document", "Page", "Reading", "load_document", "split_pages"]

TEXT_SUFFIXES = frozenset({".txt", ".text", ".md"})

#: What the loader reads, for messages about what it does not.
SUPPORTED_FORMATS = (
    ".pdf, UTF-8 text (.txt, .md; pages split by form feeds), .json (a list of pages) "
    "and a folder of .txt/.md files"
)

#: Formats users try that are no text: refused by name, not read as noise.
UNSUPPORTED_SUFFIXES = {
    ".docx": "a Word document",
    ".doc": "a Word document",
    ".odt": "an OpenDocument text",
    ".rtf": "a Rich Text document",
    ".xlsx": "an Excel workbook",
    ".xls": "an Excel workbook",
    ".pptx": "a PowerPoint deck",
    ".ppt": "a PowerPoint deck",
    ".epub": "an e-book",
    ".zip": "a ZIP archive",
    ".png": "an image",
    ".jpg": "an image",
    ".jpeg": "an image",
    ".gif": "an image",
    ".tif": "an image",
    ".tiff": "an image",
}

# Leading bytes of binary formats that may come under any name.
_MAGIC = (
    (b"PK\x03\x04", "a ZIP container (.docx, .xlsx, .pptx, .odt, .epub or .zip)"),
    (b"\xd0\xcf\x11\xe0", "an OLE document (.doc, .xls or .ppt)"),
    (b"%PDF-", "a PDF (name it .pdf)"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"{\\rtf", "a Rich Text document"),
)

# Control characters no text file holds (tab, newlines, form feed and ESC are text's own).
_CONTROL = re.compile(r"[\x01-\x08\x0e-\x1a\x1c-\x1f\x7f]")
# 200 dpi is a fax's fine mode and the usual floor for OCR of body text.
OCR_DPI = 200


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
    """A document as pages; ``source`` names where it came from.

    ``reading`` says how :func:`load_document` read it (``None`` for a
    document built in memory); it takes no part in equality.
    """

    source: str
    pages: tuple[Page, ...]
    reading: Reading | None = field(default=None, compare=False)

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


def load_document(
    path: str | Path,
    *,
    page_chars: int | None = None,
    ocr: bool | OcrEngine | None = None,
) -> Document:
    """Read pages from a PDF, a folder of text files, JSON, or form-feed text.

    - ``*.pdf``: one page per PDF page, numbered as the PDF numbers them, text
      through PDFium. A page with no text layer but with images (a scan) is
      read by OCR: ``ocr=None`` (default) uses the ``ocr`` extra's engine
      when it is installed, ``True`` requires it (:class:`MissingDependencyError`
      otherwise), ``False`` never runs OCR, and an :class:`~zerank_core.ocr.OcrEngine`
      is used as given. Pages left empty this way are listed in
      ``document.reading.needs_ocr``;
    - a folder: one page per ``.txt``/``.md`` file, in natural name order
      (``page2`` before ``page10``);
    - ``*.json``: a list of page strings, a list of ``{"text": ...}``, or
      ``{"pages": [...]}`` of either;
    - anything else: UTF-8 text, pages separated by form feeds (``\\f``, as
      ``pdftotext`` writes them). With ``page_chars=N``, a page longer than N
      characters is cut into pages of at most about N at paragraph
      boundaries (:func:`split_pages`): use it for text with no page breaks.
      It applies to text files only, since PDF, JSON and folder pages are the
      source's own.

    Unreadable, encrypted or corrupt input raises :class:`DocumentError`.
    """
    started = time.perf_counter()
    path = Path(path)
    if page_chars is not None:
        _check_page_chars(page_chars)
    if ocr is not None and not isinstance(ocr, bool | OcrEngine):
        raise ConfigurationError(
            f"ocr must be None, True, False or an OcrEngine, got {type(ocr).__name__}"
        )
    if path.is_dir():
        _no_page_chars(page_chars, path, "a folder of pages")
        document = _load_folder(path)
        reading = Reading(reader="folder")
    elif not path.is_file():
        raise DocumentError(f"{path} does not exist")
    elif path.suffix.lower() in UNSUPPORTED_SUFFIXES:
        what = UNSUPPORTED_SUFFIXES[path.suffix.lower()]
        raise DocumentError(
            f"{path} is {what} ({path.suffix}), which is not supported: the formats read are "
            f"{SUPPORTED_FORMATS}; convert it first (to PDF or text)"
        )
    elif _size(path) == 0:
        raise DocumentError(f"{path} is empty (0 bytes): there is nothing to read")
    elif path.suffix.lower() == ".pdf":
        _no_page_chars(page_chars, path, "a PDF")
        document, reading = _load_pdf(path, ocr)
    else:
        text = _read_text(path)
        if path.suffix.lower() == ".json":
            _no_page_chars(page_chars, path, "a JSON list of pages")
            document = _load_json(path, text)
            reading = Reading(reader="json")
        else:
            document = _load_text(path, text, page_chars)
            reading = Reading(reader="text")
    seconds = time.perf_counter() - started
    return dataclasses.replace(document, reading=reading.model_copy(update={"seconds": seconds}))


def split_pages(text: str, page_chars: int) -> list[str]:
    """Cut ``text`` into pages of at most about ``page_chars`` characters.

    Pages end at paragraph boundaries (a blank line): paragraphs are packed
    into a page while they fit. A paragraph longer than ``page_chars`` is cut
    at line breaks, then after sentences, then between words, and only a
    single longer word is cut mid-word. Every character of ``text`` is in
    exactly one page, in order (``"".join(pages) == text``); text with no
    character returns ``[""]``.
    """
    _check_page_chars(page_chars)
    if not isinstance(text, str):
        raise ConfigurationError(f"text must be a str, got {type(text).__name__}")
    pages: list[str] = []
    current = ""
    for piece in _pieces(text, page_chars, 0):
        if current and len(current) + len(piece) > page_chars:
            pages.append(current)
            current = ""
        current += piece
    pages.append(current)
    return pages


# Boundaries to cut at, coarsest first; each piece keeps the separator that
# follows it, so joining the pieces gives the text back.
_BREAKS = (
    re.compile(r"\n[ \t]*\n\s*"),
    re.compile(r"\n"),
    re.compile(r"(?<=[.!?;:])\s+"),
    re.compile(r"\s+"),
)


def _pieces(text: str, limit: int, level: int) -> list[str]:
    if len(text) <= limit:
        return [text]
    if level == len(_BREAKS):
        return [text[i : i + limit] for i in range(0, len(text), limit)]
    cuts = [m.end() for m in _BREAKS[level].finditer(text) if 0 < m.end() < len(text)]
    out: list[str] = []
    for start, end in zip([0, *cuts], [*cuts, len(text)], strict=True):
        out.extend(_pieces(text[start:end], limit, level + 1))
    return out


def _check_page_chars(page_chars: int) -> None:
    if isinstance(page_chars, bool) or not isinstance(page_chars, int) or page_chars < 1:
        raise ConfigurationError(f"page_chars must be an integer >= 1, got {page_chars!r}")


def _no_page_chars(page_chars: int | None, path: Path, what: str) -> None:
    if page_chars is not None:
        raise ConfigurationError(
            f"page_chars applies to text files; {path} is {what}, whose pages are kept as they are"
        )


def _load_text(path: Path, text: str, page_chars: int | None) -> Document:
    pages = text.split("\f")
    if len(pages) > 1 and not pages[-1].strip():
        # pdftotext ends every page with a form feed, the last one included.
        pages.pop()
    if page_chars is not None:
        pages = [part for page in pages for part in split_pages(page, page_chars)]
    return Document.from_texts(pages, str(path))


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as exc:
        raise DocumentError(f"cannot read {path}: {exc.strerror}") from exc


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DocumentError(f"cannot read {path}: {exc.strerror}") from exc
    for magic, what in _MAGIC:
        if data.startswith(magic):
            raise DocumentError(
                f"{path} is {what}, not text: the formats read are {SUPPORTED_FORMATS}"
            )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DocumentError(
            f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}){_encoding_hint(data)}"
        ) from exc
    if "\x00" in text:
        # Valid UTF-8, but a binary file: scoring it would give plausible noise.
        raise DocumentError(f"{path} holds NUL bytes: it is a binary file, not text")
    head = text[:4096]
    if len(_CONTROL.findall(head)) > max(2, len(head) // 100):
        raise DocumentError(
            f"{path} holds control characters that text does not: it is a binary file; "
            f"the formats read are {SUPPORTED_FORMATS}"
        )
    return text


def _encoding_hint(data: bytes) -> str:
    """What a file that is not UTF-8 probably is, and how to convert it."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "; it is UTF-16 text: convert it with iconv -f utf-16 -t utf-8 FILE > FILE.utf8.txt"
    try:
        data.decode("cp1252")
    except UnicodeDecodeError:
        return ""
    return (
        "; it reads as Windows-1252 / Latin-1 text: convert it with "
        "iconv -f cp1252 -t utf-8 FILE > FILE.utf8.txt"
    )


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


def _load_pdf(path: Path, ocr: bool | OcrEngine | None) -> tuple[Document, Reading]:
    import pypdfium2 as pdfium
    import pypdfium2.raw as pdfium_c

    engine: OcrEngine | None
    if ocr is None:
        engine = default_ocr_engine() if ocr_available() else None
    elif ocr is True:
        engine = default_ocr_engine()
    elif ocr is False:
        engine = None
    else:
        engine = ocr
    try:
        pdf = pdfium.PdfDocument(path)
    except pdfium.PdfiumError as exc:
        if getattr(exc, "err_code", None) == pdfium_c.FPDF_ERR_PASSWORD or "password" in str(exc):
            raise DocumentError(
                f"{path} is encrypted with a password; decrypt it first "
                "(for example: qpdf --decrypt --password=... in.pdf out.pdf)"
            ) from exc
        raise DocumentError(f"{path} is not a readable PDF ({exc})") from exc
    texts: list[str] = []
    ocr_pages: list[int] = []
    needs_ocr: list[int] = []
    ocr_seconds = 0.0
    try:
        if len(pdf) == 0:
            raise DocumentError(f"{path} has no pages")
        for index in range(len(pdf)):
            page = pdf[index]
            try:
                textpage = page.get_textpage()
                try:
                    text = _normalise(textpage.get_text_range())
                finally:
                    textpage.close()
                if not text.strip() and _has_image(page, pdfium_c.FPDF_PAGEOBJ_IMAGE):
                    if engine is None:
                        needs_ocr.append(index + 1)
                    else:
                        tick = time.perf_counter()
                        text = _ocr_page(page, engine, path, index + 1)
                        ocr_seconds += time.perf_counter() - tick
                        ocr_pages.append(index + 1)
            finally:
                page.close()
            texts.append(text)
    except (DocumentError, ConfigurationError, ImportError):
        raise
    except pdfium.PdfiumError as exc:
        raise DocumentError(f"{path} is not a readable PDF (page {len(texts) + 1}: {exc})") from exc
    finally:
        pdf.close()
    reading = Reading(
        reader="pypdfium2",
        ocr_engine=engine.name if ocr_pages and engine is not None else None,
        ocr_pages=tuple(ocr_pages),
        ocr_seconds=ocr_seconds,
        needs_ocr=tuple(needs_ocr),
    )
    return Document.from_texts(texts, str(path)), reading


def _normalise(text: str) -> str:
    # PDFium ends lines with "\r\n", and writes a hyphen it found at the end
    # of a line as U+FFFE (or U+0002) with the line break dropped; pypdf gives
    # "-\n" for the same glyphs, and so does this, to keep the page's text as
    # printed. NULs are padding.
    return (
        text.replace("\r\n", "\n")
        .replace("\r", "\n")
        .replace("\ufffe", "-\n")
        .replace("\x02", "-\n")
        .replace("\x00", "")
    )


def _has_image(page: Any, image_type: int) -> bool:
    return any(True for _ in page.get_objects(filter=[image_type]))


def _ocr_page(page: Any, engine: OcrEngine, path: Path, number: int) -> str:
    bitmap = page.render(scale=OCR_DPI / 72, grayscale=True)
    try:
        image = bitmap.to_numpy().copy()
    finally:
        bitmap.close()
    text = engine.read(image)
    if not isinstance(text, str):
        raise DocumentError(
            f"{path} page {number}: OCR engine {engine.name!r} returned "
            f"{type(text).__name__}, not str"
        )
    return text
