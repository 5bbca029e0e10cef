"""Skip marks for tests that need an optional extra the environment may lack."""

from __future__ import annotations

from importlib.util import find_spec

import pytest

needs_sklearn = pytest.mark.skipif(
    find_spec("sklearn") is None, reason="needs scikit-learn: pip install 'zerank-gate[eval]'"
)
needs_matplotlib = pytest.mark.skipif(
    find_spec("matplotlib") is None, reason="needs matplotlib: pip install 'zerank-gate[eval]'"
)
needs_datasketch = pytest.mark.skipif(
    find_spec("datasketch") is None, reason="needs datasketch: pip install 'zerank-gate[dedupe]'"
)
