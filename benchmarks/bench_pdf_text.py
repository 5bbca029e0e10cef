"""PDF text extraction: PDFium (what ``zerank`` reads with) against pypdf, on one file.

Generates a text-layer PDF of ``--pages`` pages (250 by default, about 6,000
characters a page, a 10-K's density) with fpdf2, then reads it:

- ``load_document`` (pypdfium2), the reader behind ``zerank compress``;
- pypdf's ``extract_text`` page by page, the reader this package used before;
- ``zerank compress`` on the same file with the offline BM25 backend, whose
  ``read:`` line is printed as the command prints it;
- with the ``ocr`` extra, OCR of scanned pages: pages of the bundled
  prior-authorization packet typeset at 10 pt, rasterised at 200 dpi and put
  back as image-only pages, then read by ``load_document``; it prints seconds
  a page and how much of the original text's words came back.

Prints seconds for each (best of ``--repeats``), the pypdf / pypdfium2 ratio,
and checks that both readers see the same pages. Run from the repository root:

    python benchmarks/bench_pdf_text.py [--pages 250] [--keep packet.pdf]
"""

from __future__ import annotations

import argparse
import difflib
import io
import random
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Sequence
from pathlib import Path

# Run from a clone without installing: the package is the folder above.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fpdf import FPDF

from zerank_core.cli import main as zerank
from zerank_core.loaders import OCR_DPI, load_document
from zerank_core.ocr import ocr_available

ROOT = Path(__file__).resolve().parent.parent
CRITERIA = ROOT / "cookbook" / "prior_auth" / "criteria.yaml"
PACKET = ROOT / "cookbook" / "prior_auth" / "packet.txt"
OCR_SAMPLE_PAGES = (2, 15, 18, 21, 29)
VOCABULARY = (
    "revenue operating income segment fiscal year quarter net sales cost of goods sold "
    "gross margin liquidity capital resources risk factors cash flows interest rate "
    "derivative instruments goodwill impairment lease obligations deferred tax assets "
    "valuation allowance share repurchase dividend credit facility covenant compliance "
    "litigation contingencies pension benefit obligation foreign currency exchange "
    "inventory reserves warranty accruals research and development stock-based compensation"
)
WORDS = VOCABULARY.split()


def generate(path: Path, pages: int, chars_per_page: int, seed: int) -> int:
    rng = random.Random(seed)
    pdf = FPDF()
    pdf.set_auto_page_break(False)
    pdf.set_font("Helvetica", size=6)
    total = 0
    for number in range(1, pages + 1):
        pdf.add_page()
        paragraphs = []
        size = 0
        while size < chars_per_page:
            sentence = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 24)))
            paragraph = f"{sentence.capitalize()}. Item {number}.{len(paragraphs) + 1}."
            paragraphs.append(paragraph)
            size += len(paragraph) + 1
        # One text line at a time: fpdf2's multi_cell would take minutes here.
        lines = [line for p in paragraphs for line in textwrap.wrap(p, 170)]
        for row, line in enumerate(lines):
            pdf.text(10, 12 + 2.4 * row, line)
        total += sum(len(line) for line in lines)
    pdf.output(str(path))
    return total


def best_of(repeats: int, run: Callable[[], object]) -> tuple[float, object]:
    best = float("inf")
    result: object = None
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - start)
    return best, result


def read_pypdf(path: Path) -> list[str]:
    from pypdf import PdfReader

    return [page.extract_text() or "" for page in PdfReader(path).pages]


def scanned_packet(path: Path, numbers: Sequence[int]) -> list[str]:
    """Packet pages typeset, rasterised and saved as image-only pages; returns their texts."""
    import pypdfium2 as pdfium

    pages = PACKET.read_text(encoding="utf-8").split("\f")
    texts = [pages[n - 1] for n in numbers]
    typeset = FPDF()
    typeset.set_font("Helvetica", size=10)
    for text in texts:
        typeset.add_page()
        typeset.multi_cell(0, 5, text.encode("latin-1", "replace").decode("latin-1"))
    rendered = pdfium.PdfDocument(bytes(typeset.output()))
    scanned = FPDF()
    for index in range(len(rendered)):
        image = rendered[index].render(scale=OCR_DPI / 72, grayscale=True).to_pil()
        scanned.add_page()
        scanned.image(image, x=0, y=0, w=scanned.w, h=scanned.h)
    scanned.output(str(path))
    return texts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=250)
    parser.add_argument("--chars-per-page", type=int, default=6000)
    parser.add_argument("--repeats", type=int, default=3, help="best of N (default 3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="write the generated PDF here and keep it")
    parser.add_argument("--skip-pypdf", action="store_true", help="only time pypdfium2")
    parser.add_argument(
        "--ocr-pages",
        type=int,
        default=len(OCR_SAMPLE_PAGES),
        help=f"scanned packet pages to OCR (0 to skip; at most {len(OCR_SAMPLE_PAGES)})",
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        path = args.keep or Path(tmp) / "generated.pdf"
        tick = time.perf_counter()
        chars = generate(path, args.pages, args.chars_per_page, args.seed)
        print(
            f"generated {path.name}: {args.pages} pages, {chars:,} characters, "
            f"{path.stat().st_size / 1e6:.2f} MB in {time.perf_counter() - tick:.1f} s"
        )
        pdfium_s, document = best_of(args.repeats, lambda: load_document(path, ocr=False))
        pages = document.pages  # type: ignore[attr-defined]
        print(f"pypdfium2 (load_document): {pdfium_s:.2f} s, {len(pages) / pdfium_s:.0f} pages/s")
        if not args.skip_pypdf:
            pypdf_s, texts = best_of(min(args.repeats, 1), lambda: read_pypdf(path))
            assert isinstance(texts, list)
            print(f"pypdf (extract_text):      {pypdf_s:.2f} s, {len(texts) / pypdf_s:.0f} pages/s")
            print(f"ratio pypdf / pypdfium2:   {pypdf_s / pdfium_s:.1f}x")
            same = len(texts) == len(pages) and all(
                " ".join(a.split()) == " ".join(p.text.split())
                for a, p in zip(texts, pages, strict=True)
            )
            print(f"same pages and words from both readers: {same}")
        err = io.StringIO()
        code = zerank(
            ["compress", str(path), "-c", str(CRITERIA), "--backend", "lexical", "--no-cache"],
            stdout=io.StringIO(),
            stderr=err,
        )
        read_line = next(line for line in err.getvalue().splitlines() if line.startswith("read:"))
        print(f"zerank compress (exit {code}): {read_line.replace(str(path), path.name)}")
        if args.ocr_pages and not ocr_available():
            print("OCR: skipped (pip install 'zerank-gate[ocr]')")
        elif args.ocr_pages:
            scan = Path(tmp) / "scanned.pdf"
            texts = scanned_packet(scan, OCR_SAMPLE_PAGES[: args.ocr_pages])
            tick = time.perf_counter()
            document = load_document(scan, ocr=True)
            seconds = time.perf_counter() - tick
            reading = document.reading
            assert reading is not None
            found = [
                difflib.SequenceMatcher(None, t.split(), p.text.split()).ratio()
                for t, p in zip(texts, document.pages, strict=True)
            ]
            print(
                f"OCR ({reading.ocr_engine}, {OCR_DPI} dpi): {len(texts)} scanned A4 pages in "
                f"{seconds:.1f} s, {seconds / len(texts):.1f} s a page; words matching the "
                f"original text: {min(found):.1%} to {max(found):.1%} a page"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
