"""Node serving speed: our engine against transformers' own generation, same model, one run.

Measured, in this order, on one model (stop tokens off, so every request generates exactly
`--max-tokens`; sampling temperature 0.7, top_p 0.95):

- check: greedy tokens of our engine equal `model.generate` (transformers, SDPA) for a few
  prompts, on the embedded model in float32 (exact) and on the benchmark model (bf16,
  where kernel rounding may flip a near-tie: the fraction of matching tokens is reported);
- ours, one request at a time; ours with 32 and 128 concurrent requests: aggregate and
  per-request tokens/s, time to first token p50/p99;
- transformers' `generate(..., cache_implementation="static")`, one request at a time, and
  `generate_batch` (continuous batching, paged) with 32 requests: the reference.

    python bench/node_serving.py --device cuda --model qwen-arch --out result.json
    python bench/node_serving.py --device cpu --model embedded --max-tokens 32 --part ours

`qwen-arch` is Qwen3-0.6B's published architecture (bench/qwen_arch.py), randomly
initialized in bf16, with the embedded tokenizer (sampling stays inside its entries).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import platform
import statistics
import threading
import time
import traceback
from typing import Any

import torch
import transformers
from qwen_arch import QWEN3_06B  # bench/ is on sys.path when run as a script
from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

from services.model.embedded import ensure_embedded_model
from services.model.loading import load_model_and_tokenizer, load_tokenizer
from services.node.serving.engine import Engine, GenerationRequest, LoadedModel
from services.node.serving.kernels import use_fused_kernels
from services.node.serving.loading import serving_model

TOPICS = (
    "Add 17 and 25.",
    "Is every cat an animal if every cat is a mammal and every mammal is an animal?",
    "Tom has 3 apples and buys 4 more. How many apples does he have now?",
    "Explain in one line why the sky looks blue.",
    "What is 12 times 12?",
    "Name a prime number between 20 and 30.",
    "If all roses are flowers and some flowers fade quickly, must some roses fade quickly?",
    "Write a short greeting.",
)
TARGETS = {"one_request_tok_s": 400, "one_vs_static": 1.25, "c32_tok_s": 3000, "c32_vs_batch": 3}


def build(model: str, device: torch.device, dtype: torch.dtype | None = None) -> LoadedModel:
    if model == "embedded":
        path = ensure_embedded_model()
        net, tokenizer = load_model_and_tokenizer(path, device=device, dtype=dtype)
        loaded = serving_model(net, tokenizer, "embedded", path=path)
    else:
        tokenizer = load_tokenizer(ensure_embedded_model())
        torch.manual_seed(0)
        with torch.device(device):
            net = Qwen3ForCausalLM(Qwen3Config(**QWEN3_06B)).to(torch.bfloat16).eval()
        loaded = serving_model(net, tokenizer, "qwen3-0.6b-arch")
    # Stop tokens off: every request generates exactly max_tokens.
    return dataclasses.replace(loaded, eos_ids=frozenset())


def reference_model(loaded: LoadedModel) -> Any:
    """A second copy of the same weights with transformers' stock SDPA attention."""
    config = copy.deepcopy(loaded.model.config)  # its own: attention is set per config
    net = type(loaded.model)(config).to(loaded.device, next(loaded.model.parameters()).dtype)
    net.load_state_dict(loaded.model.state_dict())
    net.set_attn_implementation("sdpa")
    return net.eval()


def prompt_ids(loaded: LoadedModel, i: int) -> list[int]:
    messages = [{"role": "user", "content": f"{TOPICS[i % len(TOPICS)]} (#{i})"}]
    return list(
        loaded.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=False
        )
    )


def request(
    loaded: LoadedModel, i: int, max_tokens: int, temperature: float = 0.7
) -> GenerationRequest:
    return GenerationRequest(
        prompt_ids=prompt_ids(loaded, i), max_tokens=max_tokens, temperature=temperature, top_p=0.95
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# -- correctness -----------------------------------------------------------------------------


def greedy_check(loaded: LoadedModel, reference: Any, prompts: int, tokens: int) -> dict[str, Any]:
    engine = Engine(loaded, max_batch=8, batch_wait_ms=20)
    try:
        handles = [engine.submit(request(loaded, i, tokens, temperature=0)) for i in range(prompts)]
        ours = [h.result(timeout=300) for h in handles]
    finally:
        engine.close()
    same = total = exact = 0
    for i, completion in enumerate(ours):
        ids = torch.tensor([prompt_ids(loaded, i)], device=loaded.device)
        out = reference.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            do_sample=False,
            pad_token_id=0,
        )
        theirs = loaded.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        exact += completion.text == theirs
        a, b = completion.text, theirs
        prefix = next((k for k in range(min(len(a), len(b))) if a[k] != b[k]), min(len(a), len(b)))
        same += prefix
        total += max(len(a), len(b))
    return {
        "prompts": prompts,
        "tokens": tokens,
        "identical": exact,
        "common_prefix_chars": round(same / max(total, 1), 3),
    }


# -- ours ------------------------------------------------------------------------------------


def ours_sequential(
    engine: Engine, loaded: LoadedModel, count: int, max_tokens: int
) -> dict[str, Any]:
    ttft, tokens = [], 0
    sync(loaded.device)
    started = time.perf_counter()
    for i in range(count):
        handle = engine.submit(request(loaded, i, max_tokens))
        tokens += handle.result(timeout=600).completion_tokens
        assert handle.first_token_at is not None
        ttft.append(handle.first_token_at - handle.submitted_at)
    seconds = time.perf_counter() - started
    return {
        "requests": count,
        "tokens": tokens,
        "seconds": round(seconds, 3),
        "tokens_per_s": round(tokens / seconds, 1),
        "ttft_p50_ms": round(1000 * statistics.median(ttft), 2),
    }


def ours_concurrent(
    engine: Engine, loaded: LoadedModel, count: int, max_tokens: int
) -> dict[str, Any]:
    work = [request(loaded, i, max_tokens) for i in range(count)]
    before = engine.stats()
    started = time.perf_counter()
    handles = [engine.submit(r) for r in work]
    done_at: dict[int, float] = {}

    def wait(h: Any) -> None:
        h.result(timeout=600)
        done_at[h.id] = time.monotonic()

    threads = [threading.Thread(target=wait, args=(h,)) for h in handles]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - started
    after = engine.stats()
    tokens = after.tokens_generated - before.tokens_generated
    ttft = [h.first_token_at - h.submitted_at for h in handles]
    per_request = [max_tokens / (done_at[h.id] - h.first_token_at) for h in handles]
    return {
        "requests": count,
        "tokens": tokens,
        "seconds": round(seconds, 3),
        "tokens_per_s": round(tokens / seconds, 1),
        "per_request_tokens_per_s_p50": round(statistics.median(per_request), 1),
        "ttft_p50_ms": round(1000 * pct(ttft, 0.5), 1),
        "ttft_p99_ms": round(1000 * pct(ttft, 0.99), 1),
        "largest_batch": after.largest_batch,
        "forward_passes": after.forward_passes - before.forward_passes,
    }


# -- transformers' reference -----------------------------------------------------------------


def hf_static(reference: Any, loaded: LoadedModel, count: int, max_tokens: int) -> dict[str, Any]:
    def one(i: int) -> int:
        ids = torch.tensor([prompt_ids(loaded, i)], device=loaded.device)
        out = reference.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_tokens,
            min_new_tokens=max_tokens,
            do_sample=True,
            temperature=0.7,
            top_p=0.95,
            cache_implementation="static",
            pad_token_id=0,
        )
        return int(out.shape[1] - ids.shape[1])

    t0 = time.perf_counter()
    one(0)  # warm-up (and compilation, if transformers compiles the static-cache forward)
    one(1)
    warm_s = time.perf_counter() - t0
    sync(loaded.device)
    started = time.perf_counter()
    tokens = sum(one(i) for i in range(count))
    sync(loaded.device)
    seconds = time.perf_counter() - started
    return {
        "requests": count,
        "tokens": tokens,
        "seconds": round(seconds, 3),
        "tokens_per_s": round(tokens / seconds, 1),
        "warm_up_s": round(warm_s, 1),
    }


def hf_generate_batch(
    reference: Any, loaded: LoadedModel, count: int, max_tokens: int
) -> dict[str, Any]:
    config = GenerationConfig(
        max_new_tokens=max_tokens,
        do_sample=True,
        temperature=0.7,
        top_p=0.95,
        eos_token_id=-1,
        pad_token_id=0,
    )
    inputs = [prompt_ids(loaded, i) for i in range(count)]
    reference.generate_batch(inputs=inputs[:4], generation_config=config, progress_bar=False)
    sync(loaded.device)
    started = time.perf_counter()
    outputs = reference.generate_batch(inputs=inputs, generation_config=config, progress_bar=False)
    sync(loaded.device)
    seconds = time.perf_counter() - started
    tokens = sum(len(o.generated_tokens) for o in outputs.values())
    return {
        "requests": count,
        "tokens": tokens,
        "seconds": round(seconds, 3),
        "tokens_per_s": round(tokens / seconds, 1),
    }


def save(args: argparse.Namespace, out: dict[str, Any]) -> None:
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(json.dumps(out, indent=2) + "\n")


class _Skip(Exception):
    pass


def attempt(name: str, fn: Any, *args: Any) -> dict[str, Any]:
    print(f"-- {name}", flush=True)
    started = time.perf_counter()
    try:
        result: dict[str, Any] = fn(*args)
    except Exception as exc:  # a reference that fails on this version is reported, not fatal
        traceback.print_exc()
        result = {"error": f"{type(exc).__name__}: {exc}"}
    result["wall_s"] = round(time.perf_counter() - started, 1)
    print(f"   {json.dumps(result)}", flush=True)
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    out: dict[str, Any] = {
        "bench": "node_serving",
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "model": args.model,
        "max_tokens": args.max_tokens,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    ours, theirs = args.part in ("all", "ours"), args.part in ("all", "reference")
    if ours:
        small = build("embedded", device, torch.float32)
        out["check_embedded_fp32"] = attempt(
            "greedy check, embedded fp32", greedy_check, small, reference_model(small), 4, 48
        )
        del small
    loaded = build(args.model, device)
    out["parameters"] = sum(p.numel() for p in loaded.model.parameters())
    out["dtype"] = str(next(loaded.model.parameters()).dtype)
    reference = reference_model(loaded)
    if ours:
        out["check_model"] = attempt(
            "greedy check, bench model", greedy_check, loaded, reference, 3, 32
        )
    engine = Engine(loaded, max_batch=max(args.concurrency), batch_wait_ms=args.batch_wait_ms)
    try:
        if not ours:
            raise _Skip
        # Warm-up, not timed: kernels, the allocator, a captured step per bucket used below.
        for n in sorted({1, *args.concurrency}):
            for h in [engine.submit(request(loaded, i, 8)) for i in range(n)]:
                h.result(timeout=600)
        out["ours_one"] = attempt(
            "ours, one at a time", ours_sequential, engine, loaded, args.sequential, args.max_tokens
        )
        for n in args.concurrency:
            out[f"ours_c{n}"] = attempt(
                f"ours, {n} concurrent", ours_concurrent, engine, loaded, n, args.max_tokens
            )
        serving = loaded.runtime.get("serving")
        out["captured_steps"] = serving.step.captures if serving else 0
        out["graphs_on"] = serving.step.graphs if serving else False
        out["kv_cache_mb"] = round(serving.cache.bytes() / 1e6, 1) if serving else 0
    except _Skip:
        pass
    finally:
        engine.close()
    if ours and use_fused_kernels(loaded.model):
        # Liger's RoPE patch is module-wide: the reference measured after this runs it too
        # (its norms and MLP stay stock), which can only make the reference faster.
        out["reference_with_liger_rope"] = theirs
        fused = dataclasses.replace(loaded)  # a fresh runtime: new cache, new captures
        out["check_fused"] = attempt("greedy check, fused", greedy_check, fused, reference, 3, 32)
        engine = Engine(fused, max_batch=max(args.concurrency), batch_wait_ms=args.batch_wait_ms)
        try:
            for n in sorted({1, *args.concurrency}):
                for h in [engine.submit(request(fused, i, 8)) for i in range(n)]:
                    h.result(timeout=600)
            out["fused_one"] = attempt(
                "ours+Liger, one at a time",
                ours_sequential,
                engine,
                fused,
                args.sequential,
                args.max_tokens,
            )
            for n in args.concurrency:
                out[f"fused_c{n}"] = attempt(
                    f"ours+Liger, {n} concurrent",
                    ours_concurrent,
                    engine,
                    fused,
                    n,
                    args.max_tokens,
                )
        finally:
            engine.close()
    if theirs:
        out["hf_generate_batch_c32"] = attempt(
            "transformers generate_batch, 32",
            hf_generate_batch,
            reference,
            loaded,
            32,
            args.max_tokens,
        )
        save(args, out)  # each figure kept, should a slow compile below run out of time
        out["hf_static_one"] = attempt(
            "transformers generate(static), one at a time",
            hf_static,
            reference,
            loaded,
            args.sequential,
            args.max_tokens,
        )
    if args.reference_json:  # measured by a --part reference process of the same run
        with open(args.reference_json) as handle:
            earlier = json.load(handle)
        for key in ("hf_static_one", "hf_generate_batch_c32"):
            out[key] = earlier.get(key, {})
    speed = {k: out.get(f"{k}_one", {}).get("tokens_per_s", 0) for k in ("ours", "fused")}
    best = max(speed, key=lambda k: speed[k])
    out["best"] = best
    one = out.get(f"{best}_one", {}).get("tokens_per_s", 0)
    c32 = out.get(f"{best}_c32", {}).get("tokens_per_s", 0)
    static = out.get("hf_static_one", {}).get("tokens_per_s")
    batch = out.get("hf_generate_batch_c32", {}).get("tokens_per_s")
    out["ratios"] = {
        "one_vs_static": round(one / static, 2) if static else None,
        "c32_vs_generate_batch": round(c32 / batch, 2) if batch else None,
    }
    out["targets"] = TARGETS
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--model", choices=("embedded", "qwen-arch"), default="embedded")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--sequential", type=int, default=4, help="requests one at a time")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    parser.add_argument(
        "--part",
        choices=("all", "ours", "reference"),
        default="all",
        help="run only our engine or only transformers' reference (two processes of one run "
        "keep one's slow start from eating the other's time)",
    )
    parser.add_argument("--reference-json", default=None, help="the reference part's result")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", default=None, help="write the result JSON here too")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible to torch")
    result = run(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()
