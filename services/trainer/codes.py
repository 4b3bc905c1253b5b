"""Code tokens: a run's codebook, taken at its first file with codes and kept ever after.

A training file whose assistant text holds `<E###>` codes (encoded, assorted or mixed data)
needs those codes as single tokens, or each costs about six subwords and encoded reasoning is
longer than canonical. Before such a file's first step the run takes a codebook (its own, once
it has one; else R3_CODEBOOK, else the built-in one), checks the file's `meta.codebook` stamps
name that codebook, and adds its codes to the tokenizer and model (`codec.hf_extension`: each
new row the mean of its fragment's subword rows). One codebook per run: the tokens a run
learned mean one set of fragments, so a file encoded with another codebook fails its job.

The embedding may grow (the embedded model has 116 spare rows; Qwen3-0.6B has 267, enough for
256 codes without a resize). When a matrix grows the optimizer follows it: its AdamW moments
are carried over for the old rows and are zero for the new ones.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from codec.codebook import Codebook
from codec.domains import default_codebook
from codec.errors import CodebookError
from codec.hf_extension import add_codes
from services.trainer.config import TrainerSettings
from services.trainer.errors import CodebookMismatch
from services.trainer.validate import ValidationReport

log = logging.getLogger(__name__)

RECODE_HINT = (
    "re-encode the file with the run's codebook (`regime3 codec recode FILE --codebook "
    "<the run's codebook.json, in any of its checkpoints> --out NEW`) and queue that, or train "
    "this file in a new run (an empty checkpoint directory, R3_CODEBOOK naming its codebook)"
)


def configured_codebook(settings: TrainerSettings) -> Codebook:
    """R3_CODEBOOK's codebook, or the built-in one when it is unset."""
    if settings.codebook is None:
        return default_codebook()
    try:
        return Codebook.load(settings.codebook)
    except CodebookError as err:
        raise CodebookMismatch(
            f"R3_CODEBOOK={settings.codebook}: {err}. Point R3_CODEBOOK at a codebook JSON "
            "(`regime3 codec build --out FILE`) or unset it for the built-in codebook."
        ) from None


def codebook_for_file(
    report: ValidationReport,
    run: Codebook | None,
    settings: TrainerSettings,
    name: str,
    *,
    run_source: str = "the run's checkpoints",
) -> Codebook | None:
    """The codebook a file's codes are read with (None: the file holds no codes).

    Raises CodebookMismatch naming both versions when the file's meta.codebook stamps name
    another codebook than the run's (or than R3_CODEBOOK's, for a run with none yet), or two.
    Lines with codes but no stamp are taken to use that codebook.
    """
    if report.coded_lines == 0:
        return None
    stamps = sorted(report.codebooks)
    if len(stamps) > 1:
        counts = ", ".join(f"{v} on {report.codebooks[v]} lines" for v in stamps)
        raise CodebookMismatch(
            f"{name}: its lines were encoded with {len(stamps)} codebooks ({counts}); a file and "
            f"a run use one codebook. No step was taken: {RECODE_HINT}."
        )
    chosen = run if run is not None else configured_codebook(settings)
    if stamps and stamps[0] != chosen.version:
        if run is not None:
            whose = f"this run's code tokens are codebook {chosen.version} (from {run_source})"
        else:
            where = f"R3_CODEBOOK={settings.codebook}" if settings.codebook else "built-in"
            whose = f"this run would take codebook {chosen.version} ({where})"
        raise CodebookMismatch(
            f"{name}: its lines were encoded with codebook {stamps[0]} (meta.codebook), but "
            f"{whose}; the same codes would mean other fragments. No step was taken: "
            f"{RECODE_HINT}."
        )
    return chosen


@dataclass(frozen=True)
class AddedCodes:
    ids: list[int]  # the codes' token ids, in code order
    fresh: list[int]  # the ids whose rows were (re)initialized now
    rows_before: int
    rows_after: int
    # Names of the parameters a resize changed: new objects, or (transformers resizes in
    # place) the same object holding a bigger matrix. The step, DDP and monitor must follow.
    changed: list[str]

    @property
    def resized(self) -> bool:
        return self.rows_after != self.rows_before


def _embedding_rows(model: PreTrainedModel) -> int:
    weight = model.get_input_embeddings().weight
    assert isinstance(weight, torch.Tensor)
    return int(weight.shape[0])


def add_code_tokens(
    tokenizer: PreTrainedTokenizerBase,
    model: PreTrainedModel,
    optimizer: torch.optim.Optimizer | None,
    codebook: Codebook,
) -> AddedCodes:
    """Add `codebook`'s codes to `tokenizer` and `model` and make `optimizer` follow.

    A resized embedding (or lm_head) is a new Parameter, or the old one holding a bigger
    matrix (transformers swaps `.data` in place): either way the optimizer's param groups
    point at it after, and its moments keep the old rows' values. Rows a code takes now
    (grown rows and padding rows alike) start with zero moments, like a parameter never
    stepped.
    """
    codes = codebook.codes()
    before = dict(model.named_parameters(remove_duplicate=False))
    shapes = {name: tuple(param.shape) for name, param in before.items()}
    rows_before = _embedding_rows(model)
    vocab = tokenizer.get_vocab()
    new_codes = {code for code in codes if code not in vocab}
    ids = add_codes(tokenizer, model, codes)
    rows_after = _embedding_rows(model)
    fresh = [i for code, i in zip(codes, ids, strict=True) if code in new_codes or i >= rows_before]
    after = dict(model.named_parameters(remove_duplicate=False))
    changed = [
        name
        for name, param in after.items()
        if before.get(name) is not param or shapes.get(name) != tuple(param.shape)
    ]
    if optimizer is not None:
        pairs = {id(before[n]): (before[n], after[n], shapes[n]) for n in changed if n in before}
        for old, new, old_shape in pairs.values():
            follow_parameter(optimizer, old, new, old_shape)
        vocab_matrices = [p for p in after.values() if _is_vocab_matrix(p, rows_after)]
        zero_rows(optimizer, vocab_matrices, fresh)
    log.info(
        "codebook %s: %d codes as tokens (%d new rows), embedding %d -> %d rows",
        codebook.version,
        len(ids),
        len(fresh),
        rows_before,
        rows_after,
    )
    return AddedCodes(ids, fresh, rows_before, rows_after, changed)


def _is_vocab_matrix(param: torch.Tensor, rows: int) -> bool:
    return param.dim() == 2 and int(param.shape[0]) == rows


@torch.no_grad()
def follow_parameter(
    optimizer: torch.optim.Optimizer,
    old: torch.Tensor,
    new: torch.Tensor,
    old_shape: tuple[int, ...],
) -> None:
    """Point `optimizer` at `new` in place of `old` (they may be one object whose matrix
    grew), carrying its state over.

    State tensors of `old_shape` (the AdamW moments) become tensors shaped like `new` with the
    old values in the rows both have and zeros in the others; scalars (the step) are kept.
    The optimizer object stays the same, so schedulers and scalers holding it are unaffected.
    """
    for group in optimizer.param_groups:
        group["params"] = [new if p is old else p for p in group["params"]]
    state = optimizer.state.pop(old, None)
    if not state:
        return
    carried = {}
    for key, value in state.items():
        if torch.is_tensor(value) and tuple(value.shape) == old_shape and value.dim() >= 1:
            grown = torch.zeros(new.shape, dtype=value.dtype, device=new.device)
            rows = min(old_shape[0], int(new.shape[0]))
            grown[:rows] = value[:rows].to(new.device)
            value = grown
        carried[key] = value
    optimizer.state[new] = carried


@torch.no_grad()
def zero_rows(
    optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor], rows: Sequence[int]
) -> None:
    """Zero the moments of `rows` of each of `params` (rows a code took over)."""
    if not rows:
        return
    for param in params:
        state = optimizer.state.get(param)
        if not state:
            continue
        for value in state.values():
            if torch.is_tensor(value) and value.shape == param.shape:
                value[torch.tensor(list(rows), device=value.device)] = 0
