"""The engine: batching (proved by its counters), sampling options, and swap semantics."""

from __future__ import annotations

import dataclasses
import gc
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from services.model.loading import load_model_and_tokenizer
from services.node.errors import EngineBusy, GenerationError, PromptError
from services.node.serving.engine import Engine, Finished, GenerationRequest, LoadedModel, TextDelta
from services.node.serving.loading import serving_model

HELLO = [{"role": "user", "content": "hello there"}]


def load(path: Path, version: str) -> LoadedModel:
    model, tokenizer = load_model_and_tokenizer(path)
    return serving_model(model, tokenizer, version, path=path)


@pytest.fixture(scope="module")
def base(embedded_dir: Path) -> LoadedModel:
    return load(embedded_dir, "base")


@pytest.fixture
def engine(base: LoadedModel) -> Iterator[Engine]:
    engine = Engine(base, max_batch=8, batch_wait_ms=50)
    yield engine
    engine.close()


def greedy(max_tokens: int = 12, **fields: object) -> GenerationRequest:
    return GenerationRequest(
        messages=HELLO,
        max_tokens=max_tokens,
        temperature=0,
        **fields,  # type: ignore[arg-type]
    )


def test_concurrent_requests_share_batches(engine: Engine) -> None:
    handles = [engine.submit(greedy(8, seed=i)) for i in range(8)]
    results = [h.result(timeout=60) for h in handles]
    stats = engine.stats()
    assert stats.requests == 8
    assert stats.batches < 8, stats  # fewer batches than requests: they were batched
    assert stats.largest_batch > 1
    # One forward pass per token for the whole batch, not one per request and token.
    assert stats.forward_passes < sum(r.completion_tokens for r in results)
    assert {r.text for r in results} == {results[0].text}  # greedy: same prompt, same text


def test_batched_and_alone_give_the_same_greedy_text(engine: Engine) -> None:
    alone = engine.submit(greedy(10)).result(timeout=60)
    others = [
        GenerationRequest(messages=[{"role": "user", "content": "x" * n}], max_tokens=5)
        for n in (1, 30, 60)
    ]
    handles = [engine.submit(r) for r in others] + [engine.submit(greedy(10))]
    batched = handles[-1].result(timeout=60)
    assert batched.batch_size > 1  # left-padded among longer and shorter prompts
    assert batched.text == alone.text


def test_same_seed_same_text_whatever_shares_the_batch(engine: Engine) -> None:
    request = GenerationRequest(messages=HELLO, max_tokens=12, temperature=1.0, seed=1234)
    first = engine.submit(request).result(timeout=60).text
    handles = [engine.submit(GenerationRequest(messages=HELLO, max_tokens=12)) for _ in range(3)]
    handles.append(engine.submit(request))
    assert handles[-1].result(timeout=60).text == first
    different = engine.submit(GenerationRequest(messages=HELLO, max_tokens=12, seed=99))
    assert different.result(timeout=60).text != first


def test_max_tokens_and_stop_strings(engine: Engine) -> None:
    full = engine.submit(greedy(12)).result(timeout=60)
    assert full.finish_reason == "length" and full.completion_tokens == 12
    stop = full.text[len(full.text) // 2 : len(full.text) // 2 + 3]
    assert stop.strip(), full.text
    cut = engine.submit(greedy(12, stop=(stop,))).result(timeout=60)
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[: full.text.index(stop)]


def test_streamed_deltas_add_up_and_never_show_the_stop_string(engine: Engine) -> None:
    full = engine.submit(greedy(16)).result(timeout=60).text
    stop = full[-4:]
    deltas = []
    for event in engine.submit(greedy(16, stop=(stop,))).stream(timeout=60):
        if isinstance(event, TextDelta):
            deltas.append(event.text)
        else:
            assert isinstance(event, Finished)
            assert "".join(deltas) == event.text == full[: full.index(stop)]


def test_bad_prompts_are_refused_at_admission(engine: Engine, base: LoadedModel) -> None:
    assert base.max_positions is not None
    with pytest.raises(PromptError, match="context"):
        engine.submit(GenerationRequest(prompt_ids=[5] * base.max_positions, max_tokens=1))
    with pytest.raises(PromptError, match="chat template"):
        engine.submit(GenerationRequest(messages=[{"role": "user", "content": None}]))  # type: ignore[dict-item]
    assert engine.in_use() == {"base": 0}  # refused requests hold no model


def test_full_queue_is_refused(base: LoadedModel) -> None:
    engine = Engine(base, max_batch=1, batch_wait_ms=0, max_queue=1)
    try:
        handles = []
        with pytest.raises(EngineBusy, match="R3_NODE_MAX_QUEUE"):
            for _ in range(50):
                handles.append(engine.submit(greedy(30)))
        for h in handles:
            h.result(timeout=60)
    finally:
        engine.close()


def test_a_failing_batch_fails_its_requests_not_the_engine(base: LoadedModel) -> None:
    class Broken:
        """The real model's shape and weights, but its forward pass fails."""

        config = base.model.config

        def parameters(self) -> object:
            return base.model.parameters()

        def get_decoder(self) -> object:
            return self

        def get_output_embeddings(self) -> object:
            return self

        def __call__(self, **kwargs: object) -> object:
            raise RuntimeError("device fell over")

    broken = LoadedModel("broken", None, Broken(), base.tokenizer, base.device)
    engine = Engine(broken, batch_wait_ms=0)
    try:
        with pytest.raises(GenerationError, match="device fell over"):
            engine.submit(greedy(4)).result(timeout=60)
        engine.swap(base)
        assert engine.submit(greedy(4)).result(timeout=60).completion_tokens == 4
    finally:
        engine.close()


def test_cancelled_request_leaves_its_batch(engine: Engine) -> None:
    handle = engine.submit(greedy(500))
    events = handle.stream(timeout=60)
    next(events)
    handle.cancel()
    last = list(events)[-1]
    assert isinstance(last, Finished) and last.reason == "cancelled"
    assert last.completion_tokens < 500


# --- swaps ----------------------------------------------------------------------------------


def test_swap_in_flight_requests_finish_on_their_model(
    embedded_dir: Path, nudged_model_dir: Path
) -> None:
    """A request admitted before a swap is generated to its end on the old weights."""
    old_alone = Engine(load(embedded_dir, "old"))
    new_alone = Engine(load(nudged_model_dir, "new"))
    expected_old = old_alone.submit(greedy(40)).result(timeout=60).text
    expected_new = new_alone.submit(greedy(40)).result(timeout=60).text
    old_alone.close()
    new_alone.close()
    assert expected_old != expected_new  # the precondition: the two versions differ

    engine = Engine(load(embedded_dir, "old"), batch_wait_ms=0)
    old_model = weakref.ref(engine.active.model)
    try:
        in_flight = engine.submit(greedy(40))
        events = in_flight.stream(timeout=60)
        first = next(events)  # generation has started on the old model
        returned = engine.swap(load(nudged_model_dir, "new"))
        assert returned.version == "old"
        del returned
        after = engine.submit(greedy(40))
        assert engine.in_use()["old"] == 1  # the in-flight request still holds the old model
        rest = list(events)
        assert isinstance(first, TextDelta)
        assert isinstance(rest[-1], Finished) and rest[-1].text == expected_old
        assert in_flight.version == "old"
        done = after.result(timeout=60)
        assert (done.version, done.text) == ("new", expected_new)
        gc.collect()
        assert old_model() is None  # freed once its last request ended
        assert engine.in_use() == {"new": 0}
    finally:
        engine.close()


def test_lease_keeps_a_model_alive_across_a_swap(embedded_dir: Path, base: LoadedModel) -> None:
    engine = Engine(load(embedded_dir, "old"))
    try:
        with engine.lease() as held:
            model = weakref.ref(held.model)
            engine.swap(base)
            assert engine.active is base and held.version == "old"
            del held
            gc.collect()
            assert model() is not None
        gc.collect()
        assert model() is None
    finally:
        engine.close()


def test_swaps_under_concurrent_load_never_fail_a_request(
    embedded_dir: Path, nudged_model_dir: Path
) -> None:
    models = [load(embedded_dir, "a"), load(nudged_model_dir, "b")]
    engine = Engine(models[0], max_batch=4, batch_wait_ms=5)
    versions: list[str] = []
    errors: list[BaseException] = []

    def client() -> None:
        try:
            for _ in range(4):
                versions.append(engine.submit(greedy(6)).result(timeout=60).version)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    for i in range(6):
        engine.swap(models[(i + 1) % 2])
    for t in threads:
        t.join(timeout=120)
    engine.close()
    assert not errors
    assert len(versions) == 16 and set(versions) <= {"a", "b"}


def test_newcomers_join_a_running_batch_and_generate_the_same_text(engine: Engine) -> None:
    """Continuous batching: a request arriving mid-generation joins the running batch.

    Its KV cache is merged into the batch's (left-padded), so its greedy text must be what
    it generates alone, and the long request's text must not change either.
    """
    long_alone = engine.submit(greedy(120)).result(timeout=60).text
    short_request = GenerationRequest(
        messages=[{"role": "user", "content": "a different and much longer question " * 3}],
        max_tokens=8,
        temperature=0,
    )
    short_alone = engine.submit(short_request).result(timeout=60).text
    before = engine.stats()
    long_handle = engine.submit(greedy(120))
    events = long_handle.stream(timeout=60)
    next(events)  # the long request is generating
    short = engine.submit(short_request).result(timeout=60)
    long_rest = list(events)
    after = engine.stats()
    assert after.joined - before.joined == 1
    assert short.text == short_alone
    assert short.batch_size == 2
    assert isinstance(long_rest[-1], Finished) and long_rest[-1].text == long_alone


def test_after_a_swap_new_requests_start_while_the_old_batch_runs(
    embedded_dir: Path, nudged_model_dir: Path
) -> None:
    """Each model has its own running batch, stepped in turn: no wait for the old one to end."""
    engine = Engine(load(embedded_dir, "old"), batch_wait_ms=0)
    try:
        long_handle = engine.submit(greedy(400))
        events = long_handle.stream(timeout=60)
        next(events)
        engine.swap(load(nudged_model_dir, "new"))
        short = engine.submit(greedy(4)).result(timeout=60)
        assert short.version == "new"
        assert engine.in_use().get("old") == 1  # the old model's request is still generating
        last = list(events)[-1]
        assert isinstance(last, Finished) and last.completion_tokens == 400
    finally:
        engine.close()


def _hf_greedy(loaded: LoadedModel, messages: list[dict[str, str]], max_tokens: int) -> list[int]:
    tok = loaded.tokenizer
    prompt = tok.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    ids = torch.tensor([list(prompt)])
    out = loaded.model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_tokens,
        min_new_tokens=max_tokens,
        do_sample=False,
        pad_token_id=0,
    )
    return [int(t) for t in out[0, ids.shape[1] :]]


def test_greedy_tokens_equal_transformers_generate_for_rows_of_every_length(
    base: LoadedModel,
) -> None:
    """The slot cache, rows of different lengths in one step, slots freed and reused."""
    prompts = [[{"role": "user", "content": "hi " * n}] for n in (1, 9, 3, 30)]
    budgets = (6, 20, 3, 12)  # rows leave at different steps, their slots are reused
    engine = Engine(dataclasses.replace(base, eos_ids=frozenset()), max_batch=3, batch_wait_ms=50)
    try:
        handles = [
            engine.submit(
                GenerationRequest(prompt_ids=None, messages=p, max_tokens=n, temperature=0)
            )
            for p, n in zip(prompts, budgets, strict=True)
        ]
        texts = [h.result(timeout=120).text for h in handles]
    finally:
        engine.close()
    tok = base.tokenizer
    for p, n, text in zip(prompts, budgets, texts, strict=True):
        expected = tok.decode(_hf_greedy(base, p, n), skip_special_tokens=True)
        assert text == expected


def test_a_model_served_by_a_smaller_engine_first_gets_a_cache_of_the_new_size(
    base: LoadedModel,
) -> None:
    small = Engine(base, max_batch=2, batch_wait_ms=0)
    try:
        small.submit(greedy(2)).result(timeout=60)
    finally:
        small.close()
    big = Engine(base, max_batch=6, batch_wait_ms=200)
    try:
        handles = [big.submit(greedy(3)) for _ in range(6)]
        assert all(h.result(timeout=60).completion_tokens <= 3 for h in handles)
    finally:
        big.close()
