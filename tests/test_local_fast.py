"""The fast in-process path against ``CrossEncoder.predict`` on a tiny zerank-shaped model.

The fast path renders prompts through the CrossEncoder, runs the base model on
length-sorted batches without a padding mask (shorter prompts padded at their
end) and applies only the "Yes" row of the head at each prompt's last position.
Its logits must be the ones ``predict`` gives: ~1e-5 in float32, bf16 rounding in bfloat16.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

pytest.importorskip("sentence_transformers.cross_encoder.modules")

from tests.tiny_zerank import build_tiny_zerank, sample_text
from zerank_core.errors import ConfigurationError
from zerank_core.scorers.local import LocalScorer, plan_padded_batches

QUERY = "Which clause sets the notice period?"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_zerank(tmp_path_factory.mktemp("tiny-zerank-fast"))


def texts_of(n: int, seed: int = 11) -> list[str]:
    """Some texts share a length (equal-length batches), others do not (padded batches)."""
    rng = random.Random(seed)
    texts = [sample_text(rng, rng.choice([2, 2, 2, 6, 6, rng.randint(1, 50)])) for _ in range(n)]
    texts += ["4", "The answer is definitely 1 million", "x" * 3]
    return texts


def test_fast_path_matches_predict_in_float32(model_dir: Path) -> None:
    texts = texts_of(60)
    reference = LocalScorer(str(model_dir), fast=False)
    # A small budget makes many batches of both kinds.
    fast = LocalScorer(str(model_dir), batch_tokens=600, max_batch_size=32)

    want = reference.score_detailed(QUERY, texts)
    got = fast.score_detailed(QUERY, texts)

    assert got.logits == pytest.approx(want.logits, abs=1e-5)
    assert got.probabilities == pytest.approx(want.probabilities, abs=1e-6)
    stats = fast.stats
    assert stats.fast
    assert stats.fast_off_because is None
    assert stats.compile_seconds is None
    assert stats.equal_length_batches > 0
    assert stats.padded_batches > 0
    assert stats.padding_tokens > 0
    assert reference.stats.fast is False
    assert reference.stats.fast_off_because == "fast=False was passed"
    # Usage counts the real prompt tokens; the fast path knows them exactly.
    assert fast.usage.total_tokens == stats.prompt_tokens
    prompts = reference.cross_encoder.preprocess([(QUERY, t) for t in texts])
    assert stats.prompt_tokens == int(prompts["attention_mask"].sum())


def test_fast_path_matches_predict_with_windows(model_dir: Path) -> None:
    rng = random.Random(5)
    texts = [sample_text(rng, 300), sample_text(rng, 12), sample_text(rng, 180)]
    reference = LocalScorer(str(model_dir), max_length=96, window_overlap=16, fast=False)
    fast = LocalScorer(str(model_dir), max_length=96, window_overlap=16)

    want = reference.score_detailed(QUERY, texts, instruction="Prefer dates.")
    got = fast.score_detailed(QUERY, texts, instruction="Prefer dates.")

    assert got.windows == want.windows
    assert got.windows[0] > 3
    assert got.logits == pytest.approx(want.logits, abs=1e-5)


def test_fast_path_matches_predict_in_bfloat16(model_dir: Path) -> None:
    import torch

    texts = texts_of(24, seed=3)
    reference = LocalScorer(str(model_dir), dtype=torch.bfloat16, fast=False)
    fast = LocalScorer(str(model_dir), dtype="bf16", batch_tokens=600, max_batch_size=32)
    assert fast.stats.fast

    want = reference.score_detailed(QUERY, texts).logits
    got = fast.score_detailed(QUERY, texts).logits
    # bf16 keeps 8 bits of mantissa; the two paths round at different places.
    for a, b in zip(got, want, strict=True):
        assert a == pytest.approx(b, abs=0.05 + 0.02 * abs(b))


def test_compile_reports_its_time_and_keeps_the_scores(model_dir: Path) -> None:
    texts = texts_of(20, seed=8)
    # The eager backend runs the real torch.compile machinery (graph capture,
    # guards, dynamic shapes) without inductor's minutes of C++ compilation.
    compiled = LocalScorer(str(model_dir), compile={"backend": "eager"})
    stats = compiled.stats
    assert stats.compile_seconds is not None
    assert stats.compile_seconds > 0

    want = LocalScorer(str(model_dir), fast=False).score_detailed(QUERY, texts).logits
    assert compiled.score_detailed(QUERY, texts).logits == pytest.approx(want, abs=1e-5)
    assert compiled.stats.padded_batches + compiled.stats.equal_length_batches > 0


def test_models_the_fast_path_cannot_reproduce_use_predict(tmp_path: Path, model_dir: Path) -> None:
    # A configuration that transforms logits after the head (as Gemma 2's soft
    # capping does): the fast path would skip that step, so it is not used.
    capped = build_tiny_zerank(
        tmp_path / "capped", config_overrides={"final_logit_softcapping": 30.0}
    )
    auto = LocalScorer(str(capped))
    assert auto.stats.fast is False
    assert "final_logit_softcapping=30.0" in (auto.stats.fast_off_because or "")
    plain = LocalScorer(str(model_dir), fast=False)
    assert auto.score(QUERY, ["a page"]) == pytest.approx(plain.score(QUERY, ["a page"]))

    with pytest.raises(ConfigurationError, match=r"fast path does not support .*softcapping"):
        LocalScorer(str(capped), fast=True)
    with pytest.raises(ConfigurationError, match="compile needs the fast path"):
        LocalScorer(str(capped), compile=True)
    with pytest.raises(ConfigurationError, match="compile needs the fast path"):
        LocalScorer(str(model_dir), fast=False, compile=True)
    with pytest.raises(ConfigurationError, match="fast must be True, False or None, got 'yes'"):
        LocalScorer(str(model_dir), fast="yes")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="compile must be a bool or a mapping"):
        LocalScorer(str(model_dir), compile="max-autotune")  # type: ignore[arg-type]


def test_padded_plan_covers_every_prompt_within_the_budget() -> None:
    rng = random.Random(1)
    lengths = [rng.choice([10, 10, 10, 12, 30, 31, 33, 50]) for _ in range(200)]
    plan = plan_padded_batches(lengths, batch_tokens=120, max_batch_size=16)

    assert sorted(i for batch in plan for i in batch) == list(range(len(lengths)))
    for batch in plan:
        assert len(batch) <= 16
        widths = [lengths[i] for i in batch]
        assert len(batch) * max(widths) <= 120 or len(batch) == 1
        # Pad tokens stay under 12.5 % of the batch.
        assert min(widths) >= 0.875 * max(widths)
    padded = sum(len(batch) * max(lengths[i] for i in batch) for batch in plan)
    assert padded - sum(lengths) < 0.125 * sum(lengths)


def test_padded_plan_sorts_by_length_and_bounds_padding() -> None:
    # Room for 10 prompts of length 10; the nine joins the last two tens, the
    # eight is more than 12.5 % shorter and starts a batch with the seven.
    plan = plan_padded_batches([10] * 12 + [9, 8, 7], batch_tokens=100, max_batch_size=64)
    assert plan == [list(range(10)), [10, 11, 12], [13, 14]]
    # A prompt longer than the budget still gets a batch of its own.
    assert plan_padded_batches([500, 3], batch_tokens=100, max_batch_size=8) == [[0], [1]]
    with pytest.raises(ConfigurationError, match="batch_tokens must be >= 1, got 0"):
        plan_padded_batches([1], batch_tokens=0, max_batch_size=1)
    with pytest.raises(ConfigurationError, match="max_batch_size must be >= 1, got 0"):
        plan_padded_batches([1], batch_tokens=1, max_batch_size=0)


def test_score_many_shares_batches_and_matches_score(model_dir: Path) -> None:
    items = [
        (QUERY, texts_of(10, seed=1)),
        ("Who pays the invoice?", [*texts_of(6, seed=2), "   "], "Prefer amounts."),
        ("What is 2+2?", ["4"]),
    ]
    separate = LocalScorer(str(model_dir))
    want = [separate.score(*item[:2], instruction=(*item, None)[2]) for item in items]
    batches_separate = separate.stats.equal_length_batches + separate.stats.padded_batches

    joint = LocalScorer(str(model_dir))
    seen: list[tuple[int, list[int]]] = []
    got = joint.score_many(items, on_batch=lambda item, idx, _: seen.append((item, list(idx))))

    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert a == pytest.approx(b, abs=1e-6)
    assert got[1][-1] == 0.0  # a blank text is not scored
    assert sorted(seen) == [(0, list(range(13))), (1, list(range(10))), (2, [0])]
    assert joint.stats.equal_length_batches + joint.stats.padded_batches < batches_separate
    assert joint.usage.requests == 3
    with pytest.raises(ConfigurationError, match=r"items\[1\] must be a \(query, texts"):
        joint.score_many([(QUERY, ["a"]), "not an item"])
