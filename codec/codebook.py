"""Codebook: `<E###>` codes for recurring fragments of canonical text; lossless encode/decode.

Fragment design. A canonical text is a sequence of lexical tokens (`(`, `)`, atoms), and the
printer makes the text a pure function of that sequence (`codec.sexpr.join_tokens`). A
fragment is any contiguous run of lexical tokens, so it may span parts of subtrees, e.g.
`) (let v2 (add` or `(let v1 (mul`. Runs rather than whole subtrees are what recur in
reasoning: the step skeleton repeats while the numbers change.

Learning. Repeatedly count every run of units (lexical tokens or codes already chosen) up to
`max_fragment` lexical tokens long over the corpus; a run earns a code by
frequency × tokens saved, where tokens saved = `count_tokens(run as text) - 1` under the
given tokenizer (a code is one added token). Each round takes the best runs that do not
contain one another, rewrites the corpus with them and counts again, until `size` codes
exist or nothing occurring `min_freq` times saves a token.

Encoding is greedy longest match over lexical tokens. Encoded text is codes and literal
tokens with no separators except one space between two literal atoms; decoding expands the
codes back to lexical tokens and joins them with the printer's rule, so
decode(encode(x)) == x for every printed canonical x.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from codec.canonical import canonical_steps
from codec.errors import CodebookError, DecodeError, ParseError
from codec.sexpr import Expr, join_tokens, lex, read_atom, to_text

TokenCounter = Callable[[str], int]
SCHEMA = "regime3.codebook"
SCHEMA_VERSION = 1
MAX_CODES = 512
_WORD = re.compile(r"<E\d{3}>|\w+|[^\w\s]")
_ENCODED = re.compile(r'\s*(?:<E(\d{3})>|(\()|(\))|("(?:[^"\\\n]|\\.)*")|([^\s()"<]+)|(<))')
_ATOM = re.compile(r"[+-]?\d+(?:/[1-9]\d*|\.\d+)?|[A-Za-z_][A-Za-z0-9_\-]*")
_END = ""  # trie key marking the end of a fragment (no lexical token is empty)


def code_name(index: int) -> str:
    return f"<E{index:03d}>"


def whitespace_count(text: str) -> int:
    """Default token counter: words, numbers, each punctuation mark, each code is one token."""
    return len(_WORD.findall(text))


def _depth_profile(tokens: Sequence[str]) -> tuple[int, int]:
    depth = lowest = 0
    for token in tokens:
        depth += 1 if token == "(" else -1 if token == ")" else 0
        lowest = min(lowest, depth)
    return depth, lowest


class Codebook:
    """Codes `<E000>`.. mapping to fragments (tuples of lexical tokens) and the build params."""

    def __init__(
        self, fragments: Sequence[tuple[str, ...]], params: dict[str, Any] | None = None
    ) -> None:
        if len(fragments) > MAX_CODES:
            raise CodebookError(f"{len(fragments)} codes: a codebook holds at most {MAX_CODES}")
        self.fragments = tuple(tuple(f) for f in fragments)
        self.params = dict(params or {})
        self._trie: dict[str, Any] = {}
        self._profiles = [_depth_profile(f) for f in self.fragments]
        for index, fragment in enumerate(self.fragments):
            node = self._trie
            for token in fragment:
                node = node.setdefault(token, {})
            if _END in node:
                raise CodebookError(f"fragment {fragment!r} appears twice; rebuild the codebook")
            node[_END] = index

    def __len__(self) -> int:
        return len(self.fragments)

    def fragment_text(self, index: int) -> str:
        return join_tokens(self.fragments[index], toplevel_newlines=False)

    def encode(self, text: str) -> str:
        """Encode printed canonical text (one or more expressions) into codes and literals."""
        tokens = [token for token, _ in lex(text)]
        pieces: list[str] = []
        previous_atom = False
        i, n = 0, len(tokens)
        trie = self._trie
        while i < n:
            node = trie
            j = i
            best = -1
            best_end = i
            while j < n:
                child = node.get(tokens[j])
                if child is None:
                    break
                node = child
                j += 1
                code = node.get(_END)
                if code is not None:
                    best, best_end = code, j
            if best >= 0:
                pieces.append(f"<E{best:03d}>")
                previous_atom = False
                i = best_end
                continue
            token = tokens[i]
            atom = token != "(" and token != ")"
            if atom and previous_atom:
                pieces.append(" ")
            pieces.append(token)
            previous_atom = atom
            i += 1
        return "".join(pieces)

    def encode_expr(self, *steps: Expr) -> str:
        """Canonicalize steps (variables renamed across all of them), print, and encode."""
        return self.encode("\n".join(_print(s) for s in canonical_steps(steps)))

    def decode(self, encoded: str) -> str:
        """Expand codes back to printed canonical text; errors name the position in `encoded`."""
        tokens: list[str] = []
        depth = 0
        pos, end = 0, len(encoded)
        count = len(self.fragments)
        while pos < end:
            match = _ENCODED.match(encoded, pos)
            if match is None:
                if not encoded[pos:].strip():
                    break
                start = pos + len(encoded[pos:]) - len(encoded[pos:].lstrip())
                raise DecodeError(
                    "unterminated string: expected a closing '\"'", text=encoded, position=start
                )
            group = match.lastindex
            start = match.start(group or 0)
            pos = match.end()
            if group == 1:
                index = int(match.group(1))
                if index >= count:
                    raise DecodeError(
                        f"unknown code {code_name(index)}: this codebook has "
                        f"{code_name(0)}..{code_name(count - 1)}; decode with the codebook "
                        "that encoded the text",
                        text=encoded,
                        position=start,
                    )
                delta, lowest = self._profiles[index]
                if depth + lowest < 0:
                    raise DecodeError(
                        f"code {code_name(index)} closes a list that was never opened",
                        text=encoded,
                        position=start,
                    )
                depth += delta
                tokens.extend(self.fragments[index])
            elif group == 2:
                depth += 1
                tokens.append("(")
            elif group == 3:
                if depth == 0:
                    raise DecodeError(
                        "unexpected ')': no list is open here; remove it",
                        text=encoded,
                        position=start,
                    )
                depth -= 1
                tokens.append(")")
            elif group == 4:
                tokens.append(match.group(4))
            elif group == 5:
                token = match.group(5)
                if not _ATOM.fullmatch(token):
                    raise DecodeError(
                        f"malformed token {token!r}: expected a code like <E012>, a number, "
                        "a symbol, a string or a parenthesis",
                        text=encoded,
                        position=start,
                    )
                tokens.append(token)
            else:
                raise DecodeError(
                    "malformed code: expected <E followed by three digits and >",
                    text=encoded,
                    position=start,
                )
        if depth > 0:
            raise DecodeError(
                f"expected {depth} more ')' to close the open list(s)",
                text=encoded,
                position=end,
            )
        return join_tokens(tokens)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "codes": {code_name(i): self.fragment_text(i) for i in range(len(self.fragments))},
            "params": self.params,
        }

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1, ensure_ascii=False) + "\n")

    @classmethod
    def from_json(cls, data: Any, *, source: str = "codebook") -> Codebook:
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise CodebookError(f"{source}: not a codebook (expected schema {SCHEMA!r})")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise CodebookError(
                f"{source}: schema_version {version!r} is not {SCHEMA_VERSION}; rebuild it with "
                "`regime3 codec build`"
            )
        codes = data.get("codes")
        if not isinstance(codes, dict):
            raise CodebookError(f"{source}: field 'codes' must be an object of code -> fragment")
        fragments: list[tuple[str, ...]] = []
        for expected, (name, text) in enumerate(codes.items()):
            if name != code_name(expected) or not isinstance(text, str):
                raise CodebookError(
                    f"{source}: codes[{expected}] is {name!r}; codes must run {code_name(0)}, "
                    f"{code_name(1)}, … in order, each mapped to fragment text"
                )
            try:
                tokens = tuple(token for token, _ in lex(text))
                for token, position in lex(text):
                    if token not in ("(", ")"):
                        read_atom(token, text=text, position=position)
            except ParseError as err:
                raise CodebookError(f"{source}: fragment of {name} is malformed: {err}") from err
            if not tokens:
                raise CodebookError(f"{source}: fragment of {name} is empty")
            fragments.append(tokens)
        params = data.get("params", {})
        return cls(fragments, params if isinstance(params, dict) else {})

    @classmethod
    def load(cls, path: str | Path) -> Codebook:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise CodebookError(f"{path}: cannot read the codebook: {err}") from err
        return cls.from_json(data, source=str(path))


def _print(expr: Expr) -> str:
    return to_text(expr)


Unit = str | int  # a lexical token, or the index of a code chosen in an earlier round


def _apply(sequences: list[list[Unit]], grams: Sequence[tuple[Unit, ...]], first: int) -> None:
    trie: dict[Unit, Any] = {}
    for offset, gram in enumerate(grams):
        node = trie
        for unit in gram:
            node = node.setdefault(unit, {})
        node[_END] = first + offset
    for k, seq in enumerate(sequences):
        out: list[Unit] = []
        i, n = 0, len(seq)
        while i < n:
            node, j, best, best_end = trie, i, -1, i
            while j < n and seq[j] in node:
                node = node[seq[j]]
                j += 1
                if _END in node:
                    best, best_end = node[_END], j
            if best >= 0:
                out.append(best)
                i = best_end
            else:
                out.append(seq[i])
                i += 1
        sequences[k] = out


def build_codebook(
    corpus: Iterable[str],
    *,
    size: int = 256,
    min_freq: int = 5,
    count_tokens: TokenCounter | None = None,
    max_fragment: int = 12,
    tokenizer_name: str = "whitespace",
) -> Codebook:
    """Learn a codebook from printed canonical texts (see the module docstring)."""
    if not 1 <= size <= MAX_CODES:
        raise CodebookError(f"size {size} is out of range: use 1..{MAX_CODES} (256-512 typical)")
    if min_freq < 1:
        raise CodebookError(f"min_freq {min_freq} must be at least 1")
    counter = count_tokens or whitespace_count
    sequences: list[list[Unit]] = [[t for t, _ in lex(text)] for text in corpus]
    examples = len(sequences)
    fragments: list[tuple[str, ...]] = []
    cost_cache: dict[str, int] = {}

    def expand(gram: Sequence[Unit]) -> list[str]:
        out: list[str] = []
        for unit in gram:
            out.extend(fragments[unit] if isinstance(unit, int) else (unit,))
        return out

    def cost(gram: tuple[Unit, ...]) -> int:
        total, run = 0, []
        for unit in (*gram, None):
            if isinstance(unit, str):
                run.append(unit)
                continue
            if run:
                text = join_tokens(run, toplevel_newlines=False)
                if text not in cost_cache:
                    cost_cache[text] = counter(text)
                total += cost_cache[text]
                run = []
            total += unit is not None
        return total

    batch = max(8, size // 16)
    while len(fragments) < size:
        counts: Counter[tuple[Unit, ...]] = Counter()
        for seq in sequences:
            n = len(seq)
            for i in range(n - 1):
                for j in range(i + 2, min(n, i + max_fragment) + 1):
                    counts[tuple(seq[i:j])] += 1
        scored: list[tuple[int, str, tuple[Unit, ...]]] = []
        for gram, freq in counts.items():
            if freq < min_freq:
                continue
            flat = expand(gram)
            if len(flat) > max_fragment:
                continue
            score = freq * (cost(gram) - 1)
            if score > 0:
                scored.append((score, "\x1f".join(flat), gram))
        if not scored:
            break
        scored.sort(key=lambda item: (-item[0], item[1]))
        chosen: list[tuple[Unit, ...]] = []
        chosen_keys: list[str] = []
        known = set(fragments)
        want = min(batch, size - len(fragments))
        for _, key, gram in scored:
            wrapped = f"\x1f{key}\x1f"
            if tuple(key.split("\x1f")) in known:
                continue
            if any(wrapped in f"\x1f{k}\x1f" or f"\x1f{k}\x1f" in wrapped for k in chosen_keys):
                continue
            chosen.append(gram)
            chosen_keys.append(key)
            if len(chosen) == want:
                break
        first = len(fragments)
        fragments.extend(tuple(expand(g)) for g in chosen)
        _apply(sequences, chosen, first)
    params = {
        "size": size,
        "min_freq": min_freq,
        "max_fragment": max_fragment,
        "tokenizer": tokenizer_name,
        "corpus_examples": examples,
        "codes": len(fragments),
    }
    return Codebook(fragments, params)
