"""`regime3 codec …`: build a codebook, encode and decode text, report compression."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from codec.canonical import canonical_text
from codec.codebook import (
    CODE,
    MAX_CODES,
    Codebook,
    build_codebook,
    code_name,
    codebook_in,
    recode,
    whitespace_count,
)
from codec.compression import DomainCompression, measure
from codec.domains import default_codebook
from codec.errors import CodecError
from codec.evaluate import split_output


def hf_token_counter(path: str, codebook: Codebook | None = None) -> Callable[[str], int]:
    """Count tokens with the HF tokenizer at `path`; the codebook's codes become added tokens,
    as they are when a model is trained on encoded data."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as err:
        raise click.BadParameter(
            f"cannot load a tokenizer from {path}: {err}", param_hint="--tokenizer"
        ) from None
    if codebook is not None:
        tokenizer.add_tokens([code_name(i) for i in range(len(codebook))])

    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))

    return count


def _load_codebook(path: str | None) -> Codebook:
    try:
        return Codebook.load(path) if path else default_codebook()
    except CodecError as err:
        raise click.BadParameter(str(err), param_hint="--codebook") from None


def _corpus_texts(paths: tuple[str, ...]) -> Iterator[str]:
    """Canonical texts from corpus files.

    A line that is a chat JSON object contributes its assistant reasoning when that reasoning
    is canonical (an S-expression); English reasoning is skipped. Any other non-empty line is
    read as canonical text and must parse.
    """
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                line = line.strip()
                if not line:
                    continue
                if line.startswith("{"):
                    try:
                        messages = json.loads(line)["messages"]
                        content = next(m["content"] for m in messages if m["role"] == "assistant")
                    except (ValueError, KeyError, TypeError, StopIteration):
                        raise click.BadParameter(
                            f"{path}:{number}: not a chat line with an assistant message",
                            param_hint="--corpus",
                        ) from None
                    parts = split_output(content)
                    if parts is None or not parts[0].startswith("("):
                        continue
                    line = parts[0]
                try:
                    yield canonical_text(line)
                except CodecError as err:
                    raise click.BadParameter(
                        f"{path}:{number}: {err}", param_hint="--corpus"
                    ) from None


@click.group("codec")
def codec_group() -> None:
    """Canonical reasoning: codebooks, encoding, decoding, compression reports."""


@codec_group.command("build")
@click.option(
    "--corpus",
    "corpus",
    required=True,
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Corpus file (chat JSONL or one canonical text a line); repeat for more.",
)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Codebook JSON.")
@click.option("--size", default=256, show_default=True, type=click.IntRange(1, MAX_CODES))
@click.option("--min-freq", default=5, show_default=True, type=click.IntRange(min=1))
@click.option("--max-fragment", default=12, show_default=True, type=click.IntRange(min=2))
@click.option(
    "--tokenizer", type=click.Path(exists=True), help="HF tokenizer folder to score with."
)
def build_command(
    corpus: tuple[str, ...],
    out: str,
    size: int,
    min_freq: int,
    max_fragment: int,
    tokenizer: str | None,
) -> None:
    """Learn a codebook from canonical reasoning."""
    texts = list(_corpus_texts(corpus))
    if not texts:
        raise click.BadParameter(
            "no canonical reasoning found; generate some with "
            "`regime3 data generate --mode canonical`",
            param_hint="--corpus",
        )
    counter = hf_token_counter(tokenizer) if tokenizer else whitespace_count
    try:
        codebook = build_codebook(
            texts,
            size=size,
            min_freq=min_freq,
            max_fragment=max_fragment,
            count_tokens=counter,
            tokenizer_name=tokenizer or "whitespace",
        )
    except CodecError as err:
        raise click.ClickException(str(err)) from None
    codebook.save(out)
    click.echo(f"wrote {out}: {len(codebook)} codes from {len(texts)} texts", err=True)


def _inputs(texts: tuple[str, ...]) -> Iterator[tuple[str, str]]:
    if texts:
        for index, text in enumerate(texts, start=1):
            yield f"argument {index}", text
        return
    for number, line in enumerate(sys.stdin, start=1):
        if line.strip():
            yield f"stdin line {number}", line.rstrip("\n")


@codec_group.command("encode")
@click.argument("texts", nargs=-1)
@click.option("--codebook", "codebook_path", type=click.Path(exists=True, dir_okay=False))
def encode_command(texts: tuple[str, ...], codebook_path: str | None) -> None:
    """Canonicalize and encode each TEXT (or each stdin line)."""
    codebook = _load_codebook(codebook_path)
    for where, text in _inputs(texts):
        try:
            click.echo(codebook.encode(canonical_text(text)))
        except CodecError as err:
            raise click.ClickException(f"{where}: {err}") from None


@codec_group.command("decode")
@click.argument("texts", nargs=-1)
@click.option("--codebook", "codebook_path", type=click.Path(exists=True, dir_okay=False))
def decode_command(texts: tuple[str, ...], codebook_path: str | None) -> None:
    """Decode each encoded TEXT (or each stdin line) to canonical text."""
    codebook = _load_codebook(codebook_path)
    for where, text in _inputs(texts):
        try:
            click.echo(codebook.decode(text))
        except CodecError as err:
            raise click.ClickException(f"{where}: {err}") from None


def _codebook_at(path: str, hint: str) -> Codebook:
    """A codebook JSON, or the codebook.json of a checkpoint (or model) directory."""
    try:
        if Path(path).is_dir():
            found = codebook_in(path)
            if found is None:
                raise click.BadParameter(
                    f"{path} holds no codebook.json (a run without code tokens); pass a "
                    "codebook JSON",
                    param_hint=hint,
                )
            return found
        return Codebook.load(path)
    except CodecError as err:
        raise click.BadParameter(str(err), param_hint=hint) from None


def recode_line(
    line: dict[str, Any], target: Codebook, sources: dict[str, Codebook], where: str
) -> bool:
    """Re-encode the coded lines of every assistant turn of `line` with `target`, in place;
    True when anything changed. `sources` maps versions to codebooks; "" is the one for lines
    without a meta.codebook stamp."""
    meta = line.get("meta") if isinstance(line.get("meta"), dict) else None
    stamp = meta.get("codebook") if meta is not None else None
    turns = [m for m in line.get("messages", []) if isinstance(m, dict)]
    coded = [m for m in turns if m.get("role") == "assistant" and CODE.search(str(m["content"]))]
    if not coded or stamp == target.version:
        return False
    source = sources.get(stamp if isinstance(stamp, str) else "")
    if source is None:
        which = f"is stamped {stamp}" if stamp else "has codes but no meta.codebook"
        raise click.ClickException(
            f"{where} {which}: pass the codebook it was encoded with as --from"
        )
    for message in coded:
        try:
            message["content"] = recode(str(message["content"]), source, target)
        except CodecError as err:
            raise click.ClickException(f"{where}: {err}") from None
    if meta is not None:
        if any(CODE.search(str(m["content"])) for m in coded):
            meta["codebook"] = target.version
        else:
            meta.pop("codebook", None)
    return True


@codec_group.command("recode")
@click.argument("data", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--codebook",
    "target_path",
    required=True,
    type=click.Path(exists=True),
    help="The codebook to encode with: a JSON, or a checkpoint directory (its codebook.json).",
)
@click.option(
    "--from",
    "source_path",
    type=click.Path(exists=True),
    help="The codebook the file was encoded with (default: the built-in one, for lines it "
    "stamped); needed for lines without meta.codebook.",
)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output JSONL file.")
def recode_command(data: str, target_path: str, source_path: str | None, out: str) -> None:
    """Re-encode a chat JSONL file's codes with another codebook (e.g. a run's own).

    Each reasoning line with codes is decoded with the codebook it was written with and
    encoded again with --codebook, so encoded lines stay encoded and assorted lines keep
    their canonical steps; meta.codebook names the new version. Other lines are copied as
    they are.
    """
    target = _codebook_at(target_path, "--codebook")
    builtin = default_codebook()
    sources = {builtin.version: builtin}
    if source_path is not None:
        source = _codebook_at(source_path, "--from")
        sources[source.version] = source
        sources[""] = source
    if Path(out).resolve() == Path(data).resolve():
        raise click.BadParameter("write to another file than the input", param_hint="--out")
    partial = Path(f"{out}.part")
    changed = total = 0
    try:
        with open(data, encoding="utf-8") as src, open(partial, "w", encoding="utf-8") as dst:
            for number, text in enumerate(src, start=1):
                if not text.strip():
                    dst.write(text)
                    continue
                total += 1
                try:
                    line = json.loads(text)
                except ValueError as err:
                    raise click.ClickException(f"{data}:{number}: not JSON ({err})") from None
                if isinstance(line, dict) and recode_line(
                    line, target, sources, f"{data}:{number}"
                ):
                    changed += 1
                    dst.write(json.dumps(line, ensure_ascii=False) + "\n")
                else:
                    dst.write(text if text.endswith("\n") else text + "\n")
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    click.echo(
        f"codec recode: {changed} of {total} lines re-encoded with codebook {target.version}",
        err=True,
    )


@codec_group.command("report")
@click.option("--tokenizer", type=click.Path(exists=True), help="HF tokenizer folder.")
@click.option("--codebook", "codebook_path", type=click.Path(exists=True, dir_okay=False))
@click.option("--per-level", default=40, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def report_command(
    tokenizer: str | None, codebook_path: str | None, per_level: int, seed: int, as_json: bool
) -> None:
    """Thinking tokens per example in each mode, and the ratios to English."""
    codebook = _load_codebook(codebook_path)
    counter = hf_token_counter(tokenizer, codebook) if tokenizer else whitespace_count
    rows = measure(counter, codebook, per_level=per_level, seed=seed)
    if as_json:
        click.echo(
            json.dumps(
                {"tokenizer": tokenizer or "whitespace", "domains": [r.to_dict() for r in rows]},
                indent=1,
            )
        )
        return
    click.echo(f"tokenizer: {tokenizer or 'whitespace'}")
    click.echo(render_table(rows))


def render_table(rows: list[DomainCompression]) -> str:
    head = (
        f"{'domain':12} {'n':>5} {'english':>8} {'canon':>8} {'encoded':>8} {'c/e':>6} {'x/e':>6}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.domain:12} {r.examples:5d} {r.english / r.examples:8.1f} "
            f"{r.canonical / r.examples:8.1f} {r.encoded / r.examples:8.1f} "
            f"{r.canonical_ratio:6.3f} {r.encoded_ratio:6.3f}"
        )
    return "\n".join(lines)


__all__ = ["codec_group", "hf_token_counter", "render_table"]
