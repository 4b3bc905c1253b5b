"""The embedded tokenizer: special tokens, markers, digits, round trips, deterministic training."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from services.model.english import english_corpus
from services.model.tokenizer_build import (
    ENDOFTEXT,
    IM_END,
    IM_START,
    THINK_CLOSE,
    THINK_OPEN,
    build_tokenizer,
)

SAMPLES = [
    "Hello! How can I help you today?",
    "🤔🤔🤔🤔 (let v1 (add 3 4)) (let v2 (mul v1 2)) 🛑🛑 14",
    "All cats are animals. Some animals are black. ∴ no conclusion about cats.",
    "Ünïcödé, 中文, русский, and emoji 🎉 still round-trip byte for byte.",
    "  leading spaces\n\n\ttabs and\r\nnewlines  ",
    "(check (= (add 1/3 2/3) 1)) (revise v3 (sub v2 7))",
]


@pytest.fixture(scope="module")
def tokenizer(embedded_dir: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(embedded_dir, local_files_only=True)


def test_special_tokens_are_qwen_like(tokenizer: PreTrainedTokenizerBase) -> None:
    assert tokenizer.convert_tokens_to_ids([ENDOFTEXT, IM_START, IM_END]) == [0, 1, 2]
    assert tokenizer.pad_token == ENDOFTEXT
    assert tokenizer.eos_token == IM_END
    assert tokenizer.bos_token is None
    assert set(tokenizer.all_special_tokens) == {ENDOFTEXT, IM_START, IM_END}
    # A special token in user text is still one token, never split into pieces.
    assert tokenizer.encode(f"{IM_START}user", add_special_tokens=False)[0] == 1


def test_vocabulary_size(tokenizer: PreTrainedTokenizerBase) -> None:
    assert 4000 <= len(tokenizer) <= 8000


@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip(tokenizer: PreTrainedTokenizerBase, text: str) -> None:
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text


def test_each_thinking_marker_is_one_token(tokenizer: PreTrainedTokenizerBase) -> None:
    for marker in (THINK_OPEN, THINK_CLOSE):
        (single,) = tokenizer.encode(marker, add_special_tokens=False)
        for count in (2, 3, 4):
            assert tokenizer.encode(marker * count, add_special_tokens=False) == [single] * count
    text = f"{THINK_OPEN * 4}(add 3 4){THINK_CLOSE * 2}7"
    pieces = [tokenizer.decode([i]) for i in tokenizer.encode(text, add_special_tokens=False)]
    assert pieces[:4] == [THINK_OPEN] * 4
    assert pieces.count(THINK_CLOSE) == 2


def test_digits_split_one_by_one(tokenizer: PreTrainedTokenizerBase) -> None:
    pieces = [tokenizer.decode([i]) for i in tokenizer.encode("x 90210", add_special_tokens=False)]
    assert pieces[-5:] == ["9", "0", "2", "1", "0"]


def test_english_is_compact(tokenizer: PreTrainedTokenizerBase) -> None:
    text = "Thanks for your question. Let me think about it step by step."
    assert len(tokenizer.encode(text, add_special_tokens=False)) <= 16


def test_training_takes_any_corpus_and_is_deterministic() -> None:
    corpus = ["(let v1 (add 3 4)) 🤔🤔🤔🤔 7 🛑🛑", *itertools.islice(english_corpus(400), 400)]
    first = build_tokenizer(iter(corpus), vocab_size=800)
    second = build_tokenizer(iter(corpus), vocab_size=800)
    assert len(first) == 800
    assert first.backend_tokenizer.to_str() == second.backend_tokenizer.to_str()
    assert first.decode(first.encode(SAMPLES[1], add_special_tokens=False)) == SAMPLES[1]
