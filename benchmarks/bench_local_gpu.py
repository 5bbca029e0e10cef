"""Pages per second of a zerank-2-shaped model in-process: fast path, predict, compile.

Throughput does not depend on weight values, so the model is Qwen3-4B's
configuration (zerank-2's base: 36 layers, hidden size 2560, 151,936-token
vocabulary) with random weights, built on the GPU in bfloat16 and saved, then
loaded through ``LocalScorer``'s real loading path. Pages are 2,000 characters;
the benchmark's tokenizer gives about 4 characters per token, close to what
Qwen's tokenizer gives for English prose, and the measured tokens per page are
printed.

In one run, on the same pages, it measures:

- a bf16 matmul (float32 on CPU), the peak that MFU is counted against;
- sentence-transformers ``CrossEncoder.predict(batch_size=32)``, what a user writes;
- ``LocalScorer(fast=False)``, which batches through ``predict`` by token budget;
- ``LocalScorer`` (the fast path) at each ``--batch-tokens``;
- with ``--compile``, the fast path under ``torch.compile`` and its compile time.

For each: pages/s, prompt tokens/s, MFU (2 x non-embedding parameters x prompt
tokens, over the matmul's FLOP/s) and the ratio to ``predict``; and the largest
logit difference from ``predict``. Targets on one H200: >= 110 pages/s and
>= 1.6x ``predict``.

Without a CUDA device it prints why it skipped and exits 0; ``--tiny`` runs the
same code with a small model on CPU (figures for the CPU, not for a GPU).
Run on a GPU: ``python benchmarks/bench_local_gpu.py --compile``.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.tiny_zerank import build_tiny_zerank, build_tokenizer, sample_text
from zerank_core.scorers.local import LocalScorer

QUERY = "What are the termination conditions and notice periods in this agreement?"
PAGE_CHARS = 2000
# ~3.9 characters per token on the benchmark's text (Qwen3 gives ~4 on English).
BENCH_VOCAB = 480

QWEN3_4B = {
    "vocab_size": 151936,
    "hidden_size": 2560,
    "intermediate_size": 9728,
    "num_hidden_layers": 36,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "max_position_embeddings": 40960,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
    "initializer_range": 0.02,
    "tie_word_embeddings": True,
}

# --tiny: small, but large enough that compute, not Python overhead, dominates.
TINY = {
    "vocab_size": BENCH_VOCAB,
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
}


def pages_of(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    pages = []
    for _ in range(n):
        text = ""
        while len(text) < PAGE_CHARS:
            text += sample_text(rng, 60) + " "
        pages.append(text[:PAGE_CHARS])
    return pages


def matmul_flops(torch: Any, device: str, dtype: Any) -> float:
    """FLOP/s of a large square matmul in ``dtype``: the peak MFU is counted against."""
    n = 8192 if device == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(torch, device)
    repeats = 50 if device == "cuda" else 10
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(torch, device)
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def sync(torch: Any, device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(torch: Any, device: str, run: Callable[[], list[float]]) -> tuple[float, list[float]]:
    sync(torch, device)
    start = time.perf_counter()
    values = run()
    sync(torch, device)
    return time.perf_counter() - start, values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, help="pages to score (default 2000; 96 with --tiny)")
    parser.add_argument("--batch-tokens", type=int, nargs="+", default=[16384, 32768, 65536])
    parser.add_argument("--attn", default="sdpa", help="attn_implementation (default sdpa)")
    parser.add_argument("--compile", action="store_true", help="also measure compile=True")
    parser.add_argument("--repeats", type=int, default=1, help="best of N runs (default 1)")
    parser.add_argument("--tiny", action="store_true", help="a small model on this machine's CPU")
    args = parser.parse_args()

    import torch

    if not args.tiny and not torch.cuda.is_available():
        print("skipped: no CUDA device; this benchmark measures a 4B model on a GPU")
        print("(run with --tiny to measure a small model on this machine's CPU)")
        return

    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    shape = TINY if args.tiny else QWEN3_4B
    n_pages = args.pages or (96 if args.tiny else 2000)
    pages = pages_of(n_pages, seed=0)
    budgets = args.batch_tokens

    peak = matmul_flops(torch, device, dtype)
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        path = build_tiny_zerank(
            Path(folder) / "model",
            config_overrides=shape,
            tokenizer=build_tokenizer(vocab_size=BENCH_VOCAB),
            device=device,
            dtype=dtype,
        )
        if device == "cuda":
            torch.cuda.empty_cache()
        built = time.perf_counter() - start
        kwargs: dict[str, Any] = {
            "device": device,
            "dtype": dtype,
            "model_kwargs": {"attn_implementation": args.attn},
        }
        start = time.perf_counter()
        scorer = LocalScorer(str(path), **kwargs)
        loaded = time.perf_counter() - start
        assert scorer.stats.fast, scorer.stats.fast_off_because
        # A second copy of the weights (8 GiB in bf16 at the 4B shape).
        reference = LocalScorer(str(path), fast=False, **kwargs)

        model = scorer.cross_encoder.model
        embedding = model.get_input_embeddings().weight.numel()
        non_embedding = sum(p.numel() for p in model.parameters()) - embedding
        tokenizer = scorer.cross_encoder.tokenizer
        doc_tokens = [len(tokenizer.encode(p, add_special_tokens=False)) for p in pages]
        prompts = reference.cross_encoder.preprocess([(QUERY, p) for p in pages[:1]])
        overhead = int(prompts["input_ids"].shape[1]) - doc_tokens[0]
        prompt_tokens = sum(doc_tokens) + overhead * len(pages)
        flops_per_run = 2 * non_embedding * prompt_tokens
        name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
        print(
            f"device: {name} ({torch.get_num_threads()} torch threads); torch {torch.__version__}"
        )
        print(
            f"model: Qwen3 {'small test shape' if args.tiny else '4B shape'}, random weights, "
            f"{non_embedding / 1e9:.3f}B non-embedding parameters, {scorer.dtype}, "
            f"attention {args.attn}; built in {built:.0f}s, loaded in {loaded:.0f}s"
        )
        print(f"matmul peak: {peak / 1e12:.2f} TFLOP/s ({str(dtype).removeprefix('torch.')})")
        print(
            f"pages: {len(pages)} x {PAGE_CHARS} characters, "
            f"{sum(doc_tokens) / len(pages):.0f} document + {overhead} prompt tokens each"
        )

        cross_encoder = scorer.cross_encoder
        identity = torch.nn.Identity()
        pairs = [(QUERY, p) for p in pages]

        def predict() -> list[float]:
            out = cross_encoder.predict(
                pairs, batch_size=32, activation_fn=identity, show_progress_bar=False
            )
            return [float(v) for v in out]

        def local(candidate: LocalScorer, budget: int) -> Callable[[], list[float]]:
            def run() -> list[float]:
                candidate.batch_tokens = budget
                return list(candidate.score_detailed(QUERY, pages).logits)

            return run

        runs: dict[str, Callable[[], list[float]]] = {
            "CrossEncoder.predict(batch_size=32)": predict
        }
        runs[f"LocalScorer(fast=False), batch_tokens {budgets[0]}"] = local(reference, budgets[0])
        for budget in budgets:
            runs[f"LocalScorer fast path, batch_tokens {budget}"] = local(scorer, budget)

        warm = pages[: min(64, len(pages))]
        for candidate in (scorer, reference):
            candidate.score(QUERY, warm)  # kernels, allocator
        cross_encoder.predict(
            [(QUERY, p) for p in warm],
            batch_size=32,
            activation_fn=identity,
            show_progress_bar=False,
        )
        best, logits = measure(torch, device, runs, args.repeats)
        base_label = next(iter(runs))
        base_seconds, base_logits = best[base_label], logits[base_label]
        table = Table(len(pages), prompt_tokens, flops_per_run, peak, base_seconds, base_logits)
        table.header()
        for label in runs:
            table.row(label, best[label], logits[label])
        stats = scorer.stats
        print(
            f"fast path batches: {stats.equal_length_batches} of one length, "
            f"{stats.padded_batches} padded at the end, "
            f"{stats.padding_tokens / max(stats.prompt_tokens, 1):.1%} pad tokens"
        )

        if args.compile:
            # Last, so that the figures above are printed before minutes of compiling.
            start = time.perf_counter()
            compiled = LocalScorer(str(path), compile=True, **kwargs)
            print(
                f"compile=True: {compiled.stats.compile_seconds:.0f}s compiling "
                f"(load and compile {time.perf_counter() - start:.0f}s)"
            )
            compiled.score(QUERY, warm)
            label = f"fast path + compile, batch_tokens {budgets[-1]}"
            best, logits = measure(
                torch, device, {label: local(compiled, budgets[-1])}, args.repeats
            )
            table.row(label, best[label], logits[label])


class Table:
    """Rows of pages/s, tokens/s, MFU and the ratio to ``predict``, printed as they come."""

    def __init__(
        self,
        pages: int,
        prompt_tokens: int,
        flops: float,
        peak: float,
        base_seconds: float,
        base_logits: list[float],
    ) -> None:
        self.pages, self.prompt_tokens, self.flops, self.peak = pages, prompt_tokens, flops, peak
        self.base_seconds, self.base_logits = base_seconds, base_logits

    def header(self) -> None:
        print()
        header = f"{'path':<58} {'pages/s':>8} {'tokens/s':>10} {'MFU':>6} {'x predict':>9}"
        print(f"{header} {'max |dlogit|':>12}")

    def row(self, label: str, seconds: float, logits: list[float]) -> None:
        diff = max(abs(a - b) for a, b in zip(logits, self.base_logits, strict=True))
        mfu = self.flops / seconds / self.peak
        print(
            f"{label:<58} {self.pages / seconds:8.1f} {self.prompt_tokens / seconds:10.0f} "
            f"{mfu:6.1%} {self.base_seconds / seconds:8.2f}x {diff:12.1e}",
            flush=True,
        )


def measure(
    torch: Any, device: str, runs: dict[str, Callable[[], list[float]]], repeats: int
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Best seconds and the logits of each run; runs take turns, best of ``repeats``.

    Taking turns means a busy machine slows all alike.
    """
    best = dict.fromkeys(runs, float("inf"))
    logits: dict[str, list[float]] = {}
    for _ in range(repeats):
        for label, run in runs.items():
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            seconds, logits[label] = timed(torch, device, run)
            best[label] = min(best[label], seconds)
            if device == "cuda":
                memory = torch.cuda.max_memory_allocated() / 2**30
                print(f"  {label}: {seconds:.1f}s, peak memory {memory:.1f} GiB", flush=True)
    return best, logits


if __name__ == "__main__":
    main()
