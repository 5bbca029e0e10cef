"""Pages per second of a zerank-2-shaped model on a GPU, through ``LocalScorer``.

Throughput does not depend on weight values, so the model is Qwen3-4B's
configuration (zerank-2's base: 36 layers, hidden size 2560, 151,936-token
vocabulary) with random weights, built on the GPU in bfloat16 and saved, then
loaded through the scorer's real loading path. Pages are 2,000 characters; the
benchmark's tokenizer is tuned to about 4 characters per token, close to what
Qwen's tokenizer gives for English prose, and the measured tokens per page are
printed. Target: >= 200 pages/s on one H100.

Without a CUDA device it prints why it skipped and exits 0. ``--tiny`` runs the
same code with a toy model on any device, to check the script itself.
Run: ``python benchmarks/bench_local_gpu.py [--pages 2000] [--batch-tokens 32768]``.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

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


def pages_of(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    pages = []
    for _ in range(n):
        text = ""
        while len(text) < PAGE_CHARS:
            text += sample_text(rng, 60) + " "
        pages.append(text[:PAGE_CHARS])
    return pages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=2000)
    parser.add_argument("--batch-tokens", type=int, nargs="+", default=[16384, 32768, 65536])
    parser.add_argument(
        "--attn", default="sdpa", help="attn_implementation, e.g. flash_attention_2"
    )
    parser.add_argument("--tiny", action="store_true", help="toy model: checks the script only")
    args = parser.parse_args()

    import torch

    if not args.tiny and not torch.cuda.is_available():
        print("skipped: no CUDA device; this benchmark measures a 4B model on a GPU")
        print("(run with --tiny to check the script with a toy model on this machine)")
        return

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    shape = {"vocab_size": BENCH_VOCAB} if args.tiny else QWEN3_4B
    pages = pages_of(args.pages, seed=0)

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
        start = time.perf_counter()
        scorer = LocalScorer(
            str(path), device=device, dtype=dtype, model_kwargs={"attn_implementation": args.attn}
        )
        loaded = time.perf_counter() - start

        model = scorer.cross_encoder.model
        parameters = sum(p.numel() for p in model.parameters())
        tokenizer = scorer.cross_encoder.tokenizer
        tokens = [len(tokenizer.encode(p, add_special_tokens=False)) for p in pages]
        name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
        print(
            f"device: {name}; model: {parameters / 1e9:.2f}B parameters, {scorer.dtype}, ", end=""
        )
        print(f"attention {args.attn}")
        print(f"built in {built:.0f}s, loaded through LocalScorer in {loaded:.0f}s")
        print(
            f"pages: {len(pages)} x {PAGE_CHARS} characters, "
            f"{sum(tokens) / len(tokens):.0f} tokens per page on average"
        )

        for budget in args.batch_tokens:
            scorer.batch_tokens = budget
            scorer.score(QUERY, pages[:64])  # warm-up: kernels, allocator
            if device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            scores = scorer.score(QUERY, pages)
            if device == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
            assert len(scores) == len(pages)
            print(
                f"batch_tokens={budget:>6}: {len(pages) / seconds:7.1f} pages/s, "
                f"{sum(tokens) / seconds:9.0f} document tokens/s, peak memory {peak:.1f} GiB"
            )


if __name__ == "__main__":
    main()
