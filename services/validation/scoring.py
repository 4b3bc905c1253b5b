"""Score a model on a fixed validation set: greedy exact match, teacher-forced CE, ECE, heatmap."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from codec.codebook import Codebook
from codec.evaluate import EvalResult, Scoreboard, evaluate_output
from services.validation.calibration import expected_calibration_error, text_confidence
from services.validation.sets import ValidationItem


@dataclass(frozen=True)
class ItemAnswer:
    """The model's answer to one item and how it was judged."""

    id: str
    domain: str
    difficulty: int
    answer: str  # the raw generated assistant text
    match: bool
    parse_failed: bool
    predicted: str | None  # the answer in canonical form when it parsed
    # Probability the model gave its answer's own tokens (services.validation.calibration);
    # None when there is no answer after a 🛑 (left out of ECE, as on the node).
    confidence: float | None


@dataclass
class FixedEvalScore:
    """One evaluation of one set: the figures of B2's `fixed_eval_*` fields."""

    total: int
    correct: int
    parse_failures: int
    em: float
    ce: float | None
    ece: float | None
    heatmap: dict[str, Any]
    answers: list[ItemAnswer] = field(default_factory=list)

    def em_by_pattern(self) -> dict[str, dict[str, float]]:
        """{domain: {difficulty: EM}} as EvalResult.pattern_heatmap carries it."""
        out: dict[str, dict[str, float]] = defaultdict(dict)
        for cell in self.heatmap["cells"]:
            out[cell["domain"]][str(cell["difficulty"])] = cell["accuracy"]
        return dict(out)


def _prompt_ids(tokenizer: PreTrainedTokenizerBase, question: str) -> list[int]:
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
    )
    return list(tokenizer(str(text), add_special_tokens=False)["input_ids"])


def _ece(answers: Sequence[ItemAnswer]) -> float | None:
    """ECE over the answers that have one (a confidence); None when none has."""
    scored = [a for a in answers if a.confidence is not None]
    return expected_calibration_error(
        [a.confidence for a in scored if a.confidence is not None], [a.match for a in scored]
    )


@torch.no_grad()
def generate_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence[ValidationItem],
    *,
    max_new_tokens: int,
    batch_size: int = 32,
    codebook: Codebook | None = None,
) -> list[ItemAnswer]:
    """Greedy answers, batched by prompt length (no padding, so no position shift)."""
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    eos = end if isinstance(end, int) else tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    special = {int(t) for t in tokenizer.all_special_ids}
    prompts = [_prompt_ids(tokenizer, item.question) for item in items]
    by_length: dict[int, list[int]] = defaultdict(list)
    for index, ids in enumerate(prompts):
        by_length[len(ids)].append(index)
    device = next(cast(torch.nn.Module, model).parameters()).device
    results: dict[int, ItemAnswer] = {}
    for length, indices in sorted(by_length.items()):
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            input_ids = torch.tensor([prompts[i] for i in chunk], device=device)
            out = cast(Any, model).generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                eos_token_id=eos,
                pad_token_id=pad,
                output_scores=True,
                return_dict_in_generate=True,
            )
            new = out.sequences[:, length:]
            logps = torch.stack(out.scores, dim=1).float().log_softmax(-1)
            chosen = logps.gather(-1, new.unsqueeze(-1)).squeeze(-1)
            for row, index in enumerate(chunk):
                ids = new[row].tolist()
                cut = next((k for k, t in enumerate(ids) if t in (eos, pad)), len(ids))
                kept = [k for k, t in enumerate(ids[:cut]) if t not in special]
                kept_ids = [ids[k] for k in kept]
                text = tokenizer.decode(kept_ids, skip_special_tokens=True)
                kept_logps = chosen[row, :cut].tolist()
                item = items[index]
                verdict: EvalResult = evaluate_output(text, item.golden, codebook=codebook)
                results[index] = ItemAnswer(
                    id=item.id,
                    domain=item.domain,
                    difficulty=item.difficulty,
                    answer=text,
                    match=verdict.match,
                    parse_failed=verdict.parse_failed,
                    predicted=verdict.predicted,
                    confidence=text_confidence(
                        lambda part: tokenizer.decode(part, skip_special_tokens=True),
                        kept_ids,
                        [kept_logps[k] for k in kept],
                    ),
                )
    return [results[i] for i in range(len(items))]


@torch.no_grad()
def reference_ce(
    model: PreTrainedModel,
    encoded: Sequence[tuple[list[int], list[bool]]],
    *,
    pad_id: int,
    batch_size: int = 32,
) -> float:
    """Mean cross-entropy per assistant token of the reference answers (teacher-forced)."""
    device = next(cast(torch.nn.Module, model).parameters()).device
    loss_sum, tokens = 0.0, 0
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start : start + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), width), pad_id, device=device)
        labels = torch.full((len(chunk), width), -100, device=device)
        attention = torch.zeros((len(chunk), width), dtype=torch.long, device=device)
        for row, (row_ids, mask) in enumerate(chunk):
            n = len(row_ids)
            ids[row, :n] = torch.tensor(row_ids, device=device)
            attention[row, :n] = 1
            keep = torch.tensor(mask, dtype=torch.bool, device=device)
            labels[row, :n] = torch.where(
                keep, ids[row, :n], torch.full_like(keep, -100, dtype=torch.long)
            )
        logits = cast(Any, model)(input_ids=ids, attention_mask=attention).logits.float()
        target = labels[:, 1:]
        losses = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]),
            target.reshape(-1),
            ignore_index=-100,
            reduction="sum",
        )
        loss_sum += float(losses)
        tokens += int((target != -100).sum())
    return loss_sum / max(1, tokens)


def score(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence[ValidationItem],
    *,
    encoded: Sequence[tuple[list[int], list[bool]]] | None = None,
    max_new_tokens: int = 128,
    codebook: Codebook | None = None,
) -> FixedEvalScore:
    """Everything about one set on one model; the model is left in the mode it was found in.

    `encoded`: each item's reference conversation as (token ids, assistant mask); without it
    no CE is computed.
    """
    module = cast(torch.nn.Module, model)
    was_training = module.training
    module.train(False)
    try:
        answers = generate_answers(
            model, tokenizer, items, max_new_tokens=max_new_tokens, codebook=codebook
        )
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        ce = reference_ce(model, encoded, pad_id=int(pad)) if encoded else None
    finally:
        module.train(was_training)
    board = Scoreboard()
    for item, answer in zip(items, answers, strict=True):
        board.add(
            item.domain,
            item.difficulty,
            EvalResult(answer.match, answer.parse_failed, answer.predicted, item.golden, ""),
        )
    correct = sum(a.match for a in answers)
    return FixedEvalScore(
        total=len(answers),
        correct=correct,
        parse_failures=sum(a.parse_failed for a in answers),
        em=correct / len(answers) if answers else 0.0,
        ce=ce,
        ece=_ece(answers),
        heatmap=board.heatmap(),
        answers=answers,
    )
