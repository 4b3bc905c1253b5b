"""Teacher-forced token log-probabilities of a completion after a chat prompt (torch).

One tokenization rule for the node's `POST /v1/score` and the trainer's in-process scorer:
the whole text (prompt with generation header, completion, end-of-turn) is tokenized at
once, as training tokenizes a conversation, so the completion's tokens are the ones the
model learned, and both hosts score the same tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

END_OF_TURN = "<|im_end|>"


class ScoringError(ValueError):
    """A request the model cannot score (too long for its context)."""


@dataclass(frozen=True)
class Scores:
    tokens: list[str]
    logprobs: list[float]
    offsets: list[tuple[int, int]]

    @property
    def ce(self) -> float:
        return -sum(self.logprobs) / len(self.logprobs)


@dataclass(frozen=True)
class _Encoded:
    ids: list[int]
    first: int  # index of the completion's first token
    offsets: list[tuple[int, int]]  # the completion tokens' characters in the completion


def _encode(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict[str, str]],
    completion: str,
    end_of_turn: bool,
) -> _Encoded:
    prompt = str(
        tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    )
    text = prompt + completion + (END_OF_TURN if end_of_turn else "")
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(encoded["input_ids"])
    spans: list[tuple[int, int]] = [(int(a), int(b)) for a, b in encoded["offset_mapping"]]
    first = next((i for i, (_, end) in enumerate(spans) if end > len(prompt)), len(ids))
    if first == 0 or first == len(ids):
        raise ScoringError("the completion produced no tokens after the prompt")
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and len(ids) > limit:
        raise ScoringError(
            f"prompt and completion are {len(ids)} tokens, over the model's context of {limit}"
        )
    n = len(completion)
    offsets = [
        (min(max(a - len(prompt), 0), n), min(max(b - len(prompt), 0), n)) for a, b in spans[first:]
    ]
    return _Encoded(ids, first, offsets)


def score_completion(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict[str, str]],
    completion: str,
    *,
    end_of_turn: bool = True,
) -> Scores:
    """log p(token | everything before it) for every token of `completion` after the prompt."""
    enc = _encode(model, tokenizer, messages, completion, end_of_turn)
    device = next(model.parameters()).device
    with torch.inference_mode():
        logits = model(torch.tensor([enc.ids], device=device)).logits[0, enc.first - 1 : -1]
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        target = torch.tensor(enc.ids[enc.first :], device=device)
        picked = logprobs.gather(1, target[:, None])[:, 0].tolist()
    tokens = [str(tokenizer.decode([t])) for t in enc.ids[enc.first :]]
    return Scores(tokens=tokens, logprobs=[float(x) for x in picked], offsets=enc.offsets)


@torch.no_grad()
def score_completions(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    requests: Sequence[tuple[list[dict[str, str]], str, bool]],
    *,
    pad_id: int,
    batch_size: int = 32,
) -> list[tuple[list[float], list[tuple[int, int]]]]:
    """`score_completion` of many (messages, completion, end_of_turn), batched with right
    padding (positions unshifted): (logprobs, offsets) of each, in order."""
    encoded = [_encode(model, tokenizer, m, c, eot) for m, c, eot in requests]
    device = next(cast(torch.nn.Module, model).parameters()).device
    out: list[tuple[list[float], list[tuple[int, int]]]] = []
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start : start + batch_size]
        width = max(len(e.ids) for e in chunk)
        ids = torch.full((len(chunk), width), pad_id, device=device)
        attention = torch.zeros((len(chunk), width), dtype=torch.long, device=device)
        for row, e in enumerate(chunk):
            ids[row, : len(e.ids)] = torch.tensor(e.ids, device=device)
            attention[row, : len(e.ids)] = 1
        logits = cast(Any, model)(input_ids=ids, attention_mask=attention).logits
        for row, e in enumerate(chunk):
            rows = logits[row, e.first - 1 : len(e.ids) - 1].float().log_softmax(-1)
            target = ids[row, e.first : len(e.ids)]
            picked = rows.gather(1, target[:, None])[:, 0].tolist()
            out.append(([float(x) for x in picked], e.offsets))
    return out
