"""Render a conversation through its chat template, masking the loss to the assistant text."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from services.trainer.errors import TemplateError, TrainerError

if TYPE_CHECKING:
    # Only for types: tokenizing worker processes import transformers without torch.
    from transformers import PreTrainedTokenizerBase

Message = dict[str, str]
Method = Literal["generation", "spans"]

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
ASSISTANT_HEADER = IM_START + "assistant"
GENERATION_TAG = re.compile(r"{%-?\s*generation\s*-?%}")

# A conversation shaped like the users' data: a system turn and two exchanges, the earlier one
# with reasoning, so a template that strips earlier reasoning (stock Qwen3 does, for text in
# <think> tags) or gives no mask is caught before the first example.
PROBE: list[Message] = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "🤔🤔🤔🤔\n(add 2 2) gives 4\n🛑🛑🛑\n4"},
    {"role": "user", "content": "And 3 + 5?"},
    {"role": "assistant", "content": "🤔🤔🤔🤔\n(add 3 5) gives 8\n🛑🛑\n8"},
]


class ExampleRejected(TrainerError):
    """One conversation cannot be encoded faithfully; the message is the reject reason."""

    def __init__(self, reason: str, *, kind: str = "template") -> None:
        super().__init__(reason)
        self.kind = kind  # template (rendering), special (control-token text), length


@dataclass(frozen=True, slots=True)
class Encoded:
    """Token ids of one rendered conversation and which of them the loss is taken on."""

    input_ids: np.ndarray  # int32, shape (length,)
    assistant_mask: np.ndarray  # bool, same shape: assistant content and its end-of-turn token

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def loss_tokens(self) -> int:
        return int(self.assistant_mask.sum())


def mask_runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """The [start, end) index ranges where `mask` is true, in order."""
    padded = np.concatenate(([False], mask.astype(bool), [False]))
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return [(int(a), int(b)) for a, b in zip(edges[0::2], edges[1::2], strict=True)]


class ChatTokenizer:
    """A tokenizer plus the way its template marks assistant tokens, checked on a probe.

    `generation`: the template wraps assistant content in {% generation %}, and
    `return_assistant_tokens_mask` gives the mask. `spans`: a ChatML template without those
    markers (stock Qwen3's): the mask is the token span of each assistant content, found in the
    rendered text after its `<|im_start|>assistant` header, plus the `<|im_end|>` after it.
    Either way every encoding is checked: each masked run must decode to its turn's content
    followed by the end-of-turn token, so a template that drops or rewrites content is refused.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, *, end_of_turn: str = IM_END) -> None:
        self.tokenizer = tokenizer
        self.end_of_turn = end_of_turn
        template = tokenizer.chat_template
        if not isinstance(template, str) or not template:
            raise TemplateError(
                f"tokenizer {tokenizer.name_or_path!r} has no chat template; training renders "
                "conversations through one. Use a chat model's tokenizer (e.g. Qwen3's)."
            )
        if tokenizer.convert_tokens_to_ids(end_of_turn) in (None, tokenizer.unk_token_id):
            raise TemplateError(
                f"tokenizer {tokenizer.name_or_path!r} has no {end_of_turn!r} token; the "
                "assistant mask ends each turn at it"
            )
        self.method: Method = "generation" if GENERATION_TAG.search(template) else "spans"
        self._specials = sorted(
            {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
        )
        try:
            self.encode(PROBE)
        except ExampleRejected as err:
            raise TemplateError(
                f"the chat template of {tokenizer.name_or_path!r} ({self.method} mask) fails "
                f"on a two-exchange conversation with reasoning: {err}. The loss would be taken "
                "on the wrong tokens; use a template that renders every assistant turn verbatim "
                "(e.g. the embedded model's, services.model.chat_template)."
            ) from None

    def __getstate__(self) -> dict[str, Any]:
        # Worker processes rebuild the probe-checked object from the tokenizer alone.
        return {"tokenizer": self.tokenizer, "end_of_turn": self.end_of_turn}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["tokenizer"], end_of_turn=state["end_of_turn"])  # type: ignore[misc]

    def encode(self, messages: Sequence[Message]) -> Encoded:
        """Token ids and assistant mask of one conversation (no generation prompt).

        Raises ExampleRejected when the content holds special-token text or the template does
        not render an assistant turn verbatim.
        """
        for index, message in enumerate(messages):
            content = message["content"]
            for special in self._specials:
                if special in content:
                    raise ExampleRejected(
                        f"messages[{index}] ({message['role']}) contains the text {special!r}, "
                        "which the tokenizer reads as a control token; remove it",
                        kind="special",
                    )
        if self.method == "generation":
            out = self.tokenizer.apply_chat_template(
                list(messages),
                tokenize=True,
                return_dict=True,
                return_assistant_tokens_mask=True,
            )
            assert isinstance(out, Mapping)  # return_dict=True gives a BatchEncoding
            ids = np.asarray(out["input_ids"], dtype=np.int32)
            mask = np.asarray(out["assistant_masks"], dtype=bool)
        else:
            ids, mask = self._encode_spans(messages)
        self._verify(messages, ids, mask)
        return Encoded(ids, mask)

    def _encode_spans(self, messages: Sequence[Message]) -> tuple[np.ndarray, np.ndarray]:
        text = self.tokenizer.apply_chat_template(list(messages), tokenize=False)
        assert isinstance(text, str)
        spans = []
        pos = 0
        for turn, message in enumerate(m for m in messages if m["role"] == "assistant"):
            header = text.find(ASSISTANT_HEADER, pos)
            if header < 0:
                raise ExampleRejected(
                    f"assistant turn {turn + 1}: no {ASSISTANT_HEADER!r} header in the "
                    "rendered text; only ChatML templates work without {% generation %} markers"
                )
            body = header + len(ASSISTANT_HEADER)
            limit = text.find(IM_START, body)
            limit = len(text) if limit < 0 else limit
            start = text.find(message["content"], body, limit)
            end = start + len(message["content"])
            if start < 0 or not text.startswith(self.end_of_turn, end):
                raise ExampleRejected(
                    f"assistant turn {turn + 1}: its content is not rendered verbatim before "
                    f"{self.end_of_turn!r}; the chat template changed or dropped it"
                )
            spans.append((start, end + len(self.end_of_turn)))
            pos = end
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = np.asarray(enc["input_ids"], dtype=np.int32)
        offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
        mask = np.zeros(len(ids), dtype=bool)
        for start, end in spans:
            # A token straddling the content's first character (a newline merged with the
            # header's) counts as the content's, as return_assistant_tokens_mask does.
            mask |= (offsets[:, 0] < end) & (offsets[:, 1] > start)
        return ids, mask

    def _verify(self, messages: Sequence[Message], ids: np.ndarray, mask: np.ndarray) -> None:
        contents = [m["content"] for m in messages if m["role"] == "assistant"]
        runs = mask_runs(mask)
        if len(runs) != len(contents):
            raise ExampleRejected(
                f"the mask has {len(runs)} assistant spans for {len(contents)} assistant turns; "
                "the chat template dropped or merged turns"
            )
        for turn, ((start, end), content) in enumerate(zip(runs, contents, strict=True)):
            decoded = self.tokenizer.decode(
                ids[start:end].tolist(),
                skip_special_tokens=False,
                clean_up_tokenization_spaces=False,
            )
            expected = content + self.end_of_turn
            # The one allowed difference: a newline of the header merged into the first token.
            if decoded != expected and not (
                decoded.endswith(expected) and not decoded[: -len(expected)].strip()
            ):
                raise ExampleRejected(
                    f"assistant turn {turn + 1}: the loss tokens decode to "
                    f"{decoded[:80]!r}, not to its content {expected[:80]!r}; the chat template "
                    "changed or dropped it"
                )

    def encode_within(
        self, messages: Sequence[Message], max_length: int, *, split: bool
    ) -> list[Encoded]:
        """One encoding if it fits `max_length`; else, with `split`, several pieces cut at
        exchange boundaries, each fitting and each ending with an assistant turn.

        A piece repeats the system message (if any) but not the exchanges before it: the model
        trains on later turns without their earlier context, which beats truncating them. A
        single exchange (system + user + assistant) over `max_length` rejects the whole example.
        """
        whole = self.encode(messages)
        if whole.length <= max_length:
            return [whole]
        if not split:
            raise ExampleRejected(
                f"{whole.length} tokens, over max_length {max_length}; shorten it, or set "
                "R3_OVERLONG=split to cut multi-turn conversations at turn boundaries",
                kind="length",
            )
        prefix = list(messages[:1]) if messages[0]["role"] == "system" else []
        exchanges: list[list[Message]] = []
        current: list[Message] = []
        for message in messages[len(prefix) :]:
            current.append(message)
            if message["role"] == "assistant":
                exchanges.append(current)
                current = []
        pieces: list[Encoded] = []
        taken: list[Message] = []
        taken_enc: Encoded | None = None
        for number, exchange in enumerate(exchanges, start=1):
            if taken:
                grown = self.encode(prefix + taken + exchange)
                if grown.length <= max_length:
                    taken, taken_enc = taken + exchange, grown
                    continue
                assert taken_enc is not None
                pieces.append(taken_enc)
            alone = self.encode(prefix + exchange)
            if alone.length > max_length:
                raise ExampleRejected(
                    f"{whole.length} tokens, over max_length {max_length}, and exchange "
                    f"{number} alone is {alone.length} tokens; split mode cuts only between "
                    "exchanges, never inside a turn: shorten that turn",
                    kind="length",
                )
            taken, taken_enc = list(exchange), alone
        assert taken_enc is not None
        pieces.append(taken_enc)
        return pieces
