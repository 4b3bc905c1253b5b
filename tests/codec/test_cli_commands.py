"""The `data` and `codec` click groups, run through CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from codec.codebook import Codebook
from codec.domains import default_codebook
from services.cli.codec_commands import codec_group
from services.cli.data_commands import data_group


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_generate_writes_chat_jsonl(tmp_path: Path) -> None:
    out = tmp_path / "word.jsonl"
    args = ["generate", "--domain", "word", "--count", "5", "--difficulty", "2", "--mode",
            "canonical", "--seed", "3", "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(data_group, args)
    assert result.exit_code == 0, result.output
    rows = lines(out)
    assert len(rows) == 5
    assert all(r["meta"]["mode"] == "canonical" for r in rows)  # type: ignore[index]
    again = tmp_path / "again.jsonl"
    CliRunner().invoke(data_group, [*args[:-1], str(again)])
    assert again.read_text() == out.read_text()


def test_generate_mixed_and_transitional(tmp_path: Path) -> None:
    for mode, extra in (("mixed", ["--mix", "english=0,canonical=1,encoded=1"]),
                        ("transitional", [])):  # fmt: skip
        out = tmp_path / f"{mode}.jsonl"
        result = CliRunner().invoke(
            data_group,
            ["generate", "--domain", "arithmetic", "--count", "40", "--mode", mode, "--out",
             str(out), *extra],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        modes = [r["meta"]["mode"] for r in lines(out)]  # type: ignore[index]
        if mode == "mixed":
            assert set(modes) == {"canonical", "encoded"}
        else:
            assert modes[0] == "english" and modes[-1] == "encoded"


def test_generate_assorted_stamps_the_codebook(tmp_path: Path) -> None:
    codebook_path = tmp_path / "cb.json"
    small = Codebook(default_codebook().fragments[:40])
    small.save(codebook_path)
    out = tmp_path / "assorted.jsonl"
    result = CliRunner().invoke(
        data_group,
        ["generate", "--domain", "syllogism", "--count", "30", "--mode", "assorted",
         "--codebook", str(codebook_path), "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = lines(out)
    assert {r["meta"]["mode"] for r in rows} == {"assorted"}  # type: ignore[index]
    stamps = {r["meta"].get("codebook") for r in rows}  # type: ignore[union-attr,index]
    assert stamps == {None, small.version}  # m = 0 writes no code, so no stamp


def test_generate_reports_progress_for_large_counts(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        data_group,
        ["generate", "--domain", "syllogism", "--count", "1000", "--out", str(tmp_path / "s")],
    )
    assert result.exit_code == 0
    assert "1000/1000 examples" in result.stderr


def test_generate_explains_bad_options(tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["generate", "--count", "1", "--out", str(tmp_path / "x.jsonl")]
    bad_level = runner.invoke(data_group, [*base, "--domain", "word", "--difficulty", "9"])
    assert bad_level.exit_code == 2 and "not a level of word" in bad_level.output
    bad_domain = runner.invoke(data_group, [*base, "--domain", "poetry"])
    assert bad_domain.exit_code == 2 and "poetry" in bad_domain.output
    bad_mix = runner.invoke(data_group, [*base, "--domain", "word", "--mix", "english=x"])
    assert bad_mix.exit_code == 2 and "--mix" in bad_mix.output
    no_dir = runner.invoke(
        data_group, ["generate", "--domain", "word", "--count", "1", "--out", "/nope/x.jsonl"]
    )
    assert no_dir.exit_code == 2 and "does not exist" in no_dir.output


def test_build_encode_decode(tmp_path: Path) -> None:
    runner = CliRunner()
    corpus = tmp_path / "corpus.jsonl"
    runner.invoke(
        data_group,
        ["generate", "--domain", "word", "--count", "120", "--difficulty", "3", "--mode",
         "canonical", "--out", str(corpus)],
    )  # fmt: skip
    book = tmp_path / "codebook.json"
    built = runner.invoke(
        codec_group,
        ["build", "--corpus", str(corpus), "--out", str(book), "--size", "30", "--min-freq", "3"],
    )
    assert built.exit_code == 0, built.output
    assert 0 < len(Codebook.load(book)) <= 30
    encoded = runner.invoke(
        codec_group, ["encode", "--codebook", str(book), "(let x (sub 10 3) 7) (ans x)"]
    )
    assert encoded.exit_code == 0 and "<E" in encoded.output
    decoded = runner.invoke(codec_group, ["decode", "--codebook", str(book)],
                            input=encoded.output)  # fmt: skip
    assert decoded.output == "(let v1 (add -3 10) 7)\n(ans v1)\n"


def test_encode_and_decode_errors_name_the_position() -> None:
    runner = CliRunner()
    bad = runner.invoke(codec_group, ["decode", "(ans 1)<E999>"])
    assert bad.exit_code == 1
    assert "argument 1: at position 7" in bad.output and "unknown code <E999>" in bad.output
    bad_in = runner.invoke(codec_group, ["encode"], input="(ans 1)\n(ans (\n")
    assert bad_in.exit_code == 1 and "stdin line 2" in bad_in.output


def test_build_refuses_a_corpus_without_canonical_reasoning(tmp_path: Path) -> None:
    corpus = tmp_path / "english.jsonl"
    CliRunner().invoke(
        data_group, ["generate", "--domain", "word", "--count", "3", "--out", str(corpus)]
    )
    result = CliRunner().invoke(
        codec_group, ["build", "--corpus", str(corpus), "--out", str(tmp_path / "b.json")]
    )
    assert result.exit_code == 2 and "no canonical reasoning" in result.output


def test_report_prints_ratios() -> None:
    result = CliRunner().invoke(codec_group, ["report", "--per-level", "2", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["tokenizer"] == "whitespace"
    assert {row["domain"] for row in data["domains"]} == {
        "arithmetic",
        "word",
        "syllogism",
        "selfcorrect",
    }
    assert default_codebook() is not None


def test_report_refuses_a_missing_tokenizer(tmp_path: Path) -> None:
    result = CliRunner().invoke(codec_group, ["report", "--tokenizer", str(tmp_path)])
    assert result.exit_code == 2 and "cannot load a tokenizer" in result.output


def test_a_generate_that_fails_midway_leaves_no_file(tmp_path) -> None:
    from click.testing import CliRunner

    from services.cli.data_commands import data_group

    out = tmp_path / "a1.jsonl"
    result = CliRunner().invoke(
        data_group,
        [
            "generate",
            "--domain",
            "arithmetic",
            "--count",
            "400",
            "--difficulty",
            "1",
            "--mode",
            "canonical",
            "--seed",
            "1",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 1
    assert (
        "run out of distinct problems" in result.output and "Nothing was written" in result.output
    )
    assert list(tmp_path.iterdir()) == []


def test_recode_moves_a_file_to_another_codebook(tmp_path: Path) -> None:
    builtin = default_codebook()
    small = Codebook(builtin.fragments[:40])
    target = tmp_path / "run"
    target.mkdir()
    small.save(target / "codebook.json")  # a checkpoint directory holds codebook.json
    data = tmp_path / "assorted.jsonl"
    generated = CliRunner().invoke(
        data_group,
        ["generate", "--domain", "syllogism", "--count", "20", "--mode", "assorted",
         "--out", str(data)],
    )  # fmt: skip
    assert generated.exit_code == 0, generated.output
    out = tmp_path / "recoded.jsonl"
    result = CliRunner().invoke(
        codec_group, ["recode", str(data), "--codebook", str(target), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    before, after = lines(data), lines(out)
    assert len(before) == len(after) == 20
    coded = 0
    for old, new in zip(before, after, strict=True):
        old_text = old["messages"][1]["content"]  # type: ignore[index]
        new_text = new["messages"][1]["content"]  # type: ignore[index]
        old_rows, new_rows = old_text.split("\n"), new_text.split("\n")
        assert len(old_rows) == len(new_rows)  # assorted lines keep their canonical steps
        for a, b in zip(old_rows, new_rows, strict=True):
            if "<E" in a:
                coded += 1
                assert builtin.decode(a) == small.decode(b)
            else:
                assert a == b
        stamp = new["meta"].get("codebook")  # type: ignore[union-attr]
        assert stamp == (small.version if "<E" in new_text else None)
    assert coded and f"re-encoded with codebook {small.version}" in result.stderr

    # Unstamped codes need --from; an unknown stamp names itself.
    bare = tmp_path / "bare.jsonl"
    rows = lines(out)
    for row in rows:
        row["meta"].pop("codebook", None)  # type: ignore[union-attr]
    bare.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    refused = CliRunner().invoke(
        codec_group,
        ["recode", str(bare), "--codebook", str(target / "codebook.json"), "--out",
         str(tmp_path / "x.jsonl")],
    )  # fmt: skip
    assert refused.exit_code == 1 and "no meta.codebook: pass" in refused.output
    assert not (tmp_path / "x.jsonl").exists() and not (tmp_path / "x.jsonl.part").exists()
