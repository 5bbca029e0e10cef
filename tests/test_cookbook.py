"""The cookbook scripts run offline and print what they promise."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_script(name: str) -> str:
    """Run ``cookbook/<name>`` with no backend configured; return its stdout."""
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


def test_quickstart_runs_offline_on_the_lexical_baseline() -> None:
    out = run_script("quickstart.py")
    assert out.startswith("backend: lexical")
    assert out.count("Q: ") == 3
    assert out.count("characters (") == 3
    assert "saved)" in out


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


def test_context_gate_cookbook_prints_nodes_and_characters_saved() -> None:
    out = run_script("llamaindex_context_gate.py")

    assert out.startswith("scorer: BM25 lexical baseline")
    assert out.count("retrieved: 8 nodes") == 2
    assert "kept: 1 nodes" in out
    assert "leave      Employees receive 25 days" in out
    assert "expenses   Submit expense reports" in out
    assert out.count("characters saved: ") == 2
    assert "over 2 questions: 2320 -> 290 characters" in out


def test_router_cookbook_prints_each_choice() -> None:
    out = run_script("llamaindex_router.py")

    assert out.startswith("scorer: BM25 lexical baseline")
    for route in ("it", "finance", "hr"):
        assert f"routed to: {route}\n" in out
    assert "no choice reached the threshold 0.5; default choice" in out
    assert "routed to: it, finance" in out
    assert "answered from nodes: finance-0, finance-1, it-0, it-1" in out
