"""The `regime3.decode` option of chat completions: a reply's reasoning and answer, decoded.

A model trained in the encoded (or assorted) mode reasons in `<E###>` codes; a client asking
for `"regime3": {"decode": true}` gets, beside the raw text, the reasoning expanded to
canonical S-expressions with the answering model's codebook, and the answer in canonical
form, both by the codec's own rules (the ones evaluation uses). What cannot be decoded is
named in `decode_error` instead of failing the request: the raw text is still the answer.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from codec.codebook import Codebook
from codec.errors import CodecError
from codec.evaluate import parse_answer, split_output
from codec.problem import STOP, THINK
from codec.sexpr import read_all, to_text
from services.node.codebooks import decoding_codebook


class Regime3Options(BaseModel):
    """regime3's own request options (the `regime3` extra body field)."""

    model_config = ConfigDict(extra="forbid")

    decode: StrictBool = Field(
        False,
        description="Add the reasoning decoded to canonical S-expressions (`canonical`), the "
        "answer in canonical form (`answer`), the codebook used (`codebook`) and what could "
        "not be decoded (`decode_error`) to the message (streaming: to the last chunk's delta).",
    )


def decode_reply(text: str, codebook: Codebook | None) -> dict[str, Any]:
    """The decoded fields of a reply written by a model carrying `codebook` (None: default).

    `canonical` and `answer` are None where they could not be decoded, and `decode_error`
    says why (None when both decoded). `codebook` is the version of the model's own
    codebook, None when the codec's default one was used (as `eval.result` names it).
    """
    used = decoding_codebook(codebook)
    fields: dict[str, Any] = {
        "canonical": None,
        "answer": None,
        "codebook": codebook.version if codebook is not None else None,
        "decode_error": None,
    }
    parts = split_output(text)
    if parts is None:
        fields["decode_error"] = (
            f"no {STOP} marker closes the reasoning, so reasoning and answer cannot be told "
            f"apart (expected {THINK} reasoning {STOP} answer; a larger max_tokens may help)"
        )
        return fields
    reasoning, answer = parts
    errors: list[str] = []
    if not reasoning:
        errors.append(f"reasoning: nothing between the {THINK} and {STOP} markers")
    elif "<E" not in reasoning and not reasoning.startswith("("):
        errors.append(
            "reasoning: written in English, not canonical or encoded; there is nothing to decode"
        )
    else:
        try:
            # Codes expand to canonical text; a literal canonical step (canonical or assorted
            # reasoning) passes through. Reading it back proves it is well formed.
            decoded = used.decode(reasoning)
            read_all(decoded)
            fields["canonical"] = decoded
        except CodecError as exc:
            errors.append(f"reasoning: {exc}")
    if not answer:
        errors.append(f"answer: nothing after the {STOP} markers")
    else:
        try:
            fields["answer"] = to_text(parse_answer(answer, used))
        except CodecError as exc:
            errors.append(f"answer: {exc}")
    if errors:
        fields["decode_error"] = "; ".join(errors)
    return fields
