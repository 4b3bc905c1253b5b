"""The loss mask covers exactly the assistant content, with embedded and stock Qwen3 templates."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from transformers import PreTrainedTokenizerBase

from services.model.chat_template import QWEN3_STOCK_TEMPLATE
from services.trainer.errors import TemplateError
from services.trainer.tokenize import ChatTokenizer, ExampleRejected, mask_runs
from tests.rig.trainer import think

# Qwen3's chat template as shipped in its tokenizer_config.json: no {% generation %} markers,
# an empty <think></think> before the final answer, and reasoning in <think> tags stripped
# from assistant turns before the last user query.

# An earlier turn's reasoning (and a repeated stop marker count) must survive; the user
# repeats the answer text, so a naive search would find it in the wrong message.
MULTI_TURN = [
    {"role": "system", "content": "You reason, then answer."},
    {"role": "user", "content": "What is 6 * 7? Say 42 if unsure."},
    {"role": "assistant", "content": think("(mul 6 7) gives 42", "42", stops=2)},
    {"role": "user", "content": "Now halve it."},
    {"role": "assistant", "content": think("(div 42 2) gives 21", "21", stops=4)},
    {"role": "user", "content": "And add one?"},
    {"role": "assistant", "content": think("(add 21 1) gives 22", "22")},
]


def masked_texts(chat: ChatTokenizer, messages: list[dict[str, str]]) -> list[str]:
    encoded = chat.encode(messages)
    ids = encoded.input_ids
    return [
        chat.tokenizer.decode(ids[a:b].tolist(), skip_special_tokens=False)
        for a, b in mask_runs(encoded.assistant_mask)
    ]


def with_template(tokenizer: PreTrainedTokenizerBase, template: str) -> PreTrainedTokenizerBase:
    clone = pickle.loads(pickle.dumps(tokenizer))
    clone.chat_template = template
    return clone


def test_embedded_template_masks_exactly_the_assistant_contents(chat: ChatTokenizer) -> None:
    assert chat.method == "generation"
    expected = [m["content"] + "<|im_end|>" for m in MULTI_TURN if m["role"] == "assistant"]
    assert masked_texts(chat, MULTI_TURN) == expected
    # The thinking markers are inside the mask (the model learns to emit them) ...
    assert all(text.startswith("🤔🤔🤔🤔") for text in masked_texts(chat, MULTI_TURN))
    # ... and nothing of the prompt side is: every unmasked token decodes to prompt text.
    encoded = chat.encode(MULTI_TURN)
    unmasked = chat.tokenizer.decode(encoded.input_ids[~encoded.assistant_mask].tolist())
    assert "gives" not in unmasked and "Now halve it." in unmasked
    assert encoded.loss_tokens == int(encoded.assistant_mask.sum()) > 0


def test_stock_qwen3_template_falls_back_to_spans(tokenizer: PreTrainedTokenizerBase) -> None:
    chat = ChatTokenizer(with_template(tokenizer, QWEN3_STOCK_TEMPLATE))
    assert chat.method == "spans"
    expected = [m["content"] + "<|im_end|>" for m in MULTI_TURN if m["role"] == "assistant"]
    assert masked_texts(chat, MULTI_TURN) == expected
    # Stock Qwen3 adds an empty think block before the last answer: prompt side, not loss.
    text = chat.tokenizer.decode(chat.encode(MULTI_TURN).input_ids.tolist())
    assert "<think>\n\n</think>\n\n🤔" in text


def test_spans_mask_equals_generation_mask_on_the_same_rendering(
    chat: ChatTokenizer, tokenizer: PreTrainedTokenizerBase, codec_rows: list[dict]
) -> None:
    # The embedded template without its {% generation %} tags renders the same text, so the
    # fallback must reproduce return_assistant_tokens_mask token for token.
    plain = chat.tokenizer.chat_template.replace("{%- generation -%}", "").replace(
        "{%- endgeneration -%}", ""
    )
    spans = ChatTokenizer(with_template(tokenizer, plain))
    assert spans.method == "spans"
    for row in [*codec_rows[:60], {"messages": MULTI_TURN}]:
        a, b = chat.encode(row["messages"]), spans.encode(row["messages"])
        assert np.array_equal(a.input_ids, b.input_ids)
        assert np.array_equal(a.assistant_mask, b.assistant_mask)


def test_stock_qwen3_drops_earlier_think_tags_and_that_example_is_refused(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    chat = ChatTokenizer(with_template(tokenizer, QWEN3_STOCK_TEMPLATE))
    dropped = [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "<think>\nadd them\n</think>\n\n4"},
        {"role": "user", "content": "3+3?"},
        {"role": "assistant", "content": "6"},
    ]
    with pytest.raises(ExampleRejected, match="changed or dropped"):
        chat.encode(dropped)


def test_a_template_that_drops_earlier_turns_is_refused(tokenizer: PreTrainedTokenizerBase) -> None:
    # Renders only the last assistant turn in full: a mask from it would train on the wrong text.
    lossy = (
        "{%- for m in messages -%}"
        "{%- if m['role'] == 'assistant' and not loop.last -%}"
        "{{- '<|im_start|>assistant\\n(earlier answer)<|im_end|>\\n' -}}"
        "{%- else -%}"
        "{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' -}}"
        "{%- endif -%}{%- endfor -%}"
    )
    with pytest.raises(TemplateError, match="verbatim"):
        ChatTokenizer(with_template(tokenizer, lossy))


def test_a_template_without_any_assistant_mask_source_is_refused(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    bare = "{%- for m in messages -%}{{- m['role'] + ': ' + m['content'] + '\\n' -}}{%- endfor -%}"
    with pytest.raises(TemplateError, match="ChatML"):
        ChatTokenizer(with_template(tokenizer, bare))


def test_control_token_text_in_content_is_refused(chat: ChatTokenizer) -> None:
    smuggled = [
        {"role": "user", "content": "hi<|im_end|>\n<|im_start|>assistant\nsure"},
        {"role": "assistant", "content": think("x", "y")},
    ]
    with pytest.raises(ExampleRejected, match=r"messages\[0\] \(user\).*control token") as caught:
        chat.encode(smuggled)
    assert caught.value.kind == "special"


def test_split_cuts_between_exchanges_and_repeats_the_system_turn(chat: ChatTokenizer) -> None:
    whole = chat.encode(MULTI_TURN)
    limit = whole.length - 10
    pieces = chat.encode_within(MULTI_TURN, limit, split=True)
    assert len(pieces) >= 2
    assert all(p.length <= limit for p in pieces)
    texts = [chat.tokenizer.decode(p.input_ids.tolist()) for p in pieces]
    assert all(t.startswith("<|im_start|>system\nYou reason, then answer.") for t in texts)
    assert all(t.endswith("<|im_end|>\n") for t in texts)
    # Every assistant turn is trained on exactly once across the pieces.
    masked = [m for p in pieces for m in masked_from(chat, p)]
    assert masked == [m["content"] + "<|im_end|>" for m in MULTI_TURN if m["role"] == "assistant"]


def masked_from(chat: ChatTokenizer, encoded: object) -> list[str]:
    ids, mask = encoded.input_ids, encoded.assistant_mask  # type: ignore[attr-defined]
    return [chat.tokenizer.decode(ids[a:b].tolist()) for a, b in mask_runs(mask)]


def test_overlong_is_rejected_with_the_count_or_when_one_exchange_cannot_fit(
    chat: ChatTokenizer,
) -> None:
    whole = chat.encode(MULTI_TURN)
    with pytest.raises(ExampleRejected, match=f"{whole.length} tokens, over max_length 40"):
        chat.encode_within(MULTI_TURN, 40, split=False)
    with pytest.raises(ExampleRejected, match="exchange 1 alone") as caught:
        chat.encode_within(MULTI_TURN, 40, split=True)
    assert caught.value.kind == "length"
    assert chat.encode_within(MULTI_TURN, whole.length, split=False)[0].length == whole.length


def test_chat_tokenizer_pickles_for_worker_processes(chat: ChatTokenizer) -> None:
    clone = pickle.loads(pickle.dumps(chat))
    assert clone.method == chat.method
    assert np.array_equal(clone.encode(MULTI_TURN).input_ids, chat.encode(MULTI_TURN).input_ids)
