"""Quickstart: gate a handful of retrieved chunks with the best backend you have.

Run it first:  python cookbook/quickstart.py

It picks a backend from the environment (ZeroEntropy API key → rerank server
URL → zerank open weights on disk → the offline BM25 baseline), says which, and
for each question prints the chunks it kept and the characters it saved.
"""

from __future__ import annotations

import json
from pathlib import Path

from zerank_core import Scale, SelectionPolicy, scorer_from_env

DATA = Path(__file__).parent / "data" / "handbook.json"


def main() -> None:
    data = json.loads(DATA.read_text())
    chunks: list[str] = data["chunks"]
    choice = scorer_from_env()
    scorer = choice.scorer
    print(f"backend: {choice.name} — {choice.reason}")

    if scorer.scale is Scale.UNCALIBRATED:
        # BM25 scores are max-scaled per question, not probabilities: keep the
        # best few that score at least 40 % of the best one.
        policy = SelectionPolicy(threshold=0.4, top_k=3, min_keep=1)
        print("note: the lexical baseline is uncalibrated; its threshold is relative\n")
    else:
        # Calibrated probabilities: keep what is at least 50 % likely relevant.
        policy = SelectionPolicy(threshold=0.5, top_k=4, min_keep=1)
        print()

    total_chars = sum(len(c) for c in chunks)
    for question in data["questions"]:
        scores = scorer.score(question, chunks)
        selection = policy.select(scores, lengths=[len(c) for c in chunks])
        kept_chars = sum(len(chunks[i]) for i in selection.indices)
        print(f"Q: {question}")
        for i in selection.indices:
            print(f"  [{scores[i]:.2f}] #{i:<2} {chunks[i][:88]}…")
        saved = 1 - kept_chars / total_chars
        print(
            f"  kept {len(selection)}/{len(chunks)} chunks, "
            f"{kept_chars:,} of {total_chars:,} characters ({saved:.0%} saved)\n"
        )


if __name__ == "__main__":
    main()
