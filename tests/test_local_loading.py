"""Loading the in-process scorer: weights on disk or in the Hugging Face cache,
device and dtype choice, and the errors for what cannot work."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

pytest.importorskip("sentence_transformers.cross_encoder.modules")

import huggingface_hub.constants
import torch

from tests.tiny_zerank import YES_TOKEN, build_tiny_zerank
from zerank_core.errors import ConfigurationError, MissingDependencyError
from zerank_core.scorers.auto import scorer_from_env
from zerank_core.scorers.local import (
    DEFAULT_MODEL,
    LocalScorer,
    select_device,
    weights_available,
)

NO_ACCELERATOR = not torch.cuda.is_available() and not torch.backends.mps.is_available()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_zerank(tmp_path_factory.mktemp("tiny-zerank"))


def hub_cache_with(model_dir: Path, cache: Path, repo_id: str, *, sharded: bool = False) -> Path:
    """Lay ``model_dir`` out as the Hugging Face cache stores a downloaded ``repo_id``."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    shutil.copytree(model_dir, snapshot)
    if sharded:
        weights = snapshot / "model.safetensors"
        weights.rename(snapshot / "model-00001-of-00002.safetensors")
        (snapshot / "model-00002-of-00002.safetensors").write_bytes(b"")
        index = {
            "weight_map": {
                "a": "model-00001-of-00002.safetensors",
                "b": "model-00002-of-00002.safetensors",
            }
        }
        (snapshot / "model.safetensors.index.json").write_text(json.dumps(index))
    return snapshot


def test_weights_available_for_folders(model_dir: Path, tmp_path: Path) -> None:
    assert weights_available(str(model_dir))
    assert not weights_available(str(tmp_path))  # a folder without config.json
    assert not weights_available(str(tmp_path / "missing"))


def test_weights_available_reads_the_hub_cache_only(model_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    hub_cache_with(model_dir, cache, "org/single")
    snapshot = hub_cache_with(model_dir, cache, "org/sharded", sharded=True)

    assert weights_available("org/single", cache_dir=cache)
    assert weights_available("org/sharded", cache_dir=cache)
    assert not weights_available("org/absent", cache_dir=cache)
    assert not weights_available("not a valid id!!", cache_dir=cache)

    (snapshot / "model-00002-of-00002.safetensors").unlink()  # half a download
    assert not weights_available("org/sharded", cache_dir=cache)


def test_quickstart_picks_cached_zerank_weights(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    assert scorer_from_env().name == "lexical"  # nothing cached yet

    hub_cache_with(model_dir, cache, DEFAULT_MODEL)
    choice = scorer_from_env(allow_lexical=False)

    assert choice.name == "local"
    assert isinstance(choice.scorer, LocalScorer)
    assert choice.scorer.model == DEFAULT_MODEL
    assert DEFAULT_MODEL in choice.reason
    (score,) = choice.scorer.score("What is 2+2?", ["4"])
    assert 0.0 < score < 1.0


def test_a_folder_can_be_given_as_a_path(model_dir: Path) -> None:
    assert LocalScorer(model_dir).model == str(model_dir)
    with pytest.raises(ConfigurationError, match="model must be a model id or a folder"):
        LocalScorer("")


def test_quickstart_uses_zerank_local_model(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZERANK_LOCAL_MODEL", str(model_dir))
    choice = scorer_from_env()
    assert choice.name == "local"
    assert isinstance(choice.scorer, LocalScorer)
    assert choice.scorer.model == str(model_dir)


def test_missing_weights_name_the_model_and_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ConfigurationError, match="hf download zeroentropy/zerank-1-small"):
        LocalScorer("zeroentropy/zerank-1-small", local_files_only=True)
    with pytest.raises(ConfigurationError, match="does not exist"):
        LocalScorer(str(tmp_path / "no-such-model"))


@pytest.mark.parametrize(
    ("module", "package"),
    [
        ("sentence_transformers", "sentence-transformers>=5.4"),
        # sentence-transformers older than 5.4 has no LogitScore
        ("sentence_transformers.cross_encoder.modules", "sentence-transformers>=5.4"),
        ("torch", "torch"),
    ],
)
def test_missing_or_old_dependencies_name_the_install_command(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch, module: str, package: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'zerank-gate\[local\]'") as info:
        LocalScorer(str(model_dir))
    assert info.value.package == package


def save_variant(model_dir: Path, target: Path, *, generation_prompt: bool, no_token: bool) -> str:
    from sentence_transformers import CrossEncoder
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.cross_encoder.modules import LogitScore

    processing = {"chat_template": {"add_generation_prompt": True}} if generation_prompt else {}
    transformer = Transformer(
        str(model_dir), transformer_task="text-generation", processing_kwargs=processing
    )
    tokenizer = transformer.tokenizer
    head = LogitScore(
        true_token_id=tokenizer.convert_tokens_to_ids(YES_TOKEN),
        false_token_id=tokenizer.convert_tokens_to_ids("0") if no_token else None,
    )
    CrossEncoder(modules=[transformer, head], device="cpu").save(str(target))
    return str(target)


def test_a_folder_that_loads_as_another_scorer_is_refused(model_dir: Path, tmp_path: Path) -> None:
    no_prompt = save_variant(model_dir, tmp_path / "a", generation_prompt=False, no_token=False)
    with pytest.raises(ConfigurationError, match="generation prompt"):
        LocalScorer(no_prompt)
    yes_minus_no = save_variant(model_dir, tmp_path / "b", generation_prompt=True, no_token=True)
    with pytest.raises(ConfigurationError, match="not a LogitScore on 'Yes' alone"):
        LocalScorer(yes_minus_no)


@pytest.mark.skipif(not NO_ACCELERATOR, reason="checks the CPU fallback")
def test_device_and_dtype_default_to_cpu_float32(model_dir: Path) -> None:
    assert select_device() == "cpu"
    scorer = LocalScorer(str(model_dir))
    assert scorer.device == "cpu"
    assert scorer.dtype is torch.float32


def test_dtype_override_loads_the_weights_in_that_dtype(model_dir: Path) -> None:
    full = LocalScorer(str(model_dir), device="cpu")
    half = LocalScorer(str(model_dir), device="cpu", dtype="bf16")
    assert half.dtype is torch.bfloat16
    assert next(half.cross_encoder.model.parameters()).dtype is torch.bfloat16
    texts = ["4", "The answer is definitely 1 million", "renewal deadline clause"]
    assert half.score("What is 2+2?", texts) == pytest.approx(
        full.score("What is 2+2?", texts), abs=0.03
    )


def test_model_kwargs_reach_from_pretrained(model_dir: Path) -> None:
    eager = LocalScorer(str(model_dir), model_kwargs={"attn_implementation": "eager"})
    assert eager.cross_encoder.model.config._attn_implementation == "eager"
    texts = ["4", "renewal deadline clause"]
    assert eager.score("What is 2+2?", texts) == pytest.approx(
        LocalScorer(str(model_dir)).score("What is 2+2?", texts), abs=1e-5
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dtype": "int8"}, "dtype must be one of .* got 'int8'"),
        ({"dtype": torch.int32}, "floating-point type, got torch.int32"),
        ({"device": "toaster"}, "got 'toaster'"),
        ({"batch_tokens": 0}, "batch_tokens must be >= 1, got 0"),
        ({"max_batch_size": -1}, "max_batch_size must be >= 1, got -1"),
        ({"window_overlap": -2}, "window_overlap must be >= 0, got -2"),
        ({"max_length": 0}, "max_length must be >= 1, got 0"),
        ({"max_length": 10**6}, "max_length must be <= 4096"),
    ],
)
def test_bad_settings_are_named(model_dir: Path, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        LocalScorer(str(model_dir), **kwargs)  # type: ignore[arg-type]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_cuda_is_an_error() -> None:
    with pytest.raises(ConfigurationError, match="no CUDA device"):
        select_device("cuda")
