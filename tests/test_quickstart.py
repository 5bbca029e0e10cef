"""The README's quickstart runs offline and reports what it kept."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_runs_offline_on_the_lexical_baseline() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZERANK_", "ZEROENTROPY_"))}
    result = subprocess.run(
        [sys.executable, str(ROOT / "cookbook" / "quickstart.py")],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=120,
    )
    out = result.stdout
    assert out.startswith("backend: lexical")
    assert out.count("Q: ") == 3
    assert "characters" in out
    assert "saved" in out
