"""Teacher-forced scoring on the serving model (`POST /v1/score`): token logprobs and CE."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from fastapi import APIRouter, Depends, HTTPException, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from services.node.auth import require_reader

END_OF_TURN = "<|im_end|>"
MAX_MESSAGES = 64
MAX_CHARS = 200_000  # per message and for the completion: a body limit, not a model limit


class ScoreMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=MAX_CHARS)


class ScoreRequest(BaseModel):
    """The conversation before the completion, and the completion to score token by token."""

    model_config = ConfigDict(extra="forbid")

    messages: list[ScoreMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    completion: str = Field(min_length=1, max_length=MAX_CHARS)
    end_of_turn: bool = Field(
        True,
        description="Score the end-of-turn token after the completion too, as the trainer's "
        "loss does (so CE here and the training loss measure the same tokens).",
    )


class ScoreResponse(BaseModel):
    model: str
    tokens: list[str]
    logprobs: list[float]
    offsets: list[tuple[int, int]]  # each token's characters in `completion`, [start, end)
    ce: float  # mean negative log-likelihood per scored token, in nats


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


def score_completion(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict[str, str]],
    completion: str,
    *,
    end_of_turn: bool = True,
) -> Scores:
    """log p(token | everything before it) for every token of `completion` after the prompt.

    The whole text (prompt, completion, end-of-turn) is tokenized at once, as training
    tokenizes a conversation, so the completion's tokens are the ones the model learned.
    """
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
    device = next(model.parameters()).device
    with torch.inference_mode():
        logits = model(torch.tensor([ids], device=device)).logits[0, first - 1 : -1]
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        target = torch.tensor(ids[first:], device=device)
        picked = logprobs.gather(1, target[:, None])[:, 0].tolist()
    n = len(completion)
    offsets = [
        (min(max(a - len(prompt), 0), n), min(max(b - len(prompt), 0), n)) for a, b in spans[first:]
    ]
    tokens = [tokenizer.decode([t]) for t in ids[first:]]
    return Scores(tokens=tokens, logprobs=[float(x) for x in picked], offsets=offsets)


# Open like the completions, or token-protected with them (R3_NODE_PROTECT_READS).
router = APIRouter(dependencies=[Depends(require_reader)])


@router.post("/v1/score", response_model=ScoreResponse)
def score_route(body: ScoreRequest, request: Request, response: Response) -> ScoreResponse:
    """Score on the model serving now; the response names it, as completions do."""
    node: Any = request.app.state.node
    # A lease keeps these weights alive through a swap until the forward pass is done.
    with node.engine.lease() as loaded:
        try:
            scores = score_completion(
                loaded.model,
                loaded.tokenizer,
                [m.model_dump() for m in body.messages],
                body.completion,
                end_of_turn=body.end_of_turn,
            )
        except ScoringError as err:
            raise HTTPException(status_code=400, detail=str(err)) from None
    response.headers["X-Regime3-Model"] = loaded.version  # as every completion says it
    return ScoreResponse(
        model=loaded.version,
        tokens=scores.tokens,
        logprobs=scores.logprobs,
        offsets=scores.offsets,
        ce=scores.ce,
    )
