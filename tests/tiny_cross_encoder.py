"""A tiny BERT-style cross-encoder built in the test, with no download.

``build_tiny_cross_encoder(path)`` saves a one-layer ``BertForSequenceClassification``
with one label (a logit head, as MiniLM and bge rerankers have) and a
word-level tokenizer built with the ``tokenizers`` library, loads it with
sentence-transformers' ``CrossEncoder`` and saves it again, so the folder
holds what a downloaded cross-encoder holds. Texts are made of the words
``w0`` … ``w199`` (:func:`words`).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

VOCABULARY = [f"w{i}" for i in range(200)] + list("abcdefghijklmnopqrstuvwxyz0123456789")
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def words(rng: random.Random, n: int) -> str:
    """``n`` random vocabulary words joined by spaces."""
    return " ".join(rng.choice(VOCABULARY[:200]) for _ in range(n))


def build_tokenizer(max_length: int = 128) -> Any:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL + VOCABULARY)}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=max_length,
    )


def build_tiny_cross_encoder(
    path: str | Path, *, seed: int = 0, bias: float = 0.0, max_length: int = 128
) -> Path:
    """Save a ~10k-parameter BERT cross-encoder under ``path`` and return the folder.

    ``bias`` is added to the head's bias: a large one puts every logit far
    outside [0, 1], which a test of a wrongly declared scale needs.
    """
    import torch
    from sentence_transformers import CrossEncoder
    from transformers import BertConfig, BertForSequenceClassification

    folder = Path(path)
    raw = folder.parent / f"{folder.name}-raw"
    tokenizer = build_tokenizer(max_length)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=max_length,
        num_labels=1,
        initializer_range=0.5,
    )
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config)
    with torch.no_grad():
        model.classifier.bias += bias
    model.save_pretrained(raw)
    tokenizer.save_pretrained(raw)
    CrossEncoder(str(raw), device="cpu").save(str(folder))
    return folder
