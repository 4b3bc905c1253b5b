"""Loading a model directory for serving (device, dtype, stop tokens, markers) and warming it up."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from codec.codebook import Codebook
from codec.errors import CodebookError
from services.model.errors import ModelNotFoundError
from services.model.loading import load_model_and_tokenizer
from services.node.codebooks import model_codebook
from services.node.config import NodeSettings
from services.node.errors import ModelLoadError
from services.node.serving.engine import LoadedModel, free_device_memory
from services.node.serving.kernels import use_fused_kernels
from services.node.serving.kv import SlotCache, decode, length_bucket, prefill, use_slot_attention
from services.node.serving.thinking import ThinkingMarkers

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def resolve_device(name: str) -> torch.device:
    """`auto` is the first GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(int(i) for i in configured)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    # ChatML ends a turn with <|im_end|>; a checkpoint saved without a generation config
    # must still stop there rather than run on to max_tokens.
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id and im_end >= 0:
        ids.add(im_end)
    return frozenset(ids)


def serving_model(
    model: Any,
    tokenizer: Any,
    version: str,
    *,
    path: Path | None = None,
    step: int | None = None,
    codebook: Codebook | None = None,
) -> LoadedModel:
    """Wrap a model already on its device (eval mode) and its tokenizer for the engine."""
    device = next(model.parameters()).device
    max_positions = getattr(model.config, "max_position_embeddings", None)
    return LoadedModel(
        version=version,
        path=path,
        model=model,
        tokenizer=tokenizer,
        device=device,
        step=step,
        eos_ids=_eos_ids(model, tokenizer),
        markers=ThinkingMarkers.from_tokenizer(tokenizer),
        max_positions=int(max_positions) if max_positions else None,
        vocab_size=len(tokenizer),
        codebook=codebook,
    )


def check_code_tokens(tokenizer: Any, codebook: Codebook, version: str) -> None:
    """Refuse a tokenizer whose code tokens are special: the engine decodes generated ids
    with skip_special_tokens=True, which would drop every code from the output.

    Codes the tokenizer lacks are no error: the model then writes each one as several
    ordinary tokens (`<`, `E`, digits, `>`) and its text decodes all the same.
    """
    # all_special_tokens misses tokens added with AddedToken(special=True), which decoding
    # skips all the same: the added tokens' own flags say which are special.
    special = set(tokenizer.all_special_tokens)
    added = getattr(tokenizer, "added_tokens_decoder", {})
    special.update(token.content for token in added.values() if token.special)
    clash = [code for code in codebook.codes() if code in special]
    if clash:
        raise ModelLoadError(
            version,
            f"its tokenizer holds the code tokens {', '.join(clash[:5])} as special tokens, "
            "which decoding drops from the output; add them as ordinary tokens "
            "(codec.hf_extension.add_codes does) and save the tokenizer again.",
            kind="invalid",
        )


def load_for_serving(
    path: str | Path, version: str, settings: NodeSettings, *, step: int | None = None
) -> LoadedModel:
    """Load `path` onto the node's device; ModelLoadError (with a kind) on any failure."""
    device = resolve_device(settings.node_device)
    dtype = DTYPES.get(settings.node_dtype)
    try:
        # Read before the weights: a corrupt codebook refuses the model without loading them.
        codebook = model_codebook(path)
    except CodebookError as exc:
        raise ModelLoadError(
            version,
            f"{exc}; the model's code tokens cannot be decoded without it: copy the "
            "checkpoint's codebook.json again (or pull the checkpoint again)",
            kind="invalid",
        ) from exc
    try:
        model, tokenizer = load_model_and_tokenizer(path, device=device, dtype=dtype)
    except ModelNotFoundError as exc:
        raise ModelLoadError(version, str(exc), kind="missing") from exc
    except torch.cuda.OutOfMemoryError as exc:
        free_device_memory(device)
        raise ModelLoadError(
            version,
            f"out of GPU memory while loading {path} beside the serving model ({exc}); "
            "free memory (fewer jobs, smaller batches) or load on a larger card.",
            kind="out_of_memory",
        ) from exc
    except Exception as exc:  # a corrupt file fails in many libraries' own error types
        free_device_memory(device)
        raise ModelLoadError(
            version, f"{path}: {type(exc).__name__}: {exc}", kind="invalid"
        ) from exc
    if codebook is not None:
        try:
            check_code_tokens(tokenizer, codebook, version)
        except ModelLoadError:
            del model
            free_device_memory(device)
            raise
    if settings.node_fused_kernels:
        use_fused_kernels(model)
    return serving_model(model, tokenizer, version, path=Path(path), step=step, codebook=codebook)


@torch.inference_mode()
def warm_up(loaded: LoadedModel, tokens: int = 4) -> None:
    """Run a short prefill and a few decode steps so the first request pays no first-use costs.

    Through the engine's own path (a one-slot cache, eager). Also proves the weights run at
    all: a checkpoint that loads but fails or produces NaN on its first forward pass is
    refused here, before it is swapped in.
    """
    tok = loaded.tokenizer
    try:
        prompt = list(
            tok.apply_chat_template(
                [{"role": "user", "content": "warm up"}],
                add_generation_prompt=True,
                tokenize=True,
                return_dict=False,
            )
        )
        use_slot_attention(loaded.model)
        dtype = next(loaded.model.parameters()).dtype
        cache = SlotCache(loaded.model, 1, loaded.device, dtype)
        logits = prefill(loaded.model, cache, [prompt], [0])
        position = len(prompt)
        for _ in range(tokens):
            if not torch.isfinite(logits.float()).all():
                raise ModelLoadError(
                    loaded.version,
                    "the first forward pass produced NaN or infinite logits; the weights are "
                    "corrupt or overflow in this dtype (try R3_NODE_DTYPE=float32).",
                    kind="invalid",
                )
            nxt = logits.argmax(dim=-1)
            here = torch.tensor([position], device=loaded.device)
            logits = decode(loaded.model, cache, nxt, here, length_bucket(position + 1))
            position += 1
    except torch.cuda.OutOfMemoryError as exc:
        raise ModelLoadError(
            loaded.version, f"out of GPU memory while warming up: {exc}", kind="out_of_memory"
        ) from exc
    finally:
        if loaded.device.type == "cuda":
            torch.cuda.synchronize(loaded.device)
