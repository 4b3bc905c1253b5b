"""Codes as real tokens on the node: a model directory with codebook.json is served and decoded
with that codebook, the model card names it, and chat completions can return the decoded form.

The model under test is the embedded one extended with code tokens (codec.hf_extension) for a
codebook of its own: the default codebook's fragments under other codes, so anything decoded
with the default codebook instead reads differently, and a test can tell which one was used.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis

from bus import keys, queues
from bus.encoding import from_fields
from bus.events import EvalResult
from bus.settings import get_bus_settings
from codec.codebook import CODEBOOK_FILE, Codebook
from codec.domains import default_codebook, generate
from codec.modes import Mode
from codec.problem import Problem
from services.model.loading import load_model_and_tokenizer
from services.node.api.decoding import decode_reply
from services.node.config import NodeSettings, get_node_settings
from services.node.errors import ModelLoadError
from services.node.pulling.registry import Registry
from services.node.serving.handles import GenerationRequest, RequestHandle, Slot, TextDelta
from services.node.serving.loading import load_for_serving, serving_model
from services.node.worker import evaluation, generation
from services.node.worker.node_client import ModelGone, NodeClient, NodeUnavailable, Reply
from services.node.worker.runner import build_worker
from tests.faults import redis_server
from tests.faults.redis_server import KillableRedis
from tests.node.conftest import CODED
from tests.node.jobs_fixtures import MAX_TOKENS
from tests.rig.node import ADMIN_TOKEN, RunningNode

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
HI = [{"role": "user", "content": "hi"}]
killable_redis = redis_server.killable_redis  # a Redis of the test's own, that it may stop


def love_the_first_code(model: Any, tokenizer: Any) -> None:
    # tests/rig/node.py's love_markers, with <E000> in the place of " one": greedy, the
    # model wants 🤔, then <E000>, then 🛑, whatever the context.
    weight = model.get_input_embeddings().weight
    base = 50.0
    weight[:, 0] = base
    code = tokenizer.convert_tokens_to_ids("<E000>")
    (think,) = tokenizer.encode("🤔", add_special_tokens=False)
    (stop,) = tokenizer.encode("🛑", add_special_tokens=False)
    for token, factor in ((think, 1.3), (code, 1.2), (stop, 1.1)):
        weight[token, 0] = base * factor


@pytest.fixture(scope="session")
def code_loving_dir(tmp_path_factory: pytest.TempPathFactory, coded_model_dir: Path) -> Path:
    """The coded model made to write 🤔, then <E000> until the marker rules force 🛑."""
    from tests.rig.node import save_model_variant

    dest = tmp_path_factory.mktemp("code-lover") / "code-lover"
    save_model_variant(coded_model_dir, dest, love_the_first_code)
    (dest / CODEBOOK_FILE).write_bytes((coded_model_dir / CODEBOOK_FILE).read_bytes())
    return dest


def a_problem() -> Problem:
    return next(iter(generate("syllogism", count=1, difficulty=1, seed=3, split="train")))


def chat(node: RunningNode, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{node.url}/v1/chat/completions", json=body, timeout=60)


def data_lines(r: httpx.Response) -> list[dict[str, Any]]:
    lines = [line[len("data: ") :] for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


# --- the tokenizer and the engine's detokenizer -----------------------------------------------


def test_a_code_token_decodes_to_exactly_its_code_in_full_and_streaming(
    coded_model_dir: Path,
) -> None:
    model, tokenizer = load_model_and_tokenizer(coded_model_dir)
    code = tokenizer.convert_tokens_to_ids("<E005>")
    assert tokenizer.encode("<E005>", add_special_tokens=False) == [code]  # one token
    assert tokenizer.decode([code], skip_special_tokens=True) == "<E005>"

    # The engine's incremental detokenizer (Slot.accept), fed the ids one by one.
    loaded = serving_model(model, tokenizer, CODED)
    handle = RequestHandle(CODED, 0, None)
    slot = Slot(handle, loaded, GenerationRequest(max_tokens=1000), [], lambda _m: None)
    text = "🤔🤔\n<E005>(let v1 3)<E012>\n🛑🛑\nvalid"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert code in ids
    for token in ids:
        assert not slot.accept(token)
    slot.finish("stop")
    deltas = [e.text for e in handle.stream(timeout=10) if isinstance(e, TextDelta)]
    assert "".join(deltas) == text
    assert "<E005>" in deltas and "<E012>" in deltas  # each code streamed whole, on its own


def test_loading_reads_the_codebook_and_refuses_a_corrupt_one(
    coded_model_dir: Path,
    own_codebook: Codebook,
    embedded_dir: Path,
    node_settings_factory: Callable[..., NodeSettings],
    tmp_path: Path,
) -> None:
    settings = node_settings_factory()
    loaded = load_for_serving(coded_model_dir, CODED, settings)
    assert loaded.codebook is not None and loaded.codebook.version == own_codebook.version
    assert load_for_serving(embedded_dir, "plain", settings).codebook is None

    broken = tmp_path / "broken"
    broken.mkdir()
    for f in coded_model_dir.iterdir():
        (broken / f.name).symlink_to(f)
    (broken / CODEBOOK_FILE).unlink()
    (broken / CODEBOOK_FILE).write_text('{"schema": "regime3.codebook", "schema_version": 1')
    with pytest.raises(ModelLoadError, match=CODEBOOK_FILE) as caught:
        load_for_serving(broken, "broken", settings)
    assert caught.value.kind == "invalid"


def test_a_tokenizer_holding_the_codes_as_special_tokens_is_refused(
    embedded_dir: Path,
    own_codebook: Codebook,
    node_settings_factory: Callable[..., NodeSettings],
    tmp_path: Path,
) -> None:
    from tokenizers import AddedToken

    from tests.rig.node import save_model_variant

    def special_codes(model: Any, tokenizer: Any) -> None:
        tokenizer.add_tokens([AddedToken(c, special=True) for c in own_codebook.codes()])
        model.resize_token_embeddings(len(tokenizer))

    dest = save_model_variant(embedded_dir, tmp_path / "special", special_codes)
    own_codebook.save(dest / CODEBOOK_FILE)
    with pytest.raises(ModelLoadError, match="as special tokens") as caught:
        load_for_serving(dest, "special", node_settings_factory())
    assert caught.value.kind == "invalid" and "add_codes" in str(caught.value)


# --- the decoded form of a reply -------------------------------------------------------------


def test_a_reply_decodes_with_the_models_codebook_not_the_default(own_codebook: Codebook) -> None:
    problem = a_problem()
    reply = problem.assistant_content(Mode.ENCODED, own_codebook, random.Random(1))
    assert "<E" in reply
    fields = decode_reply(reply, own_codebook)
    assert fields == {
        "canonical": problem.canonical_reasoning,
        "answer": problem.golden_text,
        "codebook": own_codebook.version,
        "decode_error": None,
    }
    # The same codes read with the default codebook mean other fragments.
    assert decode_reply(reply, None)["canonical"] != problem.canonical_reasoning


@pytest.mark.parametrize("mode", [Mode.CANONICAL, Mode.ASSORTED])
def test_canonical_and_assorted_replies_decode_to_the_canonical_form(
    own_codebook: Codebook, mode: Mode
) -> None:
    problem = a_problem()
    for seed in range(4):  # assorted: several m, codes then canonical text
        reply = problem.assistant_content(mode, own_codebook, random.Random(seed))
        fields = decode_reply(reply, own_codebook)
        assert fields["canonical"] == problem.canonical_reasoning, reply
        assert fields["answer"] == problem.golden_text and fields["decode_error"] is None


@pytest.mark.parametrize(
    ("reply", "canonical", "answer", "error"),
    [
        ("🤔 just some words 🛑🛑 valid", None, "valid", "English"),
        ("🤔🤔\n(mid cats)", None, None, "no 🛑 marker"),
        ("🤔\n(mid cats)\n<E999>\n🛑🛑\nvalid", None, "valid", "unknown code <E999>"),
        ("🤔\n(mid cats\n🛑🛑\nvalid", None, "valid", "reasoning:"),
        ("🤔\n(mid cats)\n🛑🛑\n(((", "(mid cats)", None, "answer:"),
        ("🤔\n(mid cats)\n🛑🛑", "(mid cats)", None, "nothing after the 🛑"),
    ],
)
def test_what_cannot_be_decoded_is_named(
    own_codebook: Codebook, reply: str, canonical: str | None, answer: str | None, error: str
) -> None:
    fields = decode_reply(reply, own_codebook)
    assert (fields["canonical"], fields["answer"]) == (canonical, answer)
    assert error in fields["decode_error"]


# --- over HTTP -----------------------------------------------------------------------------


def test_the_node_serves_a_coded_model_names_its_codebook_and_decodes_replies(
    node: RunningNode, coded_model_dir: Path, own_codebook: Codebook
) -> None:
    version = own_codebook.version
    r = httpx.post(
        f"{node.url}/models/register",
        json={"id": CODED, "path": str(coded_model_dir)},
        headers=ADMIN,
    )
    assert r.status_code == 200, r.text
    # Registered, not active yet: its card and the listing name its codebook already.
    card = httpx.get(f"{node.url}/v1/models/{CODED}").json()
    assert (card["active"], card["codebook"]) == (False, version)
    listing = {m["id"]: m for m in httpx.get(f"{node.url}/models", headers=ADMIN).json()["models"]}
    assert listing[CODED]["codebook"] == version and listing["embedded-v1"]["codebook"] is None
    assert httpx.get(f"{node.url}/v1/models/embedded-v1").json()["codebook"] is None

    r = httpx.post(f"{node.url}/models/set_active", json={"id": CODED}, headers=ADMIN, timeout=120)
    assert r.status_code == 200, r.text
    assert httpx.get(f"{node.url}/v1/models").json()["data"][0]["codebook"] == version
    assert httpx.get(f"{node.url}/v1/models/{CODED}").json()["codebook"] == version
    for name in (CODED, "active"):
        served = httpx.get(f"{node.url}/v1/models/{name}/codebook").json()
        assert (served["model"], served["version"]) == (CODED, version)
        assert served["codebook"] == own_codebook.to_json()
    plain = httpx.get(f"{node.url}/v1/models/embedded-v1/codebook").json()
    assert (plain["version"], plain["codebook"]) == (None, None)
    r = httpx.get(f"{node.url}/v1/models/nonesuch/codebook")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"

    # The decoded fields ride on the message, decoded with the answering model's codebook.
    base = {"messages": HI, "max_tokens": 6, "temperature": 0}
    message = chat(node, {**base, "regime3": {"decode": True}}).json()["choices"][0]["message"]
    assert message["codebook"] == version
    assert message["canonical"] is not None or message["decode_error"]
    assert message == {**message, **decode_reply(message["content"], own_codebook)}
    assert "canonical" not in chat(node, base).json()["choices"][0]["message"]

    # Streaming: only the last chunk, the one with finish_reason, carries them.
    with httpx.stream(
        "POST",
        f"{node.url}/v1/chat/completions",
        json={**base, "stream": True, "regime3": {"decode": True}},
        timeout=60,
    ) as r:
        chunks = data_lines(r)
    *body, last = chunks
    assert all("codebook" not in c["choices"][0]["delta"] for c in body)
    (choice,) = last["choices"]
    assert choice["finish_reason"] in ("stop", "length")
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert choice["delta"] == decode_reply(text, own_codebook)
    assert choice["delta"]["codebook"] == version


def test_a_model_writing_code_tokens_is_decoded_with_its_own_codebook(
    code_loving_dir: Path,
    own_codebook: Codebook,
    node_factory: Callable[..., RunningNode],
    r: redis.Redis,
) -> None:
    Registry(r, "test-node").register("code-lover", path=str(code_loving_dir))
    Registry(r, "test-node").set_active("code-lover")
    node = node_factory()
    # One 🤔, two reasoning tokens, then the forced 🛑🛑, then one answer token.
    rules = {"enabled": True, "open_max": 1, "close_min": 2, "close_max": 2, "max_tokens": 2}
    body = {"messages": HI, "max_tokens": 6, "temperature": 0, "thinking": rules}
    decode = {"regime3": {"decode": True}}
    message = chat(node, {**body, **decode}).json()["choices"][0]["message"]
    assert message["content"] == "🤔<E000><E000>🛑🛑<E000>"
    assert message["canonical"] == "(ans valid)\n(ans valid)"
    assert message["answer"] == "(ans valid)"
    assert (message["codebook"], message["decode_error"]) == (own_codebook.version, None)
    # The default codebook reads those codes as something else entirely.
    assert decode_reply(message["content"], None)["canonical"] != message["canonical"]

    with httpx.stream(
        "POST",
        f"{node.url}/v1/chat/completions",
        json={**body, **decode, "stream": True},
        timeout=60,
    ) as response:
        *chunks, last = data_lines(response)
    deltas = [c["choices"][0]["delta"].get("content") for c in chunks[1:]]
    assert deltas == ["🤔", "<E000>", "<E000>", "🛑", "🛑", "<E000>"]  # each code whole
    assert last["choices"][0]["finish_reason"] == "length"
    fields = {k: message[k] for k in ("canonical", "answer", "codebook", "decode_error")}
    assert last["choices"][0]["delta"] == fields

    # The official client sends the option through extra_body and keeps the extra fields.
    client = openai.OpenAI(base_url=f"{node.url}/v1", api_key="unused", max_retries=0)
    completion = client.chat.completions.create(
        model="active",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=6,
        temperature=0,
        extra_body={"thinking": rules, **decode},
    )
    assert (completion.choices[0].message.model_extra or {}) == fields


def test_codes_placed_in_the_padding_rows_of_a_padded_vocabulary_are_served(
    embedded_dir: Path,
    own_codebook: Codebook,
    node_factory: Callable[..., RunningNode],
    r: redis.Redis,
    tmp_path: Path,
) -> None:
    # As Qwen3 (151,669 tokens over 151,936 rows): the codes take unused padding rows, and
    # the rows still unused stay unsampled even when their logit is the highest.
    from codec.hf_extension import add_codes
    from tests.rig.node import save_model_variant

    def padded_with_codes(model: Any, tokenizer: Any) -> None:
        rows = len(tokenizer) + 300
        model.resize_token_embeddings(rows, mean_resizing=False)
        ids = add_codes(tokenizer, model, own_codebook.codes())
        assert model.get_input_embeddings().weight.shape[0] == rows > len(tokenizer) > max(ids)
        love_the_first_code(model, tokenizer)
        model.get_input_embeddings().weight[rows - 1, 0] = 50.0 * 2  # padding, never a token

    dest = save_model_variant(embedded_dir, tmp_path / "padded", padded_with_codes)
    own_codebook.save(dest / CODEBOOK_FILE)
    Registry(r, "test-node").register("padded", path=str(dest))
    Registry(r, "test-node").set_active("padded")
    node = node_factory()
    rules = {"enabled": True, "open_max": 1, "close_min": 2, "close_max": 2, "max_tokens": 2}
    body = {"messages": HI, "max_tokens": 6, "temperature": 0, "thinking": rules}
    message = chat(node, {**body, "regime3": {"decode": True}}).json()["choices"][0]["message"]
    assert message["content"] == "🤔<E000><E000>🛑🛑<E000>"
    assert message["canonical"] == "(ans valid)\n(ans valid)"


def test_a_version_still_finishing_requests_answers_with_the_codebook_it_was_loaded_with(
    coded_model_dir: Path,
    embedded_dir: Path,
    own_codebook: Codebook,
    node_factory: Callable[..., RunningNode],
    r: redis.Redis,
) -> None:
    # After a swap, the old version still answers the requests it took; the registry may
    # no longer list it, but its codebook is the one it was loaded with, not null (which
    # would tell the node-worker that the default codebook applies).
    registry = Registry(r, "test-node")
    registry.register(CODED, path=str(coded_model_dir))
    registry.register("plain", path=str(embedded_dir))
    registry.set_active(CODED)
    node = node_factory()
    with node.state.engine.lease() as held:  # a request still running on the coded model
        assert held.version == CODED
        swap = httpx.post(
            f"{node.url}/models/set_active", json={"id": "plain"}, headers=ADMIN, timeout=120
        )
        assert swap.status_code == 200, swap.text
        gone = httpx.delete(f"{node.url}/models/{CODED}", headers=ADMIN)
        assert gone.status_code == 200, gone.text
        assert node.state.engine.in_use().get(CODED) == 1
        served = httpx.get(f"{node.url}/v1/models/{CODED}/codebook")
        assert served.status_code == 200, served.text
        body = served.json()
        assert (body["model"], body["version"]) == (CODED, own_codebook.version)
        assert body["codebook"] == own_codebook.to_json()
        card = httpx.get(f"{node.url}/v1/models/{CODED}").json()
        assert (card["active"], card["codebook"]) == (False, own_codebook.version)
        plain = httpx.get(f"{node.url}/v1/models/active/codebook").json()
        assert (plain["model"], plain["version"]) == ("plain", None)
    # Its last request ended: nothing on this node knows it any more.
    r404 = httpx.get(f"{node.url}/v1/models/{CODED}/codebook")
    assert r404.status_code == 404 and r404.json()["error"]["code"] == "model_not_found"


def test_the_codebook_of_a_registered_model_is_a_503_not_null_while_redis_is_away(
    coded_model_dir: Path,
    own_codebook: Codebook,
    node_factory: Callable[..., RunningNode],
    killable_redis: KillableRedis,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The node on a Redis of this test's own, which the test stops.
    monkeypatch.setenv("R3_REDIS_URL", killable_redis.url)
    get_bus_settings.cache_clear()
    try:
        Registry(killable_redis.client(), "test-node").register(CODED, path=str(coded_model_dir))
        node = node_factory()  # serves the embedded model; CODED is registered, not loaded
        path = f"{node.url}/v1/models/{CODED}/codebook"
        assert httpx.get(path).json()["version"] == own_codebook.version
        killable_redis.kill()

        away = httpx.get(path, timeout=30)
        assert away.status_code == 503, away.text
        error = away.json()["error"]
        assert (error["type"], error["code"], error["param"]) == (
            "server_error",
            "registry_unavailable",
            "model",
        )
        assert CODED in error["message"] and "Redis" in error["message"]
        assert "127.0.0.1" not in error["message"]  # no address of the deployment's Redis
        # The worker's client reports it; it never reads it as "the default codebook".
        with NodeClient(node.url) as client, pytest.raises(NodeUnavailable, match="HTTP 503"):
            client.model_codebook(CODED)
        # What the engine holds needs no Redis.
        for name in ("active", node.state.engine.active.version):
            served = httpx.get(f"{node.url}/v1/models/{name}/codebook", timeout=30)
            assert served.status_code == 200 and served.json()["version"] is None
    finally:
        monkeypatch.setenv("R3_REDIS_URL", redis_url)
        get_bus_settings.cache_clear()


@pytest.mark.parametrize(
    ("option", "param"),
    [
        ({"decode": "yes"}, "regime3.decode"),
        ({"decode": 1}, "regime3.decode"),
        ({"decoded": True}, "regime3.decoded"),
        ("decode", "regime3"),
    ],
)
def test_a_bad_regime3_option_is_a_400_in_the_apis_shape(
    node: RunningNode, option: Any, param: str
) -> None:
    r = chat(node, {"messages": HI, "max_tokens": 2, "regime3": option})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert param in error["message"]


# --- the worker ------------------------------------------------------------------------------


def test_built_in_eval_sets_are_rendered_with_the_given_codebook(
    own_codebook: Codebook, tmp_path: Path
) -> None:
    items = evaluation.resolve_eval_set(
        "syllogism:1", validation_dir=tmp_path, mode=Mode.ENCODED, limit=3, codebook=own_codebook
    )
    problems = {p.id: p for p in evaluation.builtin_problems("syllogism:1")}
    for item in items:
        fields = decode_reply(item.completion, own_codebook)
        assert fields["canonical"] == problems[item.id].canonical_reasoning


def test_the_worker_evaluates_and_generates_with_the_serving_models_codebook(
    coded_model_dir: Path,
    own_codebook: Codebook,
    node_factory: Callable[..., RunningNode],
    r: redis.Redis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    Registry(r, "test-node").register(CODED, path=str(coded_model_dir))
    Registry(r, "test-node").set_active(CODED)
    node = node_factory()  # starts on the registry's active model: the coded one
    with NodeClient(node.url) as client:
        got = client.model_codebook(CODED)
        assert got is not None and got.version == own_codebook.version
        with pytest.raises(NodeUnavailable, match="HTTP 404: The model `nonesuch` does not exist"):
            client.model_codebook("nonesuch")
    monkeypatch.setenv("R3_NODE_URL", node.url)
    monkeypatch.setenv("R3_DATA_DIR", str(tmp_path / "node-data"))
    monkeypatch.setenv("R3_EVAL_MAX_TOKENS", str(MAX_TOKENS))
    monkeypatch.setenv("R3_GEN_MAX_TOKENS", str(MAX_TOKENS))
    monkeypatch.setenv("R3_NODE_NAME", node.state.node_name)
    get_node_settings.cache_clear()
    try:
        evaluate = queues.enqueue(
            r,
            queues.NODE_EVALUATE,
            kind="node",
            kwargs={"eval_set": "syllogism:1", "mode": "encoded", "limit": 2},
        )
        gen = queues.enqueue(
            r,
            queues.NODE_GENERATE,
            kind="node",
            kwargs={
                "domain": "syllogism",
                "count": 2,
                "mode": "encoded",
                "seed": 5,
                "upload": False,
                "name": "coded-shard",
            },
        )
        build_worker(r).work(burst=True)
        evaluate.refresh()
        gen.refresh()
        assert evaluate.get_status() == "finished", evaluate.exc_info
        assert gen.get_status() == "finished", gen.exc_info
        [event] = [from_fields(raw) for _id, raw in r.xrange(keys.STREAM_EVAL)]
        assert isinstance(event, EvalResult)
        assert (event.model_id, event.codebook) == (CODED, own_codebook.version)
        shard = Path(gen.return_value()["path"])
        lines = [json.loads(line) for line in shard.read_text().splitlines()]
        assert lines
        for line in lines:
            meta = line["meta"]
            assert meta["codebook"] == own_codebook.version
            content = line["messages"][-1]["content"]
            assert decode_reply(content, own_codebook)["decode_error"] is None
    finally:
        get_node_settings.cache_clear()


class SwappingClient:
    """The real node client, except that the replies come from models this test names: the
    problems in turn as `CODED` (with its own codes), the serving model (the default
    codebook's) and a model no longer on the node, as when a hot swap comes mid-job."""

    def __init__(self, node: NodeClient, serving: str, own: Codebook, problems: list[Problem]):
        self.node, self.serving, self.own = node, serving, own
        self.index = {p.question: i for i, p in enumerate(problems)}
        self.problems = problems

    def model_codebook(self, model: str) -> Codebook | None:
        return self.node.model_codebook(model)

    def chat(self, messages: list[dict[str, str]], **_: Any) -> Reply:
        i = self.index[messages[-1]["content"]]
        problem = self.problems[i]
        model, codebook = [
            (CODED, self.own),
            (self.serving, default_codebook()),
            ("vanished", self.own),
        ][i % 3]
        text = problem.assistant_content(Mode.ENCODED, codebook, random.Random(i))
        return Reply(text, model)


def test_generation_judges_and_stamps_each_reply_with_its_own_models_codebook(
    node: RunningNode,
    coded_model_dir: Path,
    own_codebook: Codebook,
    r: redis.Redis,
    tmp_path: Path,
) -> None:
    Registry(r, "test-node").register(CODED, path=str(coded_model_dir))
    count, seed = 9, 11
    problems = list(generate("syllogism", count=count, difficulty=1, seed=seed, split="train"))
    with NodeClient(node.url) as real:
        serving = real.active_model()
        assert serving != CODED
        with pytest.raises(ModelGone):
            real.model_codebook("vanished")
        client = SwappingClient(real, serving, own_codebook, problems)
        report = generation.generate_shard(
            client,  # type: ignore[arg-type]
            domain="syllogism",
            count=count,
            difficulty=1,
            mode=Mode.ENCODED,
            seed=seed,
            path=tmp_path / "shard.jsonl",
            max_tokens=MAX_TOKENS,
            temperature=0.0,
            concurrency=2,
            codebook=real.model_codebook(serving) or default_codebook(),
            model=serving,
        )
    lines = [json.loads(x) for x in (tmp_path / "shard.jsonl").read_text().splitlines()]
    by_model: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        by_model.setdefault(line["meta"]["model"], []).append(line)
    # Each model's own correct replies are kept, verified and stamped with its codebook.
    for model, codebook in ((CODED, own_codebook), (serving, default_codebook())):
        assert len(by_model[model]) == 3, model
        for line in by_model[model]:
            meta = line["meta"]
            assert (meta["source"], meta["codebook"]) == ("model", codebook.version), model
            content = line["messages"][-1]["content"]
            assert decode_reply(content, codebook)["decode_error"] is None
    # The model that left: nothing can tell what its codes meant, so nothing is written.
    assert "vanished" not in by_model
    result = report.to_dict()
    assert (result["problems"], result["lines"], result["dropped"]) == (count, 6, 3)
    [(reason, dropped)] = result["dropped_reasons"].items()
    assert dropped == 3 and "'vanished'" in reason and "codebook is unknown" in reason
    assert result["attempts"] == {"correct": 6}
    assert result["models"] == sorted([CODED, serving, "vanished"])
