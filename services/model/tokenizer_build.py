"""Train the embedded byte-level BPE tokenizer (Qwen-style pre-tokenizer) from a text corpus."""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers.trainers import BpeTrainer
from transformers import PreTrainedTokenizerFast

from services.model.chat_template import CHAT_TEMPLATE

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
# Ids 0, 1, 2 in this order: the trainer puts special tokens first.
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)

THINK_OPEN = "🤔"
THINK_CLOSE = "🛑"

# Qwen2/Qwen3's split: contractions, words with one leading non-letter, single digits (so
# numbers never merge into opaque chunks), punctuation runs, newlines, spaces.
QWEN_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
# The thinking markers are split out one by one before Qwen's split, which would glue a run
# like 🤔🤔🤔🤔 into one chunk; this way each marker is one token and a run of N is N tokens,
# which the node's logits processors count.
MARKER_REGEX = f"{THINK_OPEN}|{THINK_CLOSE}"


def _empty_tokenizer() -> Tokenizer:
    tokenizer = Tokenizer(models.BPE(unk_token=None, byte_fallback=False, fuse_unk=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(MARKER_REGEX), behavior="isolated"),
            pre_tokenizers.Split(Regex(QWEN_PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    # Keeps offsets on the original characters, which the chat template's assistant mask
    # (char_to_token) relies on.
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return tokenizer


def train_bpe(corpus: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train a byte-level BPE on `corpus`; the 3 special tokens are ids 0–2, bytes follow."""
    tokenizer = _empty_tokenizer()
    trainer = BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        # All 256 byte symbols, so any text (any emoji, any script) still encodes.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    return tokenizer


def wrap_tokenizer(tokenizer: Tokenizer, model_max_length: int) -> PreTrainedTokenizerFast:
    """Give a trained `Tokenizer` Qwen3's special-token roles and the ChatML template."""
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=None,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        unk_token=None,
        additional_special_tokens=[IM_START, IM_END],
        chat_template=CHAT_TEMPLATE,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
        padding_side="right",
    )


def build_tokenizer(
    corpus: Iterable[str], *, vocab_size: int = 6000, model_max_length: int = 4096
) -> PreTrainedTokenizerFast:
    """Train on `corpus` and return a ready Hugging Face tokenizer with the chat template."""
    return wrap_tokenizer(train_bpe(corpus, vocab_size), model_max_length)
