"""Score a model in this process on a fixed validation set (the trainer's entry to the scorer)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from codec.codebook import Codebook
from services.validation.calibration import expected_calibration_error as expected_calibration_error
from services.validation.inprocess import InProcessBackend
from services.validation.scorer import ItemAnswer as ItemAnswer
from services.validation.scorer import ScoreItem, SetScore, score_set
from services.validation.sets import ValidationItem

FixedEvalScore = SetScore  # the trainer's name for one set's figures


def score_items(items: Sequence[ValidationItem]) -> list[ScoreItem]:
    """Stored validation items as the scorer takes them (prompt = the turns before the last)."""
    return [
        ScoreItem(
            id=item.id,
            prompt=[dict(m) for m in item.messages[:-1]],
            completion=item.messages[-1]["content"],
            golden=item.golden,
            domain=item.domain,
            difficulty=item.difficulty,
        )
        for item in items
    ]


def score(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence[ValidationItem],
    *,
    max_new_tokens: int = 128,
    codebook: Codebook | None = None,
    model_id: str = "",
) -> SetScore:
    """Everything about one set on one model (`services.validation.scorer`'s rules, with
    `max_new_tokens` the budget's ceiling); the model is left in the mode it was found in."""
    module = cast(torch.nn.Module, model)
    was_training = module.training
    module.train(False)
    try:
        backend = InProcessBackend(model, tokenizer, model_id=model_id)
        return score_set(backend, score_items(items), ceiling=max_new_tokens, codebook=codebook)
    finally:
        module.train(was_training)
