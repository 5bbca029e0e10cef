"""What a second component for the same open weights costs to build, and a configured call.

Builds a zerank-shaped model on disk (random weights, no download; about 50M
parameters by default, so that loading takes measurable time on a CPU), then
times, with the same settings (``model=<folder>``, ``device``):

- building a ``ZeRankCompressor`` while no other component holds the model
  (a load: what every component cost before loaded weights were shared);
- building a second ``ZeRankCompressor`` and a LlamaIndex
  ``ZeRankPostprocessor`` while the first is alive;
- a LangChain call of a ``ZeRankClassifier`` made configurable with
  ``configurable_fields`` (each configured call builds a new classifier from
  its fields) against a plain call.

Loads are counted by the ``open`` audit events on the folder's
``modules.json`` (each load reads it once). Prints build times (medians of
``--repeats``), call times (best of ``--repeats``, the two kinds of call
taking turns) and the ratios. Run: ``python benchmarks/bench_model_reuse.py``.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.tiny_zerank import build_tiny_zerank

MODEL_SHAPE = {
    "hidden_size": 768,
    "intermediate_size": 2048,
    "num_hidden_layers": 8,
    "num_attention_heads": 12,
    "num_key_value_heads": 4,
    "head_dim": 64,
}
LABELS = {"billing": "invoice payment amount due", "ops": "server latency error retry"}
QUERY = "When is the invoice payment due?"


def median_seconds(run: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def best_alternating(runs: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Best time of each run; the runs take turns, so a busy machine slows them alike."""
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import torch
    from langchain_core.runnables import ConfigurableField

    from langchain_zerank import ZeRankClassifier, ZeRankCompressor
    from llamaindex_zerank import ZeRankPostprocessor

    with tempfile.TemporaryDirectory() as tmp:
        folder = build_tiny_zerank(Path(tmp) / "model", config_overrides=MODEL_SHAPE)
        watched = str(folder / "modules.json")
        opens = [0]

        def count(event: str, hook_args: tuple[Any, ...]) -> None:
            if event == "open" and hook_args[0] == watched:
                opens[0] += 1

        sys.addaudithook(count)
        settings = {"model": str(folder), "device": args.device}

        def fresh() -> None:
            ZeRankCompressor(**settings)  # dropped at once: nothing holds the model after

        fresh()  # imports and the file cache, so that every timed load is alike
        before = opens[0]
        t_load = median_seconds(fresh, args.repeats)
        loads_fresh = (opens[0] - before) / args.repeats

        first = ZeRankCompressor(**settings)
        before = opens[0]
        t_second = median_seconds(lambda: ZeRankCompressor(**settings), args.repeats)
        t_llama = median_seconds(lambda: ZeRankPostprocessor(**settings), args.repeats)
        loads_shared = (opens[0] - before) / (2 * args.repeats)
        second = ZeRankCompressor(**settings).get_scorer().cross_encoder
        same_model = second is first.get_scorer().cross_encoder

        classifier = ZeRankClassifier(labels=LABELS, default="none", **settings)
        configurable = classifier.configurable_fields(threshold=ConfigurableField(id="floor"))
        before = opens[0]
        floors = iter([0.1 * (i % 10) for i in range(args.repeats)])
        calls = best_alternating(
            {
                "plain": lambda: classifier.invoke(QUERY),
                "configured": lambda: configurable.invoke(
                    QUERY, config={"configurable": {"floor": next(floors)}}
                ),
            },
            args.repeats,
        )
        t_plain, t_configured = calls["plain"], calls["configured"]
        loads_configured = (opens[0] - before) / args.repeats
        params = sum(p.numel() for p in first.get_scorer().cross_encoder.model.parameters())

    print(f"model: Qwen3 {MODEL_SHAPE}, {params / 1e6:.0f}M parameters, random weights")
    print(f"device: {args.device}, torch threads: {torch.get_num_threads()}")
    print(f"builds: median of {args.repeats} runs; calls: best of {args.repeats}, alternating")
    print(f"compressor, nothing else holds the model:   {t_load * 1000:8.1f} ms  ", end="")
    print(f"loads/build {loads_fresh:.0f}")
    print(f"second compressor, same settings:           {t_second * 1000:8.1f} ms  ", end="")
    print(f"loads/build {loads_shared:.0f}")
    print(f"second compressor uses the first's model:   {same_model}")
    print(f"LlamaIndex postprocessor, same settings:    {t_llama * 1000:8.1f} ms")
    print(f"classifier call, plain:                     {t_plain * 1000:8.1f} ms")
    print(f"classifier call, configurable_fields:       {t_configured * 1000:8.1f} ms  ", end="")
    print(f"loads/call {loads_configured:.0f}")
    print(f"ratio first / second compressor build:      {t_load / t_second:8.1f}x")
    print(f"ratio configured / plain classifier call:   {t_configured / t_plain:8.2f}x")


if __name__ == "__main__":
    main()
