"""The lexical duplicate pass on 2,000 pages with 20 % planted near-duplicates.

Builds ``--pages`` synthetic pages (default 2,000) from the vocabulary of the
bundled prior-authorization packet. A fifth of them are planted copies of
other pages, each changed one way a real packet changes a re-sent page:

- ``exact``: the same page, re-wrapped and upper-cased;
- ``fax header``: a fax transmission line added on top;
- ``ocr noise``: 3 % of the words replaced;
- ``header + noise``: both;
- ``trimmed``: the last 10 % of the words cut (a page cut short by the scanner);
- ``heavy noise``: 10 % of the words replaced (a bad scan), which takes most
  pages below the default threshold: where the lexical pass stops and a
  lower ``threshold`` or the model detector has to take over.

A further fifth of the originals share a long form template with another
original (the first 35 % of the words) but not their content: lookalikes
that must not be called duplicates.

Prints the :class:`~zerank_core.dedupe.LexicalDetector` pass's time, its
precision and recall against the planted pairs (overall, per kind, and at
other thresholds), the
time at a quarter and half of the pages (near-linear growth), and the same
detection by comparing every pair exactly, for the speed ratio and the
recall LSH gives up. Run: ``python benchmarks/bench_dedupe.py``.
"""

from __future__ import annotations

import argparse
import itertools
import random
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zerank_core.dedupe import LexicalDetector, jaccard, normalized_words, shingles

ROOT = Path(__file__).resolve().parent.parent

KINDS = ("exact", "fax header", "ocr noise", "header + noise", "trimmed", "heavy noise")


def vocabulary() -> list[str]:
    text = (ROOT / "cookbook" / "prior_auth" / "packet.txt").read_text(encoding="utf-8")
    return sorted(set(re.findall(r"[A-Za-z][A-Za-z'-]+", text)))


def page(rng: random.Random, words: list[str], n: int) -> list[str]:
    out = []
    for i in range(n):
        out.append(str(rng.randint(1, 999)) if i % 9 == 8 else rng.choice(words))
    return out


def wrap(words: list[str], width: int = 12) -> str:
    return "\n".join(" ".join(words[i : i + width]) for i in range(0, len(words), width))


def fax_header(rng: random.Random) -> list[str]:
    return (
        f"OCT-{rng.randint(1, 28):02d}-2026 {rng.randint(7, 18):02d}:{rng.randint(0, 59):02d} "
        f"FROM: RIVERBEND RHEUMATOLOGY 503555{rng.randint(1000, 9999)} TO: 18885550170 "
        f"P.{rng.randint(1, 40):03d}/{rng.randint(40, 60):03d}"
    ).split()


def mutate(rng: random.Random, words: list[str], vocab: list[str], kind: str) -> str:
    copy = list(words)
    share = {"ocr noise": 3, "header + noise": 3, "heavy noise": 10}.get(kind, 0)
    if share:
        for position in rng.sample(range(len(copy)), max(1, len(copy) * share // 100)):
            copy[position] = rng.choice(vocab)
    if kind in ("fax header", "header + noise"):
        copy = fax_header(rng) + copy
    if kind == "trimmed":
        copy = copy[: len(copy) * 9 // 10]
    if kind == "exact":
        return wrap(copy, width=9).upper()
    return wrap(copy)


def corpus(n: int, seed: int) -> tuple[list[str], set[tuple[int, int]], dict[tuple[int, int], str]]:
    """``n`` pages, the planted duplicate pairs and each pair's kind."""
    rng = random.Random(seed)
    vocab = vocabulary()
    n_copies = n // 5
    n_originals = n - n_copies
    originals: list[list[str]] = []
    for i in range(n_originals):
        words = page(rng, vocab, rng.randint(120, 320))
        if i % 5 == 4 and originals:  # a lookalike: another page's template, new content
            template = rng.choice(originals)
            keep = min(len(words), len(template)) * 35 // 100
            words = template[:keep] + words[keep:]
        originals.append(words)
    texts = [wrap(w) for w in originals]
    planted: set[tuple[int, int]] = set()
    kinds: dict[tuple[int, int], str] = {}
    for number, source in enumerate(rng.sample(range(n_originals), n_copies)):
        kind = KINDS[number % len(KINDS)]
        pair = (source, len(texts))
        texts.append(mutate(rng, originals[source], vocab, kind))
        planted.add(pair)
        kinds[pair] = kind
    order = list(range(len(texts)))
    rng.shuffle(order)  # copies are not all at the end
    position = {old: new for new, old in enumerate(order)}
    shuffled = [texts[old] for old in order]
    moved = {tuple(sorted((position[a], position[b]))): k for (a, b), k in kinds.items()}
    return shuffled, set(moved), moved  # type: ignore[arg-type]


def timed(detector: LexicalDetector, texts: list[str], repeats: int) -> tuple[float, set]:
    best, found = float("inf"), set()
    for _ in range(repeats):
        start = time.perf_counter()
        relation = detector.find(texts)
        best = min(best, time.perf_counter() - start)
        found = {(p.first, p.second) for p in relation.pairs}
    return best, found


def all_pairs(texts: list[str], threshold: float, size: int) -> tuple[float, set]:
    start = time.perf_counter()
    sets = [shingles(normalized_words(t), size) for t in texts]
    found = {
        (a, b)
        for a, b in itertools.combinations(range(len(sets)), 2)
        if jaccard(sets[a], sets[b]) >= threshold
    }
    return time.perf_counter() - start, found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="best of N timings")
    parser.add_argument("--threshold", type=float, default=LexicalDetector().threshold)
    parser.add_argument(
        "--sweep",
        type=float,
        nargs="*",
        default=[0.5, 0.6, 0.8],
        help="other thresholds to report precision and recall for",
    )
    parser.add_argument(
        "--no-all-pairs", action="store_true", help="skip the every-pair comparison"
    )
    args = parser.parse_args()

    texts, planted, kinds = corpus(args.pages, args.seed)
    detector = LexicalDetector(threshold=args.threshold)
    detector.find(texts[:50])  # import datasketch and scipy before timing
    chars = sum(len(t) for t in texts)
    print(
        f"{len(texts)} pages ({chars / len(texts):,.0f} characters on average), "
        f"{len(planted)} planted near-duplicates ({len(planted) / len(texts):.0%}), "
        f"threshold {detector.threshold}, {detector.shingle_size}-word shingles, "
        f"{detector.num_perm} permutations"
    )

    seconds, found = timed(detector, texts, args.repeats)
    hits = found & planted
    precision = len(hits) / len(found) if found else 1.0
    recall = len(hits) / len(planted)
    print(
        f"lexical pass: {seconds:.2f} s ({len(texts) / seconds:,.0f} pages/s), "
        f"{len(found)} pairs found: precision {precision:.3f}, recall {recall:.3f}"
    )
    for kind in KINDS:
        pairs = {p for p, k in kinds.items() if k == kind}
        print(f"  recall, {kind:<15} {len(pairs & found) / len(pairs):.3f} of {len(pairs)}")

    for threshold in args.sweep:
        other = LexicalDetector(threshold=threshold)
        t_seconds, t_found = timed(other, texts, 1)
        t_hits = t_found & planted
        heavy = {p for p, k in kinds.items() if k == "heavy noise"}
        heavy_recall = len(heavy & t_found) / len(heavy)
        print(
            f"  threshold {threshold}: {t_seconds:.2f} s, precision "
            f"{len(t_hits) / len(t_found) if t_found else 1.0:.3f}, recall "
            f"{len(t_hits) / len(planted):.3f} (heavy noise {heavy_recall:.3f})"
        )

    for fraction in (4, 2):
        subset, _, _ = corpus(args.pages // fraction, args.seed)
        part, _ = timed(detector, subset, args.repeats)
        print(
            f"  {len(subset):>5} pages: {part:.2f} s — {seconds / part:.1f}× the time "
            f"for {fraction}× the pages"
        )

    if not args.no_all_pairs:
        brute_seconds, exact = all_pairs(texts, detector.threshold, detector.shingle_size)
        exact_recall = len(exact & planted) / len(planted)
        print(
            f"every pair compared exactly: {brute_seconds:.2f} s "
            f"({brute_seconds / seconds:.1f}× the lexical pass), recall {exact_recall:.3f}; "
            f"LSH found {len(found & exact)} of its {len(exact)} pairs"
        )


if __name__ == "__main__":
    main()
