"""Node serving throughput: 32 concurrent requests batched vs the same requests one by one.

Uses the engine directly (no HTTP, no Redis): the same requests, with the same sampling
settings and the same number of generated tokens each (stop tokens off), are first served
one at a time, then submitted together so the engine batches them. Throughput is generated
tokens per second; the ratio concurrent / sequential is the figure (target on a GPU: >= 5).

    python bench/node_serving.py --device cpu --model embedded --max-tokens 32 --threads 1
    python bench/node_serving.py --device cuda --model qwen-arch --out result.json

`qwen-arch` is Qwen3-0.6B's published architecture (hidden 1024, 28 layers, 16 heads, 8 KV
heads, head_dim 128, intermediate 3072, vocab 151936, tied embeddings), randomly
initialized in bf16, with the embedded tokenizer (sampling stays inside its entries).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from typing import Any

import torch
import transformers
from qwen_arch import QWEN3_06B  # bench/ is on sys.path when run as a script
from transformers import Qwen3Config, Qwen3ForCausalLM

from services.model.embedded import ensure_embedded_model
from services.model.loading import load_model_and_tokenizer, load_tokenizer
from services.node.engine import Engine, GenerationRequest, LoadedModel
from services.node.loading import serving_model

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


def build(model: str, device: torch.device) -> LoadedModel:
    if model == "embedded":
        path = ensure_embedded_model()
        net, tokenizer = load_model_and_tokenizer(path, device=device)
        loaded = serving_model(net, tokenizer, "embedded", path=path)
    else:
        tokenizer = load_tokenizer(ensure_embedded_model())
        config = Qwen3Config(**QWEN3_06B)
        with torch.device(device):
            net = Qwen3ForCausalLM(config).to(torch.bfloat16).eval()
        loaded = serving_model(net, tokenizer, "qwen3-0.6b-arch")
    # Stop tokens off: every request generates exactly max_tokens in both modes.
    return dataclasses.replace(loaded, eos_ids=frozenset())


def requests(count: int, max_tokens: int) -> list[GenerationRequest]:
    return [
        GenerationRequest(
            messages=[{"role": "user", "content": f"{TOPICS[i % len(TOPICS)]} (#{i})"}],
            max_tokens=max_tokens,
            temperature=0.7,
            top_p=0.95,
            thinking=None,
        )
        for i in range(count)
    ]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    loaded = build(args.model, device)
    engine = Engine(loaded, max_batch=args.requests, batch_wait_ms=args.batch_wait_ms)
    try:
        # Warm-up (kernels, allocator), not timed.
        for h in [engine.submit(r) for r in requests(min(4, args.requests), 4)]:
            h.result()
        work = requests(args.requests, args.max_tokens)

        sync(device)
        started = time.perf_counter()
        one_by_one = [engine.submit(r).result() for r in work]
        sync(device)
        sequential_s = time.perf_counter() - started

        before = engine.stats()
        started = time.perf_counter()
        handles = [engine.submit(r) for r in work]
        together = [h.result() for h in handles]
        sync(device)
        concurrent_s = time.perf_counter() - started
        after = engine.stats()
    finally:
        engine.close()
    seq_tokens = sum(c.completion_tokens for c in one_by_one)
    conc_tokens = sum(c.completion_tokens for c in together)
    seq_tps = seq_tokens / sequential_s
    conc_tps = conc_tokens / concurrent_s
    return {
        "bench": "node_serving",
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "model": args.model,
        "parameters": sum(p.numel() for p in loaded.model.parameters()),
        "dtype": str(next(loaded.model.parameters()).dtype),
        "requests": args.requests,
        "max_tokens": args.max_tokens,
        "sequential": {
            "seconds": round(sequential_s, 3),
            "tokens": seq_tokens,
            "tokens_per_s": round(seq_tps, 1),
        },
        "concurrent": {
            "seconds": round(concurrent_s, 3),
            "tokens": conc_tokens,
            "tokens_per_s": round(conc_tps, 1),
            "batches": after.batches - before.batches,
            "forward_passes": after.forward_passes - before.forward_passes,
            "largest_batch": max(c.batch_size for c in together),
        },
        "ratio": round(conc_tps / seq_tps, 2),
        "target_ratio": 5.0,
        "cpu_threads": torch.get_num_threads(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--model", choices=("embedded", "qwen-arch"), default="embedded")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's); 1 on a CPU shared with other work, where "
        "spinning OpenMP threads cost more than they give",
    )
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
