"""Build a Hugging Face tokenizer with Qwen's byte-level BPE vocabulary, offline, for benchmarks.

Where the vocabulary comes from: the PyPI package `qwen-agent` (checked with
`qwen_agent-0.0.34-py3-none-any.whl`) ships `qwen_agent/utils/qwen.tiktoken`, Qwen's BPE ranks
in tiktoken format (one `base64(token bytes) rank` per line, ranks 0..151642). Qwen2, Qwen2.5
and Qwen3 use that byte-level BPE vocabulary with the pre-tokenizer regex below (numbers are
split into single digits). This script reads the file out of the wheel (or takes it with
`--tiktoken`), converts it with transformers' own `TikTokenConverter` (vocab = the ranks, the
token bytes mapped through GPT-2's byte-to-unicode table; merges recovered from the ranks: every
split of a token into two vocabulary tokens, in rank order), and writes a tokenizer folder that
`AutoTokenizer.from_pretrained(DIR, local_files_only=True)` loads as a `Qwen2TokenizerFast`:

* normalizer NFC, pre-tokenizer Split(regex, isolated) + ByteLevel(no prefix space, no regex),
  ByteLevel decoder and post-processor, BPE without unk or byte fallback, as in Qwen3's
  published tokenizer.json;
* added tokens 151643 `<|endoftext|>`, 151644 `<|im_start|>`, 151645 `<|im_end|>` (special)
  and, unless `--base-only`, Qwen3's other added tokens 151646..151668 (`<|object_ref_start|>`
  .. `<|file_sep|>`, `<tool_response>`, `</tool_response>`, `<think>`, `</think>`) with the ids
  and `special` flags of Qwen3's tokenizer_config.json. That list was copied from a public copy
  of a Qwen3 tokenizer_config.json, not checked against the hub (which cannot be reached here);
* eos `<|im_end|>`, pad `<|endoftext|>`, no bos/unk, Qwen3's ChatML chat template (with
  `enable_thinking`).

Before writing, it checks fidelity: for a few thousand varied strings (English, digits, emoji,
S-expressions and `<E###>` codes, the codec domains' texts in every mode, code, Chinese, odd
whitespace, special tokens in text, random Unicode) the HF ids must equal
`tiktoken.Encoding.encode(NFC(text), allowed_special="all")` exactly, and decoding must give the
NFC text back; it prints the agreement rate and exits non-zero below 100%.

This is only a bench/test aid to count tokens under Qwen's vocabulary. It is not Qwen's own
tokenizer file, and the model's embedding matrix (151,936 rows) is larger than this vocabulary.

    .venv/bin/pip install tiktoken
    .venv/bin/python bench/qwen_vocab_tokenizer.py --wheel qwen_agent-0.0.34-py3-none-any.whl \\
        --out /tmp/qwen-vocab-tokenizer
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
import unicodedata
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.model.chat_template import QWEN3_STOCK_TEMPLATE

WHEEL_MEMBER = "qwen_agent/utils/qwen.tiktoken"
BASE_VOCAB = 151_643
PAT_STR = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# (content, id, special) as in Qwen3's tokenizer_config.json added_tokens_decoder
ADDED_TOKENS: list[tuple[str, int, bool]] = [
    ("<|endoftext|>", 151643, True),
    ("<|im_start|>", 151644, True),
    ("<|im_end|>", 151645, True),
]
QWEN3_EXTRA_TOKENS: list[tuple[str, int, bool]] = [
    ("<|object_ref_start|>", 151646, True),
    ("<|object_ref_end|>", 151647, True),
    ("<|box_start|>", 151648, True),
    ("<|box_end|>", 151649, True),
    ("<|quad_start|>", 151650, True),
    ("<|quad_end|>", 151651, True),
    ("<|vision_start|>", 151652, True),
    ("<|vision_end|>", 151653, True),
    ("<|vision_pad|>", 151654, True),
    ("<|image_pad|>", 151655, True),
    ("<|video_pad|>", 151656, True),
    ("<tool_call>", 151657, False),
    ("</tool_call>", 151658, False),
    ("<|fim_prefix|>", 151659, False),
    ("<|fim_middle|>", 151660, False),
    ("<|fim_suffix|>", 151661, False),
    ("<|fim_pad|>", 151662, False),
    ("<|repo_name|>", 151663, False),
    ("<|file_sep|>", 151664, False),
    ("<tool_response>", 151665, False),
    ("</tool_response>", 151666, False),
    ("<think>", 151667, False),
    ("</think>", 151668, False),
]

# Qwen3-0.6B's chat template (ChatML; reasoning in <think> tags; `enable_thinking`).


def tiktoken_file(args: argparse.Namespace, workdir: Path) -> Path:
    """The qwen.tiktoken file: given directly, or extracted from the qwen-agent wheel."""
    if args.tiktoken:
        return Path(args.tiktoken)
    with zipfile.ZipFile(args.wheel) as wheel:
        try:
            data = wheel.read(WHEEL_MEMBER)
        except KeyError:
            raise SystemExit(f"{args.wheel} has no {WHEEL_MEMBER}") from None
    path = workdir / "qwen.tiktoken"
    path.write_bytes(data)
    return path


def load_ranks(path: Path) -> dict[bytes, int]:
    os.environ["TIKTOKEN_CACHE_DIR"] = ""  # read the local file; no cache copy, no network
    from tiktoken.load import load_tiktoken_bpe

    ranks = load_tiktoken_bpe(str(path))
    if sorted(ranks.values()) != list(range(BASE_VOCAB)):
        raise SystemExit(
            f"{path}: expected ranks 0..{BASE_VOCAB - 1} exactly once each, got {len(ranks)} "
            f"tokens with ranks {min(ranks.values())}..{max(ranks.values())}"
        )
    return ranks


def build(path: Path, added: list[tuple[str, int, bool]]):  # type: ignore[no-untyped-def]
    """The HF fast tokenizer (Qwen2TokenizerFast) for the vocabulary at `path`."""
    from tokenizers import AddedToken, normalizers
    from transformers import Qwen2TokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    backend = TikTokenConverter(
        vocab_file=str(path), pattern=PAT_STR, additional_special_tokens=[]
    ).converted()
    backend.normalizer = normalizers.NFC()
    # Qwen3's tokenizer.json has ignore_merges false; ids still match tiktoken (checked below)
    backend.model.ignore_merges = False
    for content, expected, special in added:
        token = AddedToken(content, normalized=False, special=special)
        if special:
            backend.add_special_tokens([token])
        else:
            backend.add_tokens([token])
        got = backend.token_to_id(content)
        if got != expected:
            raise SystemExit(f"{content} got id {got}, expected {expected}")
    return Qwen2TokenizerFast(
        tokenizer_object=backend,
        bos_token=None,
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=[c for c, _, s in added if s and c != "<|endoftext|>"],
        chat_template=QWEN3_STOCK_TEMPLATE,
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
        errors="replace",
        model_max_length=131072,
    )


WORD_TEXT = (
    "the of and to in is was that for it with as his on be at by I this had not are but from or "
    "have an they which one you were her all she there would their we him been has when who will "
    "more no if out so said what up its about into than them can only other new some could time "
    "these two may then do first any my now such like our over man me even most made after also "
    "did many before must through back years where much your way well down should because each "
    "just those people Mr how too little state good very make world still own see men work long "
    "get here between both life being under never day same another know while last might us "
    "Therefore, we conclude: subtract multiply divided remainder apples Socrates mortal"
)
WORDS = WORD_TEXT.split()
SNIPPETS = [
    "🤔🤔🤔🤔 (let a (add 12 345))\n(let b (mul a 7))\n(ans b) 🛑🛑🛑🛑 2499",
    "(check (eq (sub 100 (mul 3 33)) 1)) <E000><E017><E255> <E511>(ans 42)",
    "def f(x):\n    return x ** 2  # square\n\n\nif __name__ == '__main__':\n\tprint(f(3))\r\n",
    "我们来计算：三百四十五加十二等于三百五十七。答案是357。",
    "  leading  and trailing   spaces   \n\n\n  \t\t\n",
    "<|im_start|>user\nWhat is 6*7?<|im_end|>\n<|im_start|>assistant\n<think>\nx</think>\n\n42",
    "I'm sure they'll say it's fine; we'd've LEFT. DON'T 'S 're",
    "café naïve Ångström e\u0301 A\u030a \ufb01 Ω ㈱ ﬀ ① ½ ²",
    "3.14159265358979 -0.001 1e-9 1,234,567 ٣٤٥ ௧௨ 一二三",
    "👩‍👩‍👧‍👦 🇯🇵 🏳️‍🌈 ✔️ 🤔🛑 \u200b\u200d \ufeff",
    '{"name": "f", "arguments": {"x": [1, 2, 3]}}',
    "<tool_call>\n{}\n</tool_call><tool_response>ok</tool_response><|endoftext|>",
]


def random_text(rng: random.Random) -> str:
    kind = rng.randrange(8)
    n = rng.randint(1, 40)
    if kind == 0:  # English-ish
        return " ".join(rng.choice(WORDS) for _ in range(n)) + rng.choice([".", "?", "!\n", ""])
    if kind == 1:  # digits and arithmetic
        return " ".join(
            f"{rng.randint(0, 10 ** rng.randint(1, 9))}{rng.choice(' +-*/=.,')}" for _ in range(n)
        )
    if kind == 2:  # S-expressions with codes
        ops = ["add", "sub", "mul", "div", "let", "ans", "check", "eq", "all", "not"]
        parts = []
        for _ in range(n):
            r = rng.random()
            if r < 0.2:
                parts.append(f"<E{rng.randrange(512):03d}>")
            elif r < 0.5:
                parts.append(f"({rng.choice(ops)} {rng.randint(0, 9999)}")
            elif r < 0.7:
                parts.append(")" * rng.randint(1, 4) + rng.choice(["\n", " ", ""]))
            else:
                parts.append(rng.choice(WORDS))
        return rng.choice(["🤔 ", "", "🤔🤔🤔🤔\n"]) + " ".join(parts) + rng.choice([" 🛑", ""])
    if kind == 3:  # Chinese and CJK punctuation
        return "".join(
            chr(rng.randint(0x4E00, 0x9FFF))
            if rng.random() < 0.85
            else rng.choice("，。！？：；、“”（） 0123456789")
            for _ in range(n)
        )
    if kind == 4:  # emoji, symbols and joiners
        pool = "🤔🛑😀🎉👍🏽❤️✨🔥🚀🙏\u200d\ufe0f ∑∫√≤≥≠±×÷°€£¥"
        return "".join(rng.choice(pool) for _ in range(n))
    if kind == 5:  # whitespace and punctuation soup
        pool = [" ", "  ", "\n", "\n\n", "\t", "\r\n", "\r", "'s", "'LL", "...", "--", "()", "#"]
        return "".join(rng.choice(pool + WORDS[:20]) for _ in range(n))
    if kind == 6:  # arbitrary code points (no surrogates)
        out = []
        for _ in range(n):
            cp = rng.choice(
                [
                    rng.randint(0x20, 0x7E),
                    rng.randint(0xA0, 0x2FFF),
                    rng.randint(0x3000, 0xD7FF),
                    rng.randint(0xE000, 0x10FFFF),
                ]
            )
            out.append(chr(cp))
        return "".join(out)
    # snippet mash-up
    return "".join(rng.choice(SNIPPETS)[: rng.randint(1, 80)] for _ in range(rng.randint(1, 4)))


def domain_texts(count: int) -> list[str]:
    """Questions and assistant contents of the codec's built-in domains, every mode."""
    try:
        from codec.domains import default_codebook, mixed_problems
        from codec.modes import RENDER_MODES
        from codec.problem import RenderSettings
    except ImportError as err:  # the script still works outside the repository
        print(f"note: codec domains unavailable ({err}); random strings only", file=sys.stderr)
        return []
    rng = random.Random("qwen-vocab-check")
    codebook = default_codebook()
    out: list[str] = []
    for index, problem in enumerate(mixed_problems(count, seed=0, split="heldout")):
        mode = RENDER_MODES[index % len(RENDER_MODES)]
        content = problem.assistant_content(mode, codebook, rng, RenderSettings())
        out.append(f"{problem.question}\n{content}")
    return out


def check(tokenizer, encoding, count: int, seed: int) -> tuple[int, int, int]:  # type: ignore[no-untyped-def]
    """(agreeing, total, non-NFC inputs): HF ids vs tiktoken ids on NFC text, plus decoding."""
    rng = random.Random(seed)
    texts = list(SNIPPETS) + domain_texts(count // 4)
    texts += [random_text(rng) for _ in range(max(0, count - len(texts)))]
    texts.append("".join(texts[:200]))  # one long text
    agree = non_nfc = 0
    shown = 0
    for text in texts:
        nfc = unicodedata.normalize("NFC", text)
        non_nfc += nfc != text
        want = encoding.encode(nfc, allowed_special="all")
        got = tokenizer.encode(text, add_special_tokens=False)
        back = tokenizer.decode(got, skip_special_tokens=False)
        if got == want and back == nfc:
            agree += 1
        elif shown < 5:
            shown += 1
            print(f"MISMATCH {text[:80]!r}\n  hf       {got[:20]}\n  tiktoken {want[:20]}")
    return agree, len(texts), non_nfc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--wheel", help="qwen_agent wheel holding " + WHEEL_MEMBER)
    source.add_argument("--tiktoken", help="a qwen.tiktoken file")
    parser.add_argument("--out", required=True, help="folder to write the HF tokenizer into")
    parser.add_argument(
        "--base-only",
        action="store_true",
        help="only <|endoftext|>, <|im_start|>, <|im_end|> as added tokens",
    )
    parser.add_argument("--check", type=int, default=4000, help="strings in the fidelity check")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import tiktoken

    added = ADDED_TOKENS + ([] if args.base_only else QWEN3_EXTRA_TOKENS)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        path = tiktoken_file(args, Path(tmp))
        ranks = load_ranks(path)
        tokenizer = build(path, added)
    print(
        f"converted {len(ranks)} ranks + {len(added)} added tokens "
        f"in {time.perf_counter() - started:.1f}s"
    )
    encoding = tiktoken.Encoding(
        "qwen",
        pat_str=PAT_STR,
        mergeable_ranks=ranks,
        special_tokens={content: index for content, index, _ in added},
    )
    agree, total, non_nfc = check(tokenizer, encoding, args.check, args.seed)
    print(
        f"fidelity: {agree}/{total} strings ({100 * agree / total:.2f}%) give ids identical to "
        f"tiktoken's and decode back ({non_nfc} inputs were not NFC; compared after NFC)"
    )
    if agree != total:
        print("not writing: the conversion does not reproduce tiktoken's ids", file=sys.stderr)
        return 1
    out = Path(args.out)
    tokenizer.save_pretrained(out)
    from transformers import AutoTokenizer

    reloaded = AutoTokenizer.from_pretrained(out, local_files_only=True)
    sample = "🤔 (let a (add 12 345)) <|im_end|>"
    if reloaded.encode(sample, add_special_tokens=False) != encoding.encode(
        sample, allowed_special="all"
    ):
        print("the saved tokenizer does not reload identically", file=sys.stderr)
        return 1
    print(
        f"wrote {out} ({type(reloaded).__name__}, {len(reloaded)} tokens, "
        f"eos {reloaded.eos_token}, pad {reloaded.pad_token})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
