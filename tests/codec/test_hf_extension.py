"""Adding <E###> codes to a real (tiny) Qwen3 tokenizer and model: ids, rows, ties, reload."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import (
    AutoTokenizer,
    PreTrainedTokenizerBase,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from codec.errors import CodebookError
from codec.hf_extension import add_codes

CODES = {
    "<E000>": "(let v1 (add ",
    "<E001>": ") (check (= ",
    "<E002>": "(revise ",
    "<E003>": " 🛑🛑 ",
}


@pytest.fixture
def tokenizer(embedded_dir: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(embedded_dir, local_files_only=True)


@pytest.fixture
def model(embedded_dir: Path) -> Qwen3ForCausalLM:
    return Qwen3ForCausalLM.from_pretrained(embedded_dir, local_files_only=True)


def _expected_mean(weight: torch.Tensor, fragment_ids: list[int]) -> torch.Tensor:
    return weight[fragment_ids].float().mean(dim=0).to(weight.dtype)


def test_codes_are_ordinary_tokens(
    tokenizer: PreTrainedTokenizerBase, model: Qwen3ForCausalLM
) -> None:
    before = len(tokenizer)
    ids = add_codes(tokenizer, model, CODES)
    assert ids == list(range(before, before + len(CODES)))
    assert tokenizer.convert_ids_to_tokens(ids) == list(CODES)
    for i in ids:
        assert tokenizer.added_tokens_decoder[i].special is False
    assert not set(CODES) & set(tokenizer.all_special_tokens)
    text = "🤔🤔🤔🤔 <E000>3 4)<E001>v1 7))<E003>7"
    encoded = tokenizer.encode(text, add_special_tokens=False)
    assert ids[0] in encoded and ids[1] in encoded and ids[3] in encoded
    assert tokenizer.decode(encoded, skip_special_tokens=True) == text
    with_eos = [*encoded, tokenizer.convert_tokens_to_ids("<|im_end|>")]
    assert tokenizer.decode(with_eos, skip_special_tokens=True) == text


def test_rows_are_padded_so_new_ids_land_in_spare_rows(
    tokenizer: PreTrainedTokenizerBase, model: Qwen3ForCausalLM
) -> None:
    rows = model.get_input_embeddings().weight.shape[0]
    trained = len(tokenizer)
    assert rows > trained + len(CODES)
    old = model.get_input_embeddings().weight.detach().clone()
    fragments = {c: tokenizer.encode(f, add_special_tokens=False) for c, f in CODES.items()}

    ids = add_codes(tokenizer, model, CODES)

    weight = model.get_input_embeddings().weight.detach()
    # The matrix was not cut down to len(tokenizer), nor grown: the spare rows were enough.
    assert weight.shape[0] == rows == model.config.vocab_size
    assert torch.equal(weight[:trained], old[:trained])
    untouched = [i for i in range(trained, rows) if i not in ids]
    assert torch.equal(weight[untouched], old[untouched])
    for code, i in zip(CODES, ids, strict=True):
        expected = _expected_mean(old, fragments[code])
        assert torch.equal(weight[i], expected)
        assert not torch.equal(weight[i], old[i])
    # Tied: the output embedding is the same matrix, so it has the same new rows.
    head = model.get_output_embeddings().weight
    assert head.data_ptr() == weight.data_ptr()
    assert torch.equal(head[ids], weight[ids])


def test_more_codes_than_spare_rows_grows_the_matrix(
    tokenizer: PreTrainedTokenizerBase, model: Qwen3ForCausalLM
) -> None:
    rows = model.get_input_embeddings().weight.shape[0]
    trained = len(tokenizer)
    codes = {f"<E{n:03d}>": f"(add {n} v{n % 7})" for n in range(rows - trained + 20)}
    old = model.get_input_embeddings().weight.detach().clone()
    ids = add_codes(tokenizer, model, codes)
    weight = model.get_input_embeddings().weight.detach()
    assert weight.shape[0] == len(tokenizer) == trained + len(codes) == model.config.vocab_size
    assert max(ids) == weight.shape[0] - 1
    assert torch.equal(weight[:trained], old[:trained])
    fragment = tokenizer.encode(codes["<E010>"], add_special_tokens=False)
    # The fragment holds no code, so tokenizing it now gives the pre-code ids as well.
    assert all(i < trained for i in fragment)
    assert torch.equal(weight[ids[10]], _expected_mean(old, fragment))
    assert model.get_output_embeddings().weight.data_ptr() == weight.data_ptr()
    with torch.no_grad():
        logits = model(torch.tensor([ids[-3:]])).logits
    assert logits.shape[-1] == weight.shape[0]


def test_adding_twice_changes_nothing(
    tokenizer: PreTrainedTokenizerBase, model: Qwen3ForCausalLM
) -> None:
    first = add_codes(tokenizer, model, CODES)
    length, weight = len(tokenizer), model.get_input_embeddings().weight.detach().clone()
    assert add_codes(tokenizer, model, CODES) == first
    assert len(tokenizer) == length
    assert torch.equal(model.get_input_embeddings().weight, weight)
    # A later, larger codebook adds only what is new and keeps the old ids.
    more = {**CODES, "<E004>": "(ans "}
    ids = add_codes(tokenizer, model, more)
    assert ids[:4] == first and ids[4] == length
    assert torch.equal(model.get_input_embeddings().weight[:length], weight[:length])


def test_untied_model_sets_both_matrices(tokenizer: PreTrainedTokenizerBase) -> None:
    rows = len(tokenizer) // 128 * 128 + 128
    config = Qwen3Config(
        vocab_size=rows,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(config)
    embeddings, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert embeddings.data_ptr() != head.data_ptr()
    old_in, old_out = embeddings.detach().clone(), head.detach().clone()
    fragments = {c: tokenizer.encode(f, add_special_tokens=False) for c, f in CODES.items()}

    ids = add_codes(tokenizer, model, CODES)

    embeddings, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert embeddings.shape[0] == head.shape[0] == rows == model.config.vocab_size
    trained = min(ids)
    assert torch.equal(embeddings[:trained], old_in[:trained])
    assert torch.equal(head[:trained], old_out[:trained])
    for code, i in zip(CODES, ids, strict=True):
        assert torch.equal(embeddings[i], _expected_mean(old_in, fragments[code]))
        assert torch.equal(head[i], _expected_mean(old_out, fragments[code]))
        assert not torch.equal(embeddings[i], head[i])

    # Growing past the spare rows keeps the two matrices separate and both initialized.
    codes = {f"<E{n:03d}>": f"(mul {n} 2)" for n in range(10, 10 + rows - len(tokenizer) + 5)}
    more = add_codes(tokenizer, model, codes)
    embeddings, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert embeddings.shape[0] == head.shape[0] == len(tokenizer) == model.config.vocab_size
    assert embeddings.data_ptr() != head.data_ptr()
    fragment = tokenizer.encode(codes[f"<E{10 + len(codes) - 1:03d}>"], add_special_tokens=False)
    assert torch.equal(head[more[-1]], _expected_mean(old_out, fragment))
    assert torch.equal(embeddings[more[-1]], _expected_mean(old_in, fragment))


def test_survives_save_and_reload(
    tokenizer: PreTrainedTokenizerBase, model: Qwen3ForCausalLM, tmp_path: Path
) -> None:
    codes = {**CODES, **{f"<E{n:03d}>": f"(sub v{n} 1)" for n in range(10, 200)}}
    ids = add_codes(tokenizer, model, codes)
    tokenizer.save_pretrained(tmp_path)
    model.save_pretrained(tmp_path)

    again = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    reloaded = Qwen3ForCausalLM.from_pretrained(tmp_path, local_files_only=True)
    assert again.convert_tokens_to_ids(list(codes)) == ids
    for i in ids:
        assert again.added_tokens_decoder[i].special is False
    text = "<E000>1 2)<E150>"
    assert again.decode(again.encode(text), skip_special_tokens=True) == text
    assert torch.equal(reloaded.get_input_embeddings().weight, model.get_input_embeddings().weight)
    assert reloaded.config.vocab_size == model.config.vocab_size
    assert reloaded.get_output_embeddings().weight.data_ptr() == (
        reloaded.get_input_embeddings().weight.data_ptr()
    )
    # Adding the same codes to the reloaded pair is a no-op.
    assert add_codes(again, reloaded, codes) == ids
    assert len(again) == len(tokenizer)


def test_bad_codes_are_refused(tokenizer: PreTrainedTokenizerBase, model: Qwen3ForCausalLM) -> None:
    with pytest.raises(CodebookError, match="special token"):
        add_codes(tokenizer, model, {"<|im_end|>": "(add "})
    with pytest.raises(CodebookError, match="non-empty"):
        add_codes(tokenizer, model, {"<E000>": ""})
    assert add_codes(tokenizer, model, {}) == []


def test_default_codebook_end_to_end(
    tokenizer: PreTrainedTokenizerBase, model: Qwen3ForCausalLM, embedded_dir: Path
) -> None:
    from codec.codebook import code_name
    from codec.domains import default_codebook, sample_corpus

    codebook = default_codebook()
    codes = {code_name(i): codebook.fragment_text(i) for i in range(len(codebook))}
    plain = AutoTokenizer.from_pretrained(embedded_dir, local_files_only=True)
    ids = add_codes(tokenizer, model, codes)
    assert len(set(ids)) == len(codes)
    assert model.get_input_embeddings().weight.shape[0] >= len(tokenizer)
    encoded = [text for text in sample_corpus(40, seed=3) if "<E" in text]
    assert encoded
    for text in encoded:
        token_ids = tokenizer.encode(text, add_special_tokens=False)
        assert tokenizer.decode(token_ids, skip_special_tokens=True) == text
        # Every code in the text became exactly one token.
        assert sum(i in set(ids) for i in token_ids) == text.count("<E")
    before = sum(len(plain.encode(t, add_special_tokens=False)) for t in encoded)
    after = sum(len(tokenizer.encode(t, add_special_tokens=False)) for t in encoded)
    assert after < before


def test_a_code_already_added_as_a_special_token_is_refused(
    tokenizer: PreTrainedTokenizerBase, model: Qwen3ForCausalLM
) -> None:
    # all_special_tokens misses tokens added as AddedToken(special=True), yet decoding with
    # skip_special_tokens=True drops them: the check reads the added tokens' own flags.
    from tokenizers import AddedToken

    tokenizer.add_tokens([AddedToken("<E001>", special=True)])
    with pytest.raises(CodebookError, match=r"<E001>.*special token"):
        add_codes(tokenizer, model, CODES)
