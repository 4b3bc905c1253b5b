"""Code tokens end to end on the real tiny model, CPU, real Redis: a file with <E###> codes
makes the run add its codebook's codes as single tokens, checkpoints keep the codebook, a
resumed run has it, and a file of another codebook fails its job."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import torch
from transformers import AutoModelForCausalLM

from bus import keys
from bus.status import StatusStore
from checkpoints.manifest import MANIFEST
from codec.codebook import CODEBOOK_FILE, Codebook, codebook_in
from codec.domains import default_codebook, generate
from codec.modes import Mode
from services.model.loading import load_model_and_tokenizer, load_tokenizer
from services.trainer.checkpoint import CheckpointStore
from services.trainer.codes import add_code_tokens
from services.trainer.errors import CodebookMismatch
from services.trainer.validate import validate_file
from tests.rig.trainer import events, make_trainer, settings

CODE = re.compile(r"<E\d{3}>")
FAST: dict[str, Any] = {
    "eval_steps": 1000,
    "layer_monitor_steps": 0,
    "max_length": 192,
    "micro_batch_tokens": 384,
    "tokens_per_step": 384,
}


def rows(mode: Mode, count: int, codebook: Codebook | None = None, seed: int = 1) -> list[Any]:
    """`count` syllogism d1 lines in `mode`, each with a unique meta.id."""
    rng = random.Random(seed)
    out = []
    for index, problem in enumerate(generate("syllogism", count=count, difficulty=1, seed=seed)):
        line = problem.render(mode, codebook, rng)
        line["meta"]["id"] = f"{mode.value}-{seed}-{index}"
        out.append(line)
    return out


def reasoning_of(line: dict[str, Any]) -> str:
    content: str = line["messages"][1]["content"]
    return content.split("\n", 1)[1].rsplit("\n", 2)[0]


def small_codebook() -> Codebook:
    """Another codebook: the built-in one's first 40 codes (another version)."""
    return Codebook(default_codebook().fragments[:40])


def test_an_encoded_file_makes_each_code_one_token_and_the_run_keeps_its_codebook(
    r: redis.Redis,
    embedded_dir: Path,
    tmp_path: Path,
    write_jsonl: Callable[..., Path],
    one_thread: None,
) -> None:
    codebook = default_codebook()
    data = rows(Mode.ENCODED, 24, codebook)
    assert {line["meta"]["codebook"] for line in data} == {codebook.version}
    encoded = write_jsonl(data, "encoded.jsonl")
    text = reasoning_of(data[0])
    trainer = make_trainer(r, embedded_dir, tmp_path, **FAST)
    assert trainer.codebook is None
    vocab_before = len(trainer.tokenizer)
    without = len(trainer.tokenizer.encode(text, add_special_tokens=False))

    result = trainer.train_file(encoded, job_id="enc", name="encoded.jsonl")
    assert result["steps"] >= 1 and result["rejected"] == 0 and result["examples"] == 24
    assert trainer.codebook is not None and trainer.codebook.version == codebook.version
    assert StatusStore(r).read().codebook == codebook.version  # regime3 status / the hash
    tokenizer = trainer.tokenizer
    assert len(tokenizer) == vocab_before + len(codebook)
    height = trainer.model.get_input_embeddings().weight.shape[0]
    assert height == max(6016, len(tokenizer))  # 116 spare rows are too few for 256 codes
    assert (
        trainer.model.get_output_embeddings().weight is trainer.model.get_input_embeddings().weight
    )

    # Each code is one token: the reasoning is its codes plus its literal pieces, tokenized
    # apart, and far shorter than the six-subwords-a-code tokenization before.
    ids = tokenizer.encode(text, add_special_tokens=False)
    codes = CODE.findall(text)
    literal = sum(
        len(tokenizer.encode(piece, add_special_tokens=False))
        for piece in CODE.split(text)
        if piece
    )
    assert len(ids) == len(codes) + literal
    assert sorted(tokenizer.convert_ids_to_tokens(i) for i in ids if i >= vocab_before) == sorted(
        codes
    )
    assert len(ids) < 0.5 * without, (len(ids), without)
    # The trainer's own chat tokenizer sees the codes too (the loss is on these tokens).
    encoded_line = trainer.chat.encode(data[0]["messages"])
    assert sum(int(i) >= vocab_before for i in encoded_line.input_ids) == len(codes)

    # The checkpoint: codebook.json listed in the manifest, its version in `codebook`.
    latest = CheckpointStore(tmp_path / "ckpt").load_latest()
    assert latest is not None
    manifest = json.loads((latest.path / MANIFEST).read_text())
    assert manifest["codebook"] == codebook.version
    assert CODEBOOK_FILE in {f["path"] for f in manifest["files"]}
    saved = codebook_in(latest.path)
    assert saved is not None and saved.version == codebook.version
    alerts = [e for e in events(r, keys.STREAM_ALERTS) if e.code == "code_tokens"]
    assert len(alerts) == 1 and codebook.version in alerts[0].message

    # A new trainer resumes with the codebook and the extended vocabulary.
    again = make_trainer(r, embedded_dir, tmp_path, **FAST)
    assert again.codebook is not None and again.codebook.version == codebook.version
    assert len(again.tokenizer) == len(tokenizer)
    assert again.model.get_input_embeddings().weight.shape[0] == height
    assert again.tokenizer.encode(text, add_special_tokens=False) == ids
    # More of the same codebook trains on without adding anything.
    more = write_jsonl(rows(Mode.ASSORTED, 16, codebook, seed=2), "assorted.jsonl")
    step = again.global_step
    assert again.train_file(more, job_id="more")["global_step"] > step
    assert len(again.tokenizer) == len(tokenizer)

    # A file encoded with another codebook fails, naming both versions, before any step.
    other = small_codebook()
    foreign = write_jsonl(rows(Mode.ENCODED, 8, other, seed=3), "foreign.jsonl")
    step = again.global_step
    with pytest.raises(CodebookMismatch) as info:
        again.train_file(foreign, job_id="foreign", name="foreign.jsonl")
    message = str(info.value)
    assert other.version in message and codebook.version in message
    assert "foreign.jsonl" in message and "regime3 codec recode" in message
    assert again.global_step == step and foreign.is_file()  # bad data never deletes the file
    assert len(again.tokenizer) == len(tokenizer)


def test_the_new_rows_start_as_their_fragments_mean(
    r: redis.Redis,
    embedded_dir: Path,
    tmp_path: Path,
    write_jsonl: Callable[..., Path],
    one_thread: None,
) -> None:
    codebook = default_codebook()
    # A negligible learning rate: the weights after the file are the ones the codes got.
    trainer = make_trainer(r, embedded_dir, tmp_path, learning_rate=1e-12, **FAST)
    trainer.train_file(write_jsonl(rows(Mode.ENCODED, 6, codebook), "e.jsonl"))
    model, tokenizer = load_model_and_tokenizer(embedded_dir)
    original = model.get_input_embeddings().weight
    weight = trainer.model.get_input_embeddings().weight
    vocab = trainer.tokenizer.get_vocab()
    for index in (0, 7, len(codebook) - 1):
        fragment = codebook.fragment_text(index)
        subwords = tokenizer.encode(fragment, add_special_tokens=False)
        expected = original[subwords].mean(dim=0)
        code = f"<E{index:03d}>"
        torch.testing.assert_close(weight[vocab[code]], expected)
    # The vocabulary's rows are untouched; the 116 padding rows went to the first codes.
    torch.testing.assert_close(weight[: len(tokenizer)], original[: len(tokenizer)])
    assert vocab["<E000>"] == len(tokenizer) and weight.shape[0] == len(tokenizer) + len(codebook)


def test_english_and_canonical_data_add_no_tokens(
    r: redis.Redis,
    embedded_dir: Path,
    tmp_path: Path,
    write_jsonl: Callable[..., Path],
    one_thread: None,
) -> None:
    trainer = make_trainer(r, embedded_dir, tmp_path, **FAST)
    vocab, weight = len(trainer.tokenizer), trainer.model.get_input_embeddings().weight
    data = rows(Mode.ENGLISH, 6) + rows(Mode.CANONICAL, 6, seed=2)
    trainer.train_file(write_jsonl(data, "plain.jsonl"))
    assert trainer.codebook is None and len(trainer.tokenizer) == vocab
    assert trainer.model.get_input_embeddings().weight is weight
    latest = CheckpointStore(tmp_path / "ckpt").load_latest()
    assert latest is not None and latest.manifest.codebook is None
    assert codebook_in(latest.path) is None


def test_the_optimizer_follows_a_resized_embedding_with_its_moments(
    r: redis.Redis,
    embedded_dir: Path,
    tmp_path: Path,
    write_jsonl: Callable[..., Path],
    one_thread: None,
) -> None:
    trainer = make_trainer(r, embedded_dir, tmp_path, **FAST)
    trainer.train_file(write_jsonl(rows(Mode.CANONICAL, 8), "first.jsonl"))
    old = trainer.model.get_input_embeddings().weight
    state = trainer.optimizer.state[old]
    moments = {k: v.clone() for k, v in state.items() if torch.is_tensor(v) and v.dim() == 2}
    assert set(moments) == {"exp_avg", "exp_avg_sq"} and moments["exp_avg"].abs().sum() > 0
    step = state["step"].clone() if torch.is_tensor(state["step"]) else state["step"]

    codebook = default_codebook()
    added = add_code_tokens(trainer.tokenizer, trainer.model, trainer.optimizer, codebook)
    new = trainer.model.get_input_embeddings().weight
    # (transformers swaps the matrix inside the same Parameter; either way the optimizer
    # must hold the parameter that is in the model, with moments of its new shape)
    assert added.resized and new.shape[0] == added.rows_after == 6156
    assert "model.embed_tokens.weight" in added.changed
    params = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    assert any(p is new for p in params)
    carried = trainer.optimizer.state[new]
    assert carried["step"] == step
    for key, before in moments.items():
        assert carried[key].shape == new.shape
        # the vocabulary's rows keep their moments; padding rows a code took and grown
        # rows start at zero
        torch.testing.assert_close(carried[key][:5900], before[:5900])
        assert not carried[key][5900:].any()
        assert not carried[key][added.fresh].any()

    # The run goes on with the resized embedding: the step trains it (the new rows move).
    trainer.codebook = codebook  # as Trainer._add_codes would set it
    trainer.forward.refresh()
    encoded = rows(Mode.ENCODED, 8, codebook, seed=4)
    before = new.detach().clone()
    trainer.chat = type(trainer.chat)(trainer.tokenizer)
    trainer.train_file(write_jsonl(encoded, "second.jsonl"))
    assert trainer.model.get_input_embeddings().weight is new
    assert not torch.equal(new[added.fresh], before[added.fresh])


@pytest.fixture
def padded_model(embedded_dir: Path, tmp_path: Path) -> Path:
    """The embedded model with 267 spare embedding rows, as Qwen3-0.6B has (151,669 of 151,936
    used): 256 codes then take padding rows and nothing is resized."""
    model = AutoModelForCausalLM.from_pretrained(embedded_dir, local_files_only=True)
    tokenizer = load_tokenizer(embedded_dir)
    model.resize_token_embeddings(len(tokenizer) + 267, mean_resizing=False)
    out = tmp_path / "padded"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_codes_take_padding_rows_without_a_resize(
    r: redis.Redis,
    padded_model: Path,
    tmp_path: Path,
    write_jsonl: Callable[..., Path],
    one_thread: None,
) -> None:
    trainer = make_trainer(r, padded_model, tmp_path, **FAST)
    weight = trainer.model.get_input_embeddings().weight
    rows_before, vocab = weight.shape[0], len(trainer.tokenizer)
    assert rows_before - vocab == 267
    codebook = default_codebook()
    trainer.train_file(write_jsonl(rows(Mode.ENCODED, 8, codebook), "e.jsonl"))
    assert trainer.model.get_input_embeddings().weight is weight  # the same Parameter
    assert weight.shape[0] == rows_before and len(trainer.tokenizer) == vocab + len(codebook)
    ids = trainer.tokenizer.convert_tokens_to_ids(list(codebook.codes()))
    assert min(ids) == vocab and max(ids) < rows_before
    assert trainer.optimizer.state[weight]["exp_avg"][ids].abs().sum() > 0  # trained since
    again = make_trainer(r, padded_model, tmp_path, **FAST)
    assert again.codebook is not None and again.codebook.version == codebook.version
    assert again.model.get_input_embeddings().weight.shape[0] == rows_before


def test_stamps_decide_the_codebook_and_conflicts_fail_before_any_step(
    r: redis.Redis,
    embedded_dir: Path,
    tmp_path: Path,
    write_jsonl: Callable[..., Path],
    one_thread: None,
) -> None:
    other = small_codebook()
    path = tmp_path / "other.json"
    other.save(path)
    # Two codebooks in one file: fails, naming both, whatever the run has.
    trainer = make_trainer(r, embedded_dir, tmp_path, codebook=path, **FAST)
    mixed = rows(Mode.ENCODED, 4, default_codebook()) + rows(Mode.ENCODED, 4, other, seed=2)
    with pytest.raises(CodebookMismatch) as info:
        trainer.train_file(write_jsonl(mixed, "two.jsonl"), name="two.jsonl")
    assert default_codebook().version in str(info.value) and other.version in str(info.value)
    assert trainer.global_step == 0 and trainer.codebook is None

    # A file of the built-in codebook in a run configured with another (R3_CODEBOOK) fails.
    with pytest.raises(CodebookMismatch, match=f"{default_codebook().version}.*{other.version}"):
        trainer.train_file(write_jsonl(rows(Mode.ENCODED, 4, default_codebook()), "d.jsonl"))

    # Unstamped lines with codes are read with the configured codebook: its 40 codes are added.
    unstamped = rows(Mode.ENCODED, 6, other, seed=5)
    for line in unstamped:
        del line["meta"]["codebook"]
    vocab = len(trainer.tokenizer)
    trainer.train_file(write_jsonl(unstamped, "unstamped.jsonl"))
    assert trainer.codebook is not None and trainer.codebook.version == other.version
    assert len(trainer.tokenizer) == vocab + len(other)


def test_validation_counts_coded_lines_and_their_stamps(
    chat: Any, write_jsonl: Callable[..., Path]
) -> None:
    codebook = default_codebook()
    data = rows(Mode.ENCODED, 4, codebook) + rows(Mode.ENGLISH, 3, seed=2)
    unstamped = rows(Mode.ENCODED, 2, codebook, seed=3)
    for line in unstamped:
        del line["meta"]["codebook"]
    bad = rows(Mode.ENCODED, 1, codebook, seed=4)[0]
    bad["meta"]["codebook"] = 7
    report = validate_file(
        write_jsonl([*data, *unstamped, bad]), chat, settings(reject_threshold=1.0)
    )
    assert report.coded_lines == 6 and report.unstamped_lines == 2
    assert dict(report.codebooks) == {codebook.version: 4}
    assert report.rejected == 1 and "meta.codebook 7" in report.first_rejects[0].reason
    assert report.to_dict()["codebooks"] == {codebook.version: 4}
