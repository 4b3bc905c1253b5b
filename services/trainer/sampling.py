"""The in-loop sample: a greedy answer to a held-out codec problem, judged canonically (codes
decoded with the run's codebook, `Trainer.codebook`, else the default codebook)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any, cast

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from codec.codebook import Codebook
from codec.domains import default_codebook, mixed_problems
from codec.evaluate import evaluate_output
from codec.problem import Problem


@dataclass(frozen=True)
class SampleResult:
    prompt: str
    golden: str
    answer: str  # the model's raw assistant text
    matches: bool
    parse_failed: bool
    canonical_answer: str | None  # the answer in canonical form when it parsed


def validation_problems(count: int, seed: int = 0) -> list[Problem]:
    """`count` held-out problems cycling over every domain and level: never trained on,
    since the codec's split is a hash of the problem (see codec.problem.split_of)."""
    return list(islice(mixed_problems(count, seed=seed, split="heldout"), count))


class Sampler:
    """Answers the validation prompts in turn, one per call, greedily and bounded."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        *,
        count: int,
        max_new_tokens: int,
        seed: int = 0,
        prompts: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.tokenizer = tokenizer
        # (question, golden) pairs to cycle through instead (the trainer's fixed sets), so
        # the sample asks what the run is scored on, not every domain's problems.
        self.prompts = list(prompts)
        # Drawn as they are first needed: held-out problems are a tenth of the draws, so the
        # whole set up front would cost seconds at every trainer start.
        self.count = count
        self.problems: list[Problem] = []
        self._source: Iterator[Problem] = mixed_problems(count, seed=seed, split="heldout")
        self.max_new_tokens = max_new_tokens
        self.next_index = 0
        end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.eos_id: int | None = end if isinstance(end, int) else tokenizer.eos_token_id

    def next_problem(self) -> Problem:
        """The validation prompts in a fixed order, cycling after `count`."""
        if len(self.problems) < self.count:
            fresh = next(self._source, None)
            if fresh is not None:
                self.problems.append(fresh)
                self.next_index += 1
                return fresh
        problem = self.problems[self.next_index % len(self.problems)]
        self.next_index += 1
        return problem

    @torch.no_grad()
    def sample(
        self, model: PreTrainedModel, autocast: Any = None, codebook: Codebook | None = None
    ) -> SampleResult:
        """Generate for the next prompt; the model is left in the mode it was found in.
        `codebook`: the run's (`Trainer.codebook`); None decodes with the default codebook."""
        if self.prompts:
            question, golden = self.prompts[self.next_index % len(self.prompts)]
            self.next_index += 1
        else:
            problem = self.next_problem()
            question, golden = problem.question, problem.golden_text
        messages = [{"role": "user", "content": question}]
        # Rendered as text, then tokenized: one return type whatever the transformers version.
        text = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
        encoded = self.tokenizer(str(text), add_special_tokens=False, return_tensors="pt")
        input_ids = cast(torch.Tensor, encoded["input_ids"]).to(model.device)
        module = cast(torch.nn.Module, model)
        was_training = module.training
        module.train(False)  # also switches activation checkpointing off, as generation needs
        try:
            with autocast if autocast is not None else contextlib.nullcontext():
                out = cast(Any, model).generate(
                    input_ids=input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    max_new_tokens=self.max_new_tokens,
                    # Greedy, whatever sampling defaults the model's generation config has.
                    do_sample=False,
                    temperature=None,
                    top_p=None,
                    top_k=None,
                    eos_token_id=self.eos_id,
                    pad_token_id=self.tokenizer.pad_token_id or self.eos_id,
                )
        finally:
            module.train(was_training)
        answer = str(self.tokenizer.decode(out[0, input_ids.shape[1] :], skip_special_tokens=True))
        verdict = evaluate_output(answer, golden, codebook=codebook or default_codebook())
        return SampleResult(
            prompt=question,
            golden=golden,
            answer=answer,
            matches=verdict.match,
            parse_failed=verdict.parse_failed,
            canonical_answer=verdict.predicted,
        )
