"""The in-process scorer against a tiny zerank-shaped model built by the test.

The reference for every score is an independent computation with plain
transformers: the chat template with system/user roles, a forward pass, the
logit of "Yes" at the last position, ``sigmoid(logit / 5)``.
"""

from __future__ import annotations

import asyncio
import math
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("sentence_transformers.cross_encoder.modules")

from tests.tiny_zerank import YES_TOKEN, build_tiny_zerank, sample_text
from zerank_core.errors import ConfigurationError
from zerank_core.scorers.base import Scale, Scorer, query_with_instruction
from zerank_core.scorers.local import LocalScorer, plan_token_batches

QUERY = "When is the renewal deadline?"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_zerank(tmp_path_factory.mktemp("tiny-zerank"))


@pytest.fixture(scope="module")
def scorer(model_dir: Path) -> LocalScorer:
    return LocalScorer(str(model_dir))


@pytest.fixture(scope="module")
def reference(model_dir: Path) -> Any:
    """``logit(query, document)`` computed with transformers alone."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    yes_id = tokenizer.convert_tokens_to_ids(YES_TOKEN)

    def logit(query: str, document: str) -> float:
        messages = [{"role": "system", "content": query}, {"role": "user", "content": document}]
        inputs = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_dict=True, return_tensors="pt"
        )
        with torch.inference_mode():
            logits = model(**inputs).logits
        return float(logits[0, -1, yes_id])

    return logit


def sigmoid_over_5(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x / 5.0))


def mixed_texts(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    return [sample_text(rng, rng.choice([1, 3, 8, 20, 45, 90])) for _ in range(n)]


def test_prompt_is_zeranks_chat_template(model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rendered = tokenizer.apply_chat_template(
        [{"role": "query", "content": "Q"}, {"role": "document", "content": "D"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert rendered == (
        "<|im_start|>system\nQ<|im_end|>\n<|im_start|>user\nD<|im_end|>\n<|im_start|>assistant\n"
    )


def test_scores_are_sigmoid_of_yes_logit_over_5(scorer: LocalScorer, reference: Any) -> None:
    texts = ["4", "The answer is definitely 1 million", *mixed_texts(6)]
    detailed = scorer.score_detailed("What is 2+2?", texts)
    expected_logits = [reference("What is 2+2?", t) for t in texts]

    assert detailed.logits == pytest.approx(expected_logits, abs=1e-4)
    assert detailed.probabilities == pytest.approx(
        [sigmoid_over_5(x) for x in expected_logits], abs=1e-5
    )
    assert scorer.score("What is 2+2?", texts) == list(detailed.probabilities)
    assert detailed.windows == (1,) * len(texts)
    # A toy model, but its logits must differ between pairs or the test proves little.
    assert max(expected_logits) - min(expected_logits) > 0.5


def test_scorer_contract(scorer: LocalScorer) -> None:
    assert isinstance(scorer, Scorer)
    assert scorer.scale is Scale.PROBABILITY
    assert scorer.device == "cpu"
    assert "LocalScorer(" in repr(scorer)
    assert scorer.score(QUERY, []) == []
    with pytest.raises(ConfigurationError, match="single str"):
        scorer.score(QUERY, "one text")
    with pytest.raises(ConfigurationError, match="query must be a str, got int"):
        scorer.score(42, ["x"])  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"texts\[1\]"):
        scorer.score(QUERY, ["ok", 3])  # type: ignore[list-item]


def test_input_order_survives_length_sorted_batches(model_dir: Path, scorer: LocalScorer) -> None:
    texts = mixed_texts(30)
    small_batches = LocalScorer(str(model_dir), batch_tokens=400, max_batch_size=6)

    lengths = [
        len(small_batches.cross_encoder.tokenizer.encode(t, add_special_tokens=False))
        for t in texts
    ]
    batches = plan_token_batches(lengths, batch_tokens=400, max_batch_size=6, overhead=20)
    assert len(batches) > 3
    assert [i for b in batches for i in b] != list(range(len(texts)))  # really reordered

    one_by_one = [scorer.score(QUERY, [t])[0] for t in texts]
    assert small_batches.score(QUERY, texts) == pytest.approx(one_by_one, abs=1e-5)


def test_inputs_are_not_mutated(scorer: LocalScorer) -> None:
    texts = mixed_texts(5)
    before = list(texts)
    scorer.score(QUERY, texts)
    assert texts == before


def test_plan_token_batches_respects_budget_and_covers_every_index() -> None:
    lengths = [5, 50, 7, 300, 12, 50, 1, 80]
    batches = plan_token_batches(lengths, batch_tokens=120, max_batch_size=3, overhead=10)

    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(lengths, reverse=True)
    for batch in batches:
        assert len(batch) <= 3
        padded = len(batch) * (max(lengths[i] for i in batch) + 10)
        assert padded <= 120 or len(batch) == 1
    assert [3] in batches  # over the budget alone: a batch of one
    # ties keep input order
    assert batches[1] == [7]
    assert batches[2] == [1, 5]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_tokens": 0, "max_batch_size": 1}, "batch_tokens must be >= 1, got 0"),
        ({"batch_tokens": 10, "max_batch_size": 0}, "max_batch_size must be >= 1, got 0"),
    ],
)
def test_plan_token_batches_rejects_bad_limits(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        plan_token_batches([1, 2], **kwargs)


def test_long_texts_are_windowed_and_max_pooled(model_dir: Path, scorer: LocalScorer) -> None:
    narrow = LocalScorer(str(model_dir), max_length=96, window_overlap=16)
    rng = random.Random(3)
    short, long = sample_text(rng, 10), sample_text(rng, 300)

    windows = narrow.windows(QUERY, long)
    assert len(windows) > 3
    assert long.startswith(windows[0])
    assert long.endswith(windows[-1])
    positions = [long.index(w) for w in windows]
    assert positions == sorted(positions)
    for i in range(len(windows) - 1):
        assert positions[i + 1] < positions[i] + len(windows[i])  # neighbours overlap
    tokenizer = narrow.cross_encoder.tokenizer
    for window in windows:  # every window fits the context untruncated
        prompt = tokenizer.apply_chat_template(
            [{"role": "system", "content": QUERY}, {"role": "user", "content": window}],
            add_generation_prompt=True,
        )
        assert len(prompt["input_ids"]) <= 96

    detailed = narrow.score_detailed(QUERY, [short, long])
    assert detailed.windows == (1, len(windows))
    window_logits = narrow.score_detailed(QUERY, windows).logits
    assert detailed.logits[1] == pytest.approx(max(window_logits), abs=1e-5)
    assert detailed.probabilities[1] == pytest.approx(sigmoid_over_5(max(window_logits)))
    # a text that fits is scored exactly as without windowing
    assert detailed.probabilities[0] == pytest.approx(scorer.score(QUERY, [short])[0], abs=1e-5)
    assert narrow.windows(QUERY, short) == [short]


def test_window_settings_that_cannot_work_are_refused(model_dir: Path) -> None:
    narrow = LocalScorer(str(model_dir), max_length=40, window_overlap=30)
    with pytest.raises(ConfigurationError, match="window_overlap must be smaller"):
        narrow.score(QUERY, ["x"])
    with pytest.raises(ConfigurationError, match="leaves no room"):
        narrow.score("a much longer question " * 20, ["x"])


def test_instruction_is_appended_by_the_documented_convention(scorer: LocalScorer) -> None:
    texts = mixed_texts(4)
    instruction = "Prefer legal clauses."
    with_instruction = scorer.score(QUERY, texts, instruction=instruction)
    assert with_instruction == pytest.approx(
        scorer.score(query_with_instruction(QUERY, instruction), texts), abs=1e-6
    )
    assert with_instruction != pytest.approx(scorer.score(QUERY, texts), abs=1e-6)


def test_usage_counts_prompt_tokens(model_dir: Path) -> None:
    fresh = LocalScorer(str(model_dir))
    texts = mixed_texts(3)
    fresh.score(QUERY, texts)
    usage = fresh.usage
    assert usage.requests == 1
    assert usage.texts == 3
    prompts = fresh.cross_encoder.preprocess([(QUERY, t) for t in texts])
    real_tokens = int(prompts["attention_mask"].sum())
    assert usage.total_tokens is not None
    assert abs(usage.total_tokens - real_tokens) <= 3


async def test_ascore_matches_score_and_leaves_the_loop_free(scorer: LocalScorer) -> None:
    texts = mixed_texts(12)
    expected = scorer.score(QUERY, texts)

    done = False
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while not done:
            ticks += 1
            await asyncio.sleep(0)

    async def scored() -> list[float]:
        nonlocal done
        try:
            return await scorer.ascore(QUERY, texts)
        finally:
            done = True

    result, _ = await asyncio.gather(scored(), ticker())
    assert result == pytest.approx(expected, abs=1e-6)
    assert ticks > 0  # the event loop ran other work while the model did


async def test_concurrent_ascore_calls_each_get_their_own_scores(scorer: LocalScorer) -> None:
    queries = [f"question {i} about the contract" for i in range(4)]
    texts = mixed_texts(6)
    sequential = [scorer.score(q, texts) for q in queries]
    concurrent = await asyncio.gather(*(scorer.ascore(q, texts) for q in queries))
    for got, want in zip(concurrent, sequential, strict=True):
        assert got == pytest.approx(want, abs=1e-6)


def test_one_scorer_is_safe_from_several_threads(scorer: LocalScorer) -> None:
    jobs = [(f"query {i}", mixed_texts(5, seed=i)) for i in range(8)]
    sequential = [scorer.score(q, t) for q, t in jobs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        threaded = list(pool.map(lambda job: scorer.score(*job), jobs))
    for got, want in zip(threaded, sequential, strict=True):
        assert got == pytest.approx(want, abs=1e-6)


def test_blank_texts_score_zero_without_a_model_call(scorer: LocalScorer) -> None:
    before = scorer.usage.texts
    detailed = scorer.score_detailed("MRI", ["", "lumbar MRI", " \n", "\x00"])
    assert detailed.probabilities[0] == detailed.probabilities[2] == 0.0
    assert detailed.probabilities[3] == 0.0
    assert detailed.logits[0] == -math.inf
    assert detailed.windows == (0, 1, 0, 0)
    assert 0.0 < detailed.probabilities[1] < 1.0
    assert scorer.usage.texts - before == 1
    assert scorer.score("MRI", ["", " "]) == [0.0, 0.0]
    with pytest.raises(ConfigurationError, match="query is empty"):
        scorer.score(" ", ["lumbar MRI"])
