"""The LangChain cookbook scripts run offline and print what they promise."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_script(name: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZERANK_", "ZEROENTROPY_"))}
    result = subprocess.run(
        [sys.executable, str(ROOT / "cookbook" / name)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=120,
    )
    return result.stdout


def test_retrieval_cookbook_reports_chunks_and_characters_saved() -> None:
    out = run_script("langchain_retrieval.py")

    assert out.startswith("backend: lexical")
    assert out.count("chunks in: 8, chunks out: ") == 3
    assert out.count("saved)") == 3
    assert "async, all questions at once: chunks in: 24" in out


def test_router_cookbook_routes_every_message_including_the_default() -> None:
    out = run_script("langchain_router.py")

    assert out.startswith("backend: keywords")
    for route in ("billing", "technical", "account", "general"):
        assert f"triage → {route} " in out
    assert "general (default)" in out
    assert "5 messages × 3 labels scored in 3 scorer calls" in out
    assert "['billing', 'technical']" in out
