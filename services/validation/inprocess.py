"""The scorer's in-process backend: the trainer's own model and tokenizer, no HTTP.

Greedy answers batched by prompt length (no padding, so no position shift), teacher-forced
scores batched with right padding, all under no-grad with the model in eval mode (the mode it
was found in is restored by `scoring.score`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any, cast

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from services.validation.scorer import Generated, Messages, ScoreRequest, TokenScores
from services.validation.teacher_forcing import END_OF_TURN, score_completions


class InProcessBackend:
    """`ScoringBackend` over a model in this process; `model_id` names it in the results."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        model_id: str = "",
        name: str = "trainer",
        batch_size: int = 32,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.name = name
        self.batch_size = batch_size
        end = tokenizer.convert_tokens_to_ids(END_OF_TURN)
        self.eos = end if isinstance(end, int) else tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos

    def _prompt_ids(self, messages: Messages) -> list[int]:
        text = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
        return list(self.tokenizer(str(text), add_special_tokens=False)["input_ids"])

    @torch.no_grad()
    def generate(self, prompts: Sequence[Messages], max_tokens: int) -> list[Generated]:
        special = {int(t) for t in self.tokenizer.all_special_ids}
        encoded = [self._prompt_ids(p) for p in prompts]
        by_length: dict[int, list[int]] = defaultdict(list)
        for index, ids in enumerate(encoded):
            by_length[len(ids)].append(index)
        device = next(cast(torch.nn.Module, self.model).parameters()).device
        texts: dict[int, str] = {}
        for length, indices in sorted(by_length.items()):
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                input_ids = torch.tensor([encoded[i] for i in chunk], device=device)
                out = cast(Any, self.model).generate(
                    input_ids=input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    max_new_tokens=max_tokens,
                    do_sample=False,
                    temperature=None,
                    top_p=None,
                    top_k=None,
                    eos_token_id=self.eos,
                    pad_token_id=self.pad,
                )
                for row, index in enumerate(chunk):
                    ids = out[row, length:].tolist()
                    cut = next(
                        (k for k, t in enumerate(ids) if t in (self.eos, self.pad)), len(ids)
                    )
                    kept = [t for t in ids[:cut] if t not in special]
                    texts[index] = str(self.tokenizer.decode(kept, skip_special_tokens=True))
        return [Generated(texts[i], self.model_id) for i in range(len(prompts))]

    def score(self, requests: Sequence[ScoreRequest]) -> list[TokenScores]:
        scored = score_completions(
            self.model,
            self.tokenizer,
            [(r.prompt, r.completion, r.end_of_turn) for r in requests],
            pad_id=int(self.pad),
            batch_size=self.batch_size,
        )
        return [TokenScores(self.model_id, lps, offsets) for lps, offsets in scored]
