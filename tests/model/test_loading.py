"""Loading: R3_MODEL or the embedded model, from disk only, with errors that say what to do."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from services.model.config import ModelSettings, get_model_settings
from services.model.errors import ModelError, ModelNotFoundError
from services.model.loading import (
    load_default_tokenizer,
    load_model_and_tokenizer,
    load_tokenizer,
    resolve_model_dir,
)


def test_settings_read_r3_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("R3_MODEL", "/models/qwen3")
    monkeypatch.setenv("R3_DATA_DIR", str(tmp_path))
    settings = ModelSettings()
    assert settings.model == "/models/qwen3"
    assert settings.models_dir == tmp_path / "models"
    for field in ModelSettings.model_fields.values():
        assert field.description


def test_defaults_to_embedded_under_data_dir(
    monkeypatch: pytest.MonkeyPatch, embedded_dir: Path, models_root: Path
) -> None:
    monkeypatch.setenv("R3_DATA_DIR", str(models_root.parent))
    get_model_settings.cache_clear()
    assert resolve_model_dir() == embedded_dir
    model, tokenizer = load_model_and_tokenizer()
    assert model.get_input_embeddings().weight.shape[0] > len(tokenizer)
    assert load_default_tokenizer().get_vocab() == tokenizer.get_vocab()


def test_loads_r3_model_in_eval_mode_on_cpu_float32(
    monkeypatch: pytest.MonkeyPatch, embedded_dir: Path
) -> None:
    monkeypatch.setenv("R3_MODEL", str(embedded_dir))
    get_model_settings.cache_clear()
    model, tokenizer = load_model_and_tokenizer()
    assert not model.training
    assert model.dtype == torch.float32
    assert model.device.type == "cpu"
    batch = tokenizer(["hello there", "🤔🤔🤔🤔 (add 1 2)"], return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape[-1] == model.config.vocab_size


def test_explicit_dtype(embedded_dir: Path) -> None:
    model, _ = load_model_and_tokenizer(embedded_dir, dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16


def _copy_without(source: Path, target: Path, *names: str) -> Path:
    shutil.copytree(source, target)
    for name in names:
        (target / name).unlink()
    return target


def test_missing_directory_says_where_and_what_to_do(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelNotFoundError) as caught:
        load_model_and_tokenizer(missing)
    message = str(caught.value)
    assert str(missing) in message
    assert "does not exist" in message
    assert "R3_MODEL" in message and "embedded" in message


def test_hub_ids_are_never_fetched(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("R3_MODEL", "Qwen/Qwen3-0.6B")
    get_model_settings.cache_clear()
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_tokenizer()


def test_incomplete_directories_name_what_is_missing(tmp_path: Path, embedded_dir: Path) -> None:
    no_config = _copy_without(embedded_dir, tmp_path / "a", "config.json")
    with pytest.raises(ModelNotFoundError, match=r"no config\.json") as caught:
        load_model_and_tokenizer(no_config)
    assert str(no_config) in str(caught.value)

    no_weights = _copy_without(embedded_dir, tmp_path / "b", "model.safetensors")
    with pytest.raises(ModelNotFoundError, match="no weights"):
        load_model_and_tokenizer(no_weights)
    # The tokenizer alone does not need the weights.
    assert len(load_tokenizer(no_weights)) > 0

    no_tokenizer = _copy_without(embedded_dir, tmp_path / "c", "tokenizer.json")
    with pytest.raises(ModelNotFoundError, match="no tokenizer files"):
        load_tokenizer(no_tokenizer)


def test_a_cut_short_sharded_download_is_refused(tmp_path: Path, embedded_dir: Path) -> None:
    sharded = _copy_without(embedded_dir, tmp_path / "sharded", "model.safetensors")
    index = {"metadata": {}, "weight_map": {"lm_head.weight": "model-00001-of-00002.safetensors",
                                            "x": "model-00002-of-00002.safetensors"}}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelNotFoundError, match=r"model-00001-of-00002\.safetensors"):
        load_model_and_tokenizer(sharded)


def test_errors_share_a_base_class() -> None:
    assert issubclass(ModelNotFoundError, ModelError)
    error = ModelNotFoundError(Path("/x"), "no config.json")
    assert "no config.json" in repr(error)
