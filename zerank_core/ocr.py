"""Text for scanned pages: optical character recognition, offline.

:func:`load_document` calls an :class:`OcrEngine` on PDF pages that have no
text layer but do hold images (a faxed or scanned page). The default engine is
:class:`RapidOcrEngine`: RapidOCR 3 on ONNX Runtime. The ``rapidocr`` wheel
ships its detection, orientation and recognition models (PP-OCRv6 in 3.10);
the engine loads those files by path, so it never downloads a model at run
time. Install it with ``pip install 'zerank-gate[ocr]'``.

Any object with a ``name`` and a ``read(image) -> str`` method is an engine,
for instance a few lines around ``pytesseract.image_to_string`` if Tesseract
suits your documents better.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from zerank_core.errors import ConfigurationError, MissingDependencyError

__all__ = ["OCR_PACKAGE", "OcrEngine", "RapidOcrEngine", "default_ocr_engine", "ocr_available"]

OCR_PACKAGE = "rapidocr"
OCR_INSTALL = "pip install 'zerank-gate[ocr]'"
DETECTION_MAX_SIDE = 2000


@runtime_checkable
class OcrEngine(Protocol):
    """Reads the text of one page image.

    ``image`` is a greyscale page as a ``(height, width)`` ``uint8`` array;
    the result is the page's text, lines separated by ``\\n`` (``""`` when
    nothing legible is found).
    """

    @property
    def name(self) -> str: ...

    def read(self, image: npt.NDArray[np.uint8]) -> str: ...


class RapidOcrEngine:
    """RapidOCR (PP-OCR models on ONNX Runtime), with the models its wheel ships.

    The models load on first use (about a second); an A4 page at 200 dpi
    then takes seconds on a CPU. ``min_confidence`` drops recognised lines
    the model itself doubts (RapidOCR's own default filter is 0.5).
    """

    def __init__(self, *, min_confidence: float = 0.5) -> None:
        if not 0.0 <= min_confidence <= 1.0:
            raise ConfigurationError(f"min_confidence must be in [0, 1], got {min_confidence!r}")
        self.min_confidence = min_confidence
        self._engine: Any = None
        # The models must load once even if pages are read from several threads,
        # and one call runs at a time: ONNX Runtime already uses every core for
        # one page, and RapidOCR's pipeline object is not documented as thread-safe.
        self._lock = threading.Lock()
        self._call_lock = threading.Lock()

    @property
    def name(self) -> str:
        return "rapidocr"

    def __repr__(self) -> str:
        return f"RapidOcrEngine(min_confidence={self.min_confidence})"

    def read(self, image: npt.NDArray[np.uint8]) -> str:
        """The page's text, line by line, top to bottom."""
        array = np.asarray(image)
        if array.ndim != 2 or array.dtype != np.uint8:
            raise ConfigurationError(
                f"image must be a 2-D uint8 greyscale array, got {array.ndim}-D {array.dtype}"
            )
        engine = self._load()
        with self._call_lock:
            output = engine(array)
        if output.boxes is None or output.txts is None or output.scores is None:
            return ""
        boxes = [
            (box.tolist(), text)
            for box, text, confidence in zip(output.boxes, output.txts, output.scores, strict=True)
            if text.strip() and float(confidence) >= self.min_confidence
        ]
        return _lines(boxes)

    def _load(self) -> Any:
        with self._lock:
            if self._engine is None:
                try:
                    import rapidocr
                except ImportError as exc:
                    raise MissingDependencyError(OCR_PACKAGE, "ocr") from exc
                models = _shipped_models(Path(rapidocr.__file__).parent / "models")
                self._engine = rapidocr.RapidOCR(
                    params={
                        "Global.log_level": "warning",
                        "Global.text_score": self.min_confidence,
                        # RapidOCR's default ("min", 736) upscales a picture until its
                        # short side is 736 pixels: a 1100 x 190 strip became 4238 x 736
                        # and took 20 times longer to read. Bound the long side instead;
                        # an A4 page at 200 dpi is 2339 pixels high.
                        "Det.limit_type": "max",
                        "Det.limit_side_len": DETECTION_MAX_SIDE,
                        "Det.model_path": str(models["det"]),
                        "Cls.model_path": str(models["cls"]),
                        "Rec.model_path": str(models["rec"]),
                    }
                )
            return self._engine


def _shipped_models(folder: Path) -> dict[str, Path]:
    """The det/cls/rec ONNX files in the wheel, so that RapidOCR never downloads one."""
    found: dict[str, Path] = {}
    for task in ("det", "cls", "rec"):
        files = sorted(folder.glob(f"*_{task}_*.onnx"))
        if not files:
            raise ConfigurationError(
                f"the installed rapidocr ships no {task} model in {folder}, and this package "
                "does not download models: pip install 'zerank-gate[ocr]' (rapidocr >= 3.10)"
            )
        # Several versions side by side: the newest name sorts last (PP-OCRv6 > v5).
        found[task] = files[-1]
    return found


def ocr_available() -> bool:
    """Whether the default engine's package is installed (the ``ocr`` extra)."""
    for name in ("rapidocr", "onnxruntime"):
        # A None entry in sys.modules is how an import is blocked on purpose.
        if name in sys.modules and sys.modules[name] is None:
            return False
        if importlib.util.find_spec(name) is None:
            return False
    return True


def default_ocr_engine() -> RapidOcrEngine:
    """The default engine; :class:`MissingDependencyError` without the ``ocr`` extra.

    One engine is shared by the process, so the models load once however many
    documents are read.
    """
    if not ocr_available():
        raise MissingDependencyError(OCR_PACKAGE, "ocr")
    return _shared_engine()


@functools.cache
def _shared_engine() -> RapidOcrEngine:
    return RapidOcrEngine()


def _lines(boxes: Sequence[tuple[Sequence[Sequence[float]], str]]) -> str:
    """Join recognised boxes into lines: boxes whose vertical centres are close share one."""
    placed = []
    for box, text in boxes:
        ys = [float(point[1]) for point in box]
        xs = [float(point[0]) for point in box]
        placed.append(((min(ys) + max(ys)) / 2, max(ys) - min(ys), min(xs), text.strip()))
    placed.sort(key=lambda item: (item[0], item[2]))
    lines: list[list[tuple[float, str]]] = []
    last_centre = last_height = None
    for centre, height, left, text in placed:
        if (
            lines
            and last_centre is not None
            and last_height is not None
            and abs(centre - last_centre) <= max(height, last_height) / 2
        ):
            lines[-1].append((left, text))
        else:
            lines.append([(left, text)])
            last_centre, last_height = centre, height
    return "\n".join(" ".join(text for _, text in sorted(line)) for line in lines)
