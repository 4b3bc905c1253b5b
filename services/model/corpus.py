"""The text the embedded tokenizer is trained on: codec domains, English, thinking markers."""

from __future__ import annotations

import random
import re
from collections.abc import Iterator

from services.model.english import english_corpus
from services.model.tokenizer_build import THINK_CLOSE, THINK_OPEN

# The codec's <E###> codes are added to the tokenizer later as whole tokens (see
# codec.hf_extension), so BPE merges spent on their spelling would be wasted entries.
CODE_PATTERN = re.compile(r"<E\d+>")


def marker_corpus(count: int, seed: int = 0) -> Iterator[str]:
    """Yield chat-shaped reasoning texts with runs of 🤔 and 🛑, so each marker is one token."""
    rng = random.Random(seed)
    prose = english_corpus(count, seed + 1)
    for _ in range(count):
        opening = THINK_OPEN * rng.choice((4, 4, 4, 2, 3, 5))
        closing = THINK_CLOSE * rng.randint(2, 4)
        answer = rng.choice((str(rng.randint(0, 9999)), "yes", "no", f"{rng.randint(1, 99)}/7"))
        sep = rng.choice(("", " ", "\n"))
        yield f"{opening}{sep}{next(prose)}{sep}{closing}{sep}{answer}"


def default_corpus(
    domain_count: int = 1500, english_count: int = 8000, seed: int = 0
) -> Iterator[str]:
    """The embedded tokenizer's corpus: codec domain samples, general English, markers.

    The domain samples come from `codec.domains.sample_corpus`; imported here, not at module
    load, so the model package imports even while the codec is being built.
    """
    from codec.domains import sample_corpus

    for text in sample_corpus(domain_count, seed=seed):
        yield CODE_PATTERN.sub(" ", text)
    yield from english_corpus(english_count, seed=seed)
    yield from marker_corpus(max(english_count // 4, 1), seed=seed)
    # Chat roles as the template writes them; the special tokens themselves are not learned.
    yield from ("system\n", "user\n", "assistant\n") * 50
