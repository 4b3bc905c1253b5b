"""Build, once and atomically, the embedded tiny Qwen3 model that runs with nothing downloaded."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import tokenizers
import torch
import transformers
from transformers import GenerationConfig, PreTrainedTokenizerBase, Qwen3Config, Qwen3ForCausalLM

from checkpoints.durable import fsync_files
from services.model.config import get_model_settings
from services.model.tokenizer_build import ENDOFTEXT, IM_END, SPECIAL_TOKENS, build_tokenizer

# Bump the suffix whenever anything below changes what gets built: a cached directory is
# trusted by name, never rebuilt.
EMBEDDED_NAME = "embedded-v1"
SEED = 20240601
# 5,900 entries -> 6,016 rows: 116 spare rows, as Qwen3-0.6B has 267.
VOCAB_SIZE = 5900
MAX_POSITIONS = 4096
# Like Qwen3-0.6B (151,669 tokenizer entries, 151,936 rows) the embedding matrix is padded
# past the tokenizer, so code that grows the vocabulary must cope with spare rows.
ROW_MULTIPLE = 128
# Sized so the whole build stays a few seconds on 2 CPU cores.
DOMAIN_DOCS = 1500
ENGLISH_DOCS = 8000
BUILD_INFO = "build.json"


def embedding_rows(tokenizer_length: int) -> int:
    """Rows for a tokenizer of this length: the next multiple of 128, always strictly more."""
    return (tokenizer_length // ROW_MULTIPLE + 1) * ROW_MULTIPLE


def embedded_config(tokenizer: PreTrainedTokenizerBase) -> Qwen3Config:
    """Qwen3-0.6B's architecture shrunk to ~1.6M parameters (tied embeddings, GQA, qk-norm)."""
    return Qwen3Config(
        vocab_size=embedding_rows(len(tokenizer)),
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        hidden_act="silu",
        max_position_embeddings=MAX_POSITIONS,
        rms_norm_eps=1e-6,
        rope_theta=1_000_000.0,
        initializer_range=0.02,
        tie_word_embeddings=True,
        attention_bias=False,
        attention_dropout=0.0,
        use_cache=True,
        bos_token_id=tokenizer.convert_tokens_to_ids(ENDOFTEXT),
        eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
        pad_token_id=tokenizer.convert_tokens_to_ids(ENDOFTEXT),
    )


def default_training_corpus() -> Iterable[str]:
    """The corpus of the cached embedded tokenizer (see `services.model.corpus`)."""
    from services.model.corpus import default_corpus

    return default_corpus(domain_count=DOMAIN_DOCS, english_count=ENGLISH_DOCS, seed=0)


def build_embedded_model(dest: Path, corpus: Iterable[str] | None = None) -> dict[str, object]:
    """Write the tokenizer and randomly initialized model into `dest` (an empty or new dir).

    `corpus` defaults to the codec domains plus English; tests pass their own. Returns the
    build record also written to `dest/build.json`.
    """
    started = time.perf_counter()
    tokenizer = build_tokenizer(
        default_training_corpus() if corpus is None else corpus,
        vocab_size=VOCAB_SIZE,
        model_max_length=MAX_POSITIONS,
    )
    config = embedded_config(tokenizer)
    # A private RNG state: the same seed gives the same weights, and the caller's global
    # torch RNG is left exactly as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = Qwen3ForCausalLM(config).float()
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    endoftext = tokenizer.convert_tokens_to_ids(ENDOFTEXT)
    # Qwen3-0.6B's sampling defaults; chat stops at <|im_end|> or <|endoftext|>.
    model.generation_config = GenerationConfig(
        bos_token_id=endoftext,
        eos_token_id=[im_end, endoftext],
        pad_token_id=endoftext,
        do_sample=True,
        temperature=0.6,
        top_k=20,
        top_p=0.95,
    )
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    record: dict[str, object] = {
        "name": EMBEDDED_NAME,
        "seed": SEED,
        "tokenizer_length": len(tokenizer),
        "embedding_rows": config.vocab_size,
        "special_tokens": {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS},
        "parameters": sum(p.numel() for p in model.parameters()),
        "default_corpus": corpus is None,
        "build_seconds": round(time.perf_counter() - started, 3),
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
        },
    }
    (dest / BUILD_INFO).write_text(json.dumps(record, indent=2) + "\n")
    return record


def ensure_embedded_model(root: Path | None = None) -> Path:
    """Return `root/embedded-v1` (default root: R3_DATA_DIR/models), building it if absent.

    The build goes to a temporary sibling directory renamed into place when complete, so a
    crash never leaves a half model, and two processes racing both end with the same one.
    """
    root = get_model_settings().models_dir if root is None else Path(root)
    final = root / EMBEDDED_NAME
    if final.is_dir():
        return final
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{EMBEDDED_NAME}.building-", dir=root))
    try:
        build_embedded_model(staging)
        fsync_files(staging)  # the rename below means "complete" only once the bytes are down
        try:
            staging.rename(final)
        except OSError:
            # Another process renamed its finished build first; keep that one.
            if not final.is_dir():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return final
