"""Load the configured model and tokenizer (R3_MODEL or the embedded one), never from a hub."""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from services.model.config import get_model_settings
from services.model.embedded import ensure_embedded_model
from services.model.errors import ModelError, ModelNotFoundError

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def resolve_model_dir(path: str | Path | None = None) -> Path:
    """`path` if given, else R3_MODEL if set, else the embedded model (built if missing)."""
    if path is None:
        path = get_model_settings().model
    if path is None:
        return ensure_embedded_model()
    return Path(path).expanduser()


def _missing_files(path: Path, *, need_weights: bool) -> list[str]:
    if not path.exists():
        return ["the directory does not exist"]
    if not path.is_dir():
        return ["it is not a directory"]
    missing = []
    if not (path / "config.json").is_file():
        missing.append("no config.json")
    if need_weights:
        present = [name for name in WEIGHT_FILES if (path / name).is_file()]
        if not present:
            missing.append(f"no weights (none of {', '.join(WEIGHT_FILES)})")
        for index in (name for name in present if name.endswith(".index.json")):
            # A sharded download cut short has its index but not every shard.
            shards = sorted(set(json.loads((path / index).read_text())["weight_map"].values()))
            absent = [shard for shard in shards if not (path / shard).is_file()]
            if absent:
                missing.append(f"{index} lists shards that are absent: {', '.join(absent)}")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        missing.append(f"no tokenizer files (none of {', '.join(TOKENIZER_FILES)})")
    return missing


def check_model_dir(path: str | Path, *, need_weights: bool = True) -> Path:
    """Return `path` if it looks like a complete local HF model dir; else say what is missing."""
    path = Path(path).expanduser()
    missing = _missing_files(path, need_weights=need_weights)
    if missing:
        raise ModelNotFoundError(path, "; ".join(missing))
    return path


def load_tokenizer(path: str | Path | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer of `path` (default: R3_MODEL, else the embedded model), from disk only."""
    directory = check_model_dir(resolve_model_dir(path), need_weights=False)
    return cast(
        PreTrainedTokenizerBase, AutoTokenizer.from_pretrained(directory, local_files_only=True)
    )


def load_default_tokenizer() -> PreTrainedTokenizerBase:
    """The tokenizer the system uses by default: R3_MODEL's if set, else the embedded one."""
    return load_tokenizer(None)


def load_model_and_tokenizer(
    path: str | Path | None = None,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from a local directory, in eval mode on `device`.

    `path` defaults to R3_MODEL, else the embedded model. `dtype` None means float32 on CPU
    (bf16 matmuls are slow there) and the checkpoint's own dtype elsewhere.
    """
    directory = check_model_dir(resolve_model_dir(path))
    tokenizer = cast(
        PreTrainedTokenizerBase, AutoTokenizer.from_pretrained(directory, local_files_only=True)
    )
    if dtype is None:
        on_cpu = torch.device(device).type == "cpu"
        chosen: torch.dtype | str = torch.float32 if on_cpu else "auto"
    else:
        chosen = dtype
    model = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True, dtype=chosen)
    rows = int(cast(torch.Tensor, model.get_input_embeddings().weight).shape[0])
    if rows < len(tokenizer):
        # Token ids past the last row would index out of range at the first forward pass.
        raise ModelError(
            f"{directory}: the tokenizer has {len(tokenizer)} tokens but the model only "
            f"{rows} embedding rows; save the model and tokenizer together (after resizing)."
        )
    model.to(device)  # type: ignore[arg-type]  # transformers' stub types `to` wrongly
    model.eval()
    return model, tokenizer
