"""Add the codebook's <E###> codes to a Hugging Face tokenizer and model (codec's HF seam)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from tokenizers import AddedToken
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from codec.errors import CodebookError


def _code_token(code: str) -> AddedToken:
    # Ordinary (not special) tokens: decode(skip_special_tokens=True) must keep them, since
    # they carry meaning. normalized=False and no stripping keep their text byte-exact.
    return AddedToken(
        code, special=False, normalized=False, single_word=False, lstrip=False, rstrip=False
    )


def _fragment_ids(
    tokenizer: PreTrainedTokenizerBase, codes: Mapping[str, str]
) -> dict[str, list[int]]:
    # all_special_tokens leaves out tokens added as AddedToken(special=True), which
    # decode(skip_special_tokens=True) drops all the same: read the added tokens' own flags.
    special = set(tokenizer.all_special_tokens) | {
        t.content for t in tokenizer.added_tokens_decoder.values() if t.special
    }
    fragments: dict[str, list[int]] = {}
    for code, fragment in codes.items():
        if not code or not fragment:
            raise CodebookError(
                f"code {code!r} -> fragment {fragment!r}: both must be non-empty strings; "
                "check the codebook entry"
            )
        if code in special:
            raise CodebookError(
                f"code {code!r} is already a special token of this tokenizer, so decoding with "
                "skip_special_tokens=True would drop it; rename the code in the codebook"
            )
        fragments[code] = tokenizer.encode(fragment, add_special_tokens=False)
    return fragments


def _weight(module: object, role: str) -> torch.Tensor:
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise CodebookError(f"the model's {role} has no weight matrix; cannot add codes to it")
    return weight


def _bias(module: object) -> torch.Tensor | None:
    bias = getattr(module, "bias", None)
    return bias if isinstance(bias, torch.Tensor) else None


def add_codes(
    tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel, codes: Mapping[str, str]
) -> list[int]:
    """Add `codes` (code token -> fragment text) to `tokenizer` and `model`; return their ids.

    Each new code's embedding row (and lm_head row, when untied) starts as the mean of the
    rows of its fragment's subwords, tokenized as the tokenizer was before any code was added.
    The embedding matrix only ever grows (to max(rows, len(tokenizer))); rows that existed
    before keep their values, except unused padding rows that a new code takes over.
    Adding codes that are already present changes nothing.
    """
    if not codes:
        return []
    # Tokenize every fragment before the tokenizer knows the codes: the mean must be over
    # the ordinary subwords the model was trained on.
    fragments = _fragment_ids(tokenizer, codes)
    vocab = tokenizer.get_vocab()
    new_codes = [code for code in codes if code not in vocab]
    if new_codes:
        tokenizer.add_tokens([_code_token(code) for code in new_codes])
        # One lookup table after adding: get_vocab() copies the whole vocabulary (151k
        # entries for Qwen3), so it must not run once per code.
        vocab = tokenizer.get_vocab()
    ids = [vocab[code] for code in codes]

    rows = int(_weight(model.get_input_embeddings(), "input embedding").shape[0])
    for code, fragment in fragments.items():
        if max(fragment) >= rows:
            raise CodebookError(
                f"fragment of {code!r} tokenizes to id {max(fragment)} but the model has only "
                f"{rows} embedding rows: this tokenizer does not belong to this model"
            )
    needed = max(rows, len(tokenizer))
    if needed > rows:
        # Never called with fewer rows than exist: resize_token_embeddings(len(tokenizer))
        # would cut a padded matrix like Qwen3-0.6B's. New rows get real values just below.
        model.resize_token_embeddings(needed, mean_resizing=False)
    # A code needs a row when it is new (its id may sit in an old padding row) or when it was
    # already in the tokenizer but the model had no row for it yet.
    fresh = set(new_codes)
    targets = [
        (i, fragments[code])
        for code, i in zip(codes, ids, strict=True)
        if code in fresh or i >= rows
    ]
    if targets:
        _init_rows(model, targets)
    text_config = model.config.get_text_config()
    text_config.vocab_size = int(_weight(model.get_input_embeddings(), "input embedding").shape[0])
    return ids


def _mean_rows(weight: torch.Tensor, targets: list[tuple[int, list[int]]]) -> torch.Tensor:
    # Means are taken in float32 from the rows as they are before any write, so one code's
    # new row never feeds another's mean.
    means = [weight[fragment].float().mean(dim=0) for _, fragment in targets]
    return torch.stack(means).to(weight.dtype)


@torch.no_grad()
def _init_rows(model: PreTrainedModel, targets: list[tuple[int, list[int]]]) -> None:
    embeddings = _weight(model.get_input_embeddings(), "input embedding")
    output = model.get_output_embeddings()  # type: ignore[no-untyped-call]
    head = None if output is None else _weight(output, "output embedding (lm_head)")
    tied = head is not None and head.data_ptr() == embeddings.data_ptr()
    rows = [i for i, _ in targets]
    # All means first, from untouched rows; then the writes.
    embedding_means = _mean_rows(embeddings, targets)
    head_means = None if head is None or tied else _mean_rows(head, targets)
    bias = None if output is None else _bias(output)
    bias_means = None
    if bias is not None and not tied:
        bias_means = torch.stack([bias[f].float().mean() for _, f in targets]).to(bias.dtype)

    embeddings[torch.tensor(rows, device=embeddings.device)] = embedding_means
    if head is None:
        return
    head_index = torch.tensor(rows, device=head.device)
    if tied:
        if not torch.equal(head[head_index], embedding_means.to(head.device)):
            raise RuntimeError("tied output embeddings did not follow the input embeddings")
        return
    assert head_means is not None
    head[head_index] = head_means
    if bias is not None and bias_means is not None:
        bias[torch.tensor(rows, device=bias.device)] = bias_means
