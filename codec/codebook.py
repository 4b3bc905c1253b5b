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

import hashlib
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from codec.canonical import canonical_steps
from codec.errors import CodebookError, DecodeError, ParseError
from codec.sexpr import Expr, join_tokens, lex, read_all, read_atom, to_text

TokenCounter = Callable[[str], int]
SCHEMA = "regime3.codebook"
SCHEMA_VERSION = 1
MAX_CODES = 512
CODEBOOK_FILE = "codebook.json"  # a checkpoint directory's codebook, in `Codebook.save` format
CODE = re.compile(r"<E\d{3}>")  # one code as it appears in encoded (or assorted) text
_WORD = re.compile(r"<E\d{3}>|[+-]?\d+(?:/\d+)?|\w+|[^\w\s]")
# code | paren | string | atom | anything else (an error); whitespace between matches is skipped
_ENCODED = re.compile(r'<E(\d{3})>|([()])|("(?:[^"\\\n]|\\.)*")|([^\s()"<]+)|(\S)')
_ATOM = re.compile(r"[+-]?\d+(?:/[1-9]\d*|\.\d+)?|[A-Za-z_][A-Za-z0-9_\-]*")
_END = ""  # trie key marking the end of a fragment (no lexical token is empty)


def code_name(index: int) -> str:
    return f"<E{index:03d}>"


def whitespace_count(text: str) -> int:
    """Default token counter: a word, a number (-3, 3/4), a punctuation mark, a code: one each."""
    return len(_WORD.findall(text))


@dataclass(frozen=True, slots=True)
class _Decoded:
    """A fragment prepared for fast decoding."""

    tokens: tuple[str, ...]
    text: str  # the fragment printed as it appears inside a list
    delta: int  # depth change across the fragment
    lowest: int  # lowest depth reached, relative to the start (after each token)
    lowest_boundary: int  # lowest relative depth at a boundary between two of its tokens
    opens_with_close: bool
    closes_with_open: bool

    @classmethod
    def of(cls, tokens: tuple[str, ...]) -> _Decoded:
        depth, lowest, boundaries = 0, 0, []
        for token in tokens:
            depth += 1 if token == "(" else -1 if token == ")" else 0
            lowest = min(lowest, depth)
            boundaries.append(depth)
        inner = min(boundaries[:-1], default=1)
        text = join_tokens(tokens, toplevel_newlines=False)
        return cls(tokens, text, depth, lowest, inner, tokens[0] == ")", tokens[-1] == "(")


def _join_from(tokens: Sequence[str], depth: int) -> str:
    """Join a fragment's tokens that start at `depth`, with newlines at top-level boundaries."""
    parts: list[str] = []
    previous = ""
    for index, token in enumerate(tokens):
        if index:
            if depth == 0:
                parts.append("\n")
            elif previous != "(" and token != ")":
                parts.append(" ")
        parts.append(token)
        depth += 1 if token == "(" else -1 if token == ")" else 0
        previous = token
    return "".join(parts)


class Codebook:
    """Codes `<E000>`.. mapping to fragments (tuples of lexical tokens) and the build params."""

    def __init__(
        self, fragments: Sequence[tuple[str, ...]], params: dict[str, Any] | None = None
    ) -> None:
        if len(fragments) > MAX_CODES:
            raise CodebookError(f"{len(fragments)} codes: a codebook holds at most {MAX_CODES}")
        self.fragments = tuple(tuple(f) for f in fragments)
        self.params = dict(params or {})
        self._version: str | None = None
        self._trie: dict[str, Any] = {}
        self._decoded = [_Decoded.of(f) for f in self.fragments]
        self._names = [code_name(i) for i in range(len(self.fragments))]
        self._ok_atoms: set[str] = set()
        self._deltas = [d.delta for d in self._decoded]
        self._lowest = [d.lowest for d in self._decoded]
        self._by_name = dict(zip(self._names, self._decoded, strict=True))
        for index, fragment in enumerate(self.fragments):
            node = self._trie
            for token in fragment:
                node = node.setdefault(token, {})
            if _END in node:
                raise CodebookError(f"fragment {fragment!r} appears twice; rebuild the codebook")
            node[_END] = index

    def __len__(self) -> int:
        return len(self.fragments)

    def codes(self) -> dict[str, str]:
        """The mapping {"<E000>": "fragment text", ...}, codes in order."""
        return {code_name(i): self.fragment_text(i) for i in range(len(self.fragments))}

    @property
    def version(self) -> str:
        """ "cb-" + 12 hex of sha256 over the codes mapping as canonical JSON.

        Only the codes count (not the build params): two codebooks with the same version
        encode and decode every text the same way.
        """
        if self._version is None:
            canonical = json.dumps(self.codes(), sort_keys=True, separators=(",", ":"))
            self._version = "cb-" + hashlib.sha256(canonical.encode()).hexdigest()[:12]
        return self._version

    def fragment_text(self, index: int) -> str:
        return join_tokens(self.fragments[index], toplevel_newlines=False)

    def encode(self, text: str) -> str:
        """Encode printed canonical text (one or more expressions) into codes and literals.

        Text that is not well formed raises ParseError with its position; canonicalize other
        input first (`encode_expr`, or `codec.canonical.canonical_text`).
        """
        # without strings, splitting around parentheses is exact and much faster than the lexer
        if '"' in text:
            tokens = [t for t, _ in lex(text)]
        else:
            tokens = text.replace("(", " ( ").replace(")", " ) ").split()
        pieces: list[str] = []
        append = pieces.append
        names = self._names
        deltas, lowest = self._deltas, self._lowest
        trie = self._trie
        atom_ok = _ATOM.fullmatch
        ok_atoms = self._ok_atoms
        previous_atom = False
        depth = 0
        malformed = False
        i, n = 0, len(tokens)
        while i < n:
            node = trie.get(tokens[i])
            if node is not None:
                best = node.get(_END)
                j = best_end = i + 1
                while j < n:
                    node = node.get(tokens[j])
                    if node is None:
                        break
                    j += 1
                    code = node.get(_END)
                    if code is not None:
                        best, best_end = code, j
                if best is not None:
                    append(names[best])
                    if depth + lowest[best] < 0:
                        malformed = True
                    depth += deltas[best]
                    previous_atom = False
                    i = best_end
                    continue
            token = tokens[i]
            if token == "(":
                depth += 1
                previous_atom = False
            elif token == ")":
                depth -= 1
                if depth < 0:
                    malformed = True
                previous_atom = False
            else:
                if previous_atom:
                    append(" ")
                if token in ok_atoms:
                    pass
                elif atom_ok(token) is None and token[0] != '"':
                    malformed = True
                elif len(ok_atoms) < 4096:  # small numbers and variable names repeat a lot
                    ok_atoms.add(token)
                previous_atom = True
            append(token)
            i += 1
        if malformed or depth:
            read_all(text)  # raises a ParseError that names the position
            raise ParseError("expected balanced parentheses", text=text, position=len(text))
        return "".join(pieces)

    def encode_expr(self, *steps: Expr) -> str:
        """Canonicalize steps (variables renamed across all of them), print, and encode."""
        return self.encode("\n".join(_print(s) for s in canonical_steps(steps)))

    def decode(self, encoded: str) -> str:
        """Expand codes back to printed canonical text; errors name the position in `encoded`."""
        text = self._decode_fast(encoded)
        return text if text is not None else self._decode_checked(encoded)

    def _decode_fast(self, encoded: str) -> str | None:
        """The common case at full speed; None on any problem, so the checked path reports it."""
        if '"' in encoded:
            return None
        units = (
            encoded.replace("<", " <")
            .replace(">", "> ")
            .replace("(", " ( ")
            .replace(")", " ) ")
            .split()
        )
        out: list[str] = []
        append = out.append
        depth = 0
        open_before = True  # the last token written was "(" (or nothing was written)
        by_name = self._by_name
        atom_ok = _ATOM.fullmatch
        for unit in units:
            if unit[0] == "<":
                fragment = by_name.get(unit)
                if fragment is None or depth + fragment.lowest < 0:
                    return None
                if out:
                    if depth == 0:
                        append("\n")
                    elif not open_before and not fragment.opens_with_close:
                        append(" ")
                if depth + fragment.lowest_boundary > 0:
                    append(fragment.text)
                else:
                    append(_join_from(fragment.tokens, depth))
                depth += fragment.delta
                open_before = fragment.closes_with_open
            elif unit == ")":
                if depth == 0:
                    return None
                depth -= 1
                append(")")
                open_before = False
            else:
                if out:
                    if depth == 0:
                        append("\n")
                    elif not open_before:
                        append(" ")
                append(unit)
                if unit == "(":
                    depth += 1
                    open_before = True
                elif atom_ok(unit) is None:
                    return None
                else:
                    open_before = False
        return None if depth else "".join(out)

    def _decode_checked(self, encoded: str) -> str:
        out: list[str] = []
        depth = 0
        previous = "("  # the last token written; "(" means no separator is due
        count = len(self.fragments)
        for match in _ENCODED.finditer(encoded):
            group = match.lastindex
            if group == 1:
                index = int(match.group(1))
                if index >= count:
                    raise DecodeError(
                        f"unknown code {code_name(index)}: this codebook has "
                        f"{code_name(0)}..{code_name(count - 1)}; decode with the codebook "
                        "that encoded the text",
                        text=encoded,
                        position=match.start(),
                    )
                fragment = self._decoded[index]
                if depth + fragment.lowest < 0:
                    raise DecodeError(
                        f"code {code_name(index)} closes a list that was never opened",
                        text=encoded,
                        position=match.start(),
                    )
                if out:
                    if depth == 0:
                        out.append("\n")
                    elif previous != "(" and not fragment.opens_with_close:
                        out.append(" ")
                if depth + fragment.lowest_boundary > 0:
                    out.append(fragment.text)
                else:  # a top-level boundary falls inside: newlines depend on where we are
                    out.append(_join_from(fragment.tokens, depth))
                depth += fragment.delta
                previous = fragment.tokens[-1]
                continue
            token = match.group(group or 0)
            if group == 2:
                if token == ")":
                    if depth == 0:
                        raise DecodeError(
                            "unexpected ')': no list is open here; remove it",
                            text=encoded,
                            position=match.start(),
                        )
                    depth -= 1
                    out.append(")")
                    previous = ")"
                    continue
            elif group == 4 and not _ATOM.fullmatch(token):
                raise DecodeError(
                    f"malformed token {token!r}: expected a code like <E012>, a number, "
                    "a symbol, a string or a parenthesis",
                    text=encoded,
                    position=match.start(),
                )
            elif group == 5:
                what = "code: expected <E followed by three digits and >"
                if token == '"':
                    what = "string: expected a closing '\"' on the same line"
                raise DecodeError(f"malformed {what}", text=encoded, position=match.start())
            if out:
                if depth == 0:
                    out.append("\n")
                elif previous != "(":
                    out.append(" ")
            out.append(token)
            previous = token
            if token == "(":
                depth += 1
        if depth > 0:
            raise DecodeError(
                f"expected {depth} more ')' to close the open list(s)",
                text=encoded,
                position=len(encoded),
            )
        return "".join(out)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "codes": self.codes(),
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


def codebook_in(directory: str | Path) -> Codebook | None:
    """The codebook saved in a checkpoint directory, or None when it holds none.

    A file that is there but cannot be read raises CodebookError naming its path.
    """
    path = Path(directory) / CODEBOOK_FILE
    if not path.is_file():
        return None
    return Codebook.load(path)


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
        # one long list with None between examples: zip counts every run at C speed, and a
        # run that crosses an example boundary contains None and is dropped when scored
        joined: list[Unit | None] = []
        for seq in sequences:
            joined.extend(seq)
            joined.append(None)
        counts: Counter[tuple[Unit | None, ...]] = Counter()
        for length in range(2, max_fragment + 1):
            counts.update(zip(*(joined[k:] for k in range(length)), strict=False))
        scored: list[tuple[int, str, tuple[Unit, ...]]] = []
        for run, freq in counts.items():
            if freq < min_freq or None in run:
                continue
            gram = tuple(u for u in run if u is not None)
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


def recode(text: str, source: Codebook, target: Codebook) -> str:
    """`text` with every line that holds codes of `source` re-encoded with `target`.

    Each coded line (an encoded reasoning, or a coded step of an assorted one) is decoded to
    canonical text and encoded again; other lines (markers, canonical steps, the answer) are
    kept as they are, so an assorted reasoning keeps its canonical steps.
    """
    if source.version == target.version:
        return text
    return "\n".join(
        target.encode(source.decode(row)) if CODE.search(row) else row for row in text.split("\n")
    )
