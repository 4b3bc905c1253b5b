"""The embedded model: Qwen3 architecture, padded rows, cached atomic deterministic builds."""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

from services.model import embedded
from services.model.embedded import EMBEDDED_NAME, build_embedded_model, ensure_embedded_model
from services.model.english import english_corpus


def test_directory_is_a_complete_hf_model(embedded_dir: Path) -> None:
    assert embedded_dir.name == EMBEDDED_NAME
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "generation_config.json", "build.json"):
        assert (embedded_dir / name).is_file(), name


def test_config_is_tiny_qwen3_with_padded_rows(embedded_dir: Path) -> None:
    config = Qwen3Config.from_pretrained(embedded_dir, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(embedded_dir, local_files_only=True)
    assert config.model_type == "qwen3"
    assert (config.hidden_size, config.num_hidden_layers, config.head_dim) == (128, 4, 32)
    assert (config.num_attention_heads, config.num_key_value_heads) == (4, 2)
    assert config.tie_word_embeddings is True
    assert config.max_position_embeddings >= 4096
    # More rows than tokenizer entries, like Qwen3-0.6B (151,936 rows, 151,669 entries).
    assert config.vocab_size % 128 == 0
    assert config.vocab_size > len(tokenizer)
    assert config.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_weights_are_tied_and_generation_stops_at_im_end(embedded_dir: Path) -> None:
    model = Qwen3ForCausalLM.from_pretrained(embedded_dir, local_files_only=True)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert model.generation_config.eos_token_id == [2, 0]
    assert model.generation_config.pad_token_id == 0
    record = json.loads((embedded_dir / "build.json").read_text())
    assert record["parameters"] == sum(p.numel() for p in model.parameters())
    assert record["default_corpus"] is True


def test_build_is_fast(embedded_dir: Path) -> None:
    record = json.loads((embedded_dir / "build.json").read_text())
    # "Well under a minute on 2 cores", with room for other test runs sharing the CPU.
    assert record["build_seconds"] < 40


def test_ensure_is_cached_and_leaves_no_staging(embedded_dir: Path, models_root: Path) -> None:
    before = (embedded_dir / "model.safetensors").stat().st_mtime_ns
    assert ensure_embedded_model(models_root) == embedded_dir
    assert (embedded_dir / "model.safetensors").stat().st_mtime_ns == before
    assert [p.name for p in models_root.iterdir()] == [EMBEDDED_NAME]


def test_a_failed_build_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def corpus_that_breaks() -> itertools.chain[str]:
        def broken() -> itertools.chain[str]:
            raise OSError("disk went away halfway")
            yield ""  # pragma: no cover

        return itertools.chain(english_corpus(50), broken())

    monkeypatch.setattr(embedded, "default_training_corpus", corpus_that_breaks)
    with pytest.raises(OSError, match="halfway"):
        ensure_embedded_model(tmp_path)
    assert list(tmp_path.iterdir()) == []


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_builds_are_deterministic_and_leave_torch_rng_alone(tmp_path: Path) -> None:
    corpus = list(english_corpus(300))
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    build_embedded_model(tmp_path / "a", iter(corpus))
    assert torch.equal(torch.rand(3), expected_next)
    build_embedded_model(tmp_path / "b", iter(corpus))
    for name in ("model.safetensors", "tokenizer.json"):
        assert _digest(tmp_path / "a" / name) == _digest(tmp_path / "b" / name)
