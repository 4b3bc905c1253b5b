"""Teacher-forced scoring on the serving model (`POST /v1/score`): token logprobs and CE."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from services.node.api.auth import require_reader

# One tokenization rule for /v1/score and the trainer's in-process scorer.
from services.validation.teacher_forcing import END_OF_TURN as END_OF_TURN
from services.validation.teacher_forcing import ScoringError, score_completion

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
