"""Build a tiny zerank-shaped reranker on disk, with no download.

The folder holds what ``zeroentropy/zerank-2-reranker`` holds, at toy size: a
Qwen3 causal LM, a byte-level BPE tokenizer whose chat template puts the query
in the system turn and the document in the user turn (under the roles
``"query"``/``"document"`` that sentence-transformers uses for pairs), and the
sentence-transformers configuration (``Transformer`` with the generation
prompt, ``LogitScore`` on the token "Yes", identity activation). Loading it
with ``CrossEncoder(path)`` therefore goes through the same code as the real
model.

Tests and benchmarks import :func:`build_tiny_zerank`; the weights are random,
so the scores mean nothing, but the prompt and the score path are zerank's.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "CHAT_TEMPLATE",
    "YES_TOKEN",
    "build_tiny_zerank",
    "build_tokenizer",
    "sample_text",
]

YES_TOKEN = "Yes"

# zerank's prompt: query as the system turn, document as the user turn, then the
# assistant turn opened by the generation prompt; the score is read there.
# sentence-transformers renders a pair with the roles "query" and "document", so
# the template maps them; "system"/"user" are kept for direct use with
# apply_chat_template.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message.role in ['system', 'query'] -%}{%- set role = 'system' -%}"
    "{%- elif message.role in ['user', 'document'] -%}{%- set role = 'user' -%}"
    "{%- else -%}{%- set role = message.role -%}{%- endif -%}"
    "{{ '<|im_start|>' + role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_VOCABULARY = """
the contract termination notice period party shall within days written agreement
invoice payment due amount tax revenue quarter growth report board meeting
patient dose kidney injury clinical trial result model training data loss
What When Where Who How Why is are was the answer definitely million Yes No
deadline renewal clause liability insurance policy premium claim customer
server latency request error retry budget token page section table figure
"""
_WORDS = tuple(_VOCABULARY.split())


def sample_text(rng: random.Random, n_words: int) -> str:
    """Pseudo-English text of ``n_words`` words from a fixed vocabulary, with digits."""
    words = []
    for i in range(n_words):
        if i % 11 == 10:
            words.append(str(rng.randint(0, 9999)))
        else:
            words.append(rng.choice(_WORDS))
    return " ".join(words) + "."


def build_tokenizer(*, vocab_size: int = 600, seed: int = 0) -> Any:
    """A byte-level BPE ``PreTrainedTokenizerFast`` with zerank's chat template.

    Byte-level, so any text (any script) tokenizes without unknown tokens and
    with character offsets; "Yes" and the digits are single tokens (the digits
    because sentence-transformers renders them to find the template's tail).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(seed)
    corpus = [sample_text(rng, 40) for _ in range(400)]
    corpus += [f"{YES_TOKEN} {d}" for d in "0123456789"] * 20

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=32768,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    for token in (YES_TOKEN, *"0123456789"):
        ids = tokenizer.encode(token, add_special_tokens=False)
        if len(ids) != 1:
            raise RuntimeError(f"tiny tokenizer splits {token!r} into {ids}; raise vocab_size")
    return tokenizer


def build_tiny_zerank(
    path: str | Path,
    *,
    config_overrides: Mapping[str, Any] | None = None,
    tokenizer: Any = None,
    seed: int = 0,
    device: str = "cpu",
    dtype: Any = None,
) -> Path:
    """Save a zerank-shaped model under ``path`` and return the folder.

    Defaults give a ~0.1M-parameter Qwen3 (2 layers, hidden size 32) that loads
    and scores in well under a second. ``config_overrides`` replaces
    ``Qwen3Config`` fields: pass the Qwen3-4B shape to build a random-weight
    stand-in for zerank-2 (``device="cuda"`` and ``dtype=torch.bfloat16``
    then keep initialisation off the CPU). ``initializer_range`` defaults to
    0.3 because the usual 0.02 gives nearly equal logits for every pair.
    """
    import torch
    from sentence_transformers import CrossEncoder
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.cross_encoder.modules import LogitScore
    from transformers import Qwen3Config, Qwen3ForCausalLM

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = tokenizer if tokenizer is not None else build_tokenizer(seed=seed)

    settings: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 8,
        "max_position_embeddings": 4096,
        "initializer_range": 0.3,
        "tie_word_embeddings": True,
        "bos_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    settings.update(config_overrides or {})
    config = Qwen3Config(**settings)
    config.architectures = ["Qwen3ForCausalLM"]

    torch.manual_seed(seed)
    previous_dtype = torch.get_default_dtype()
    try:
        if dtype is not None:
            torch.set_default_dtype(dtype)
        with torch.device(device):
            model = Qwen3ForCausalLM(config)
    finally:
        torch.set_default_dtype(previous_dtype)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model

    yes_id = tokenizer.convert_tokens_to_ids(YES_TOKEN)
    transformer = Transformer(
        str(folder),
        transformer_task="text-generation",
        processing_kwargs={"chat_template": {"add_generation_prompt": True}},
    )
    cross_encoder = CrossEncoder(
        modules=[transformer, LogitScore(true_token_id=yes_id)],
        activation_fn=torch.nn.Identity(),
        device="cpu",
    )
    cross_encoder.save(str(folder))
    return folder
