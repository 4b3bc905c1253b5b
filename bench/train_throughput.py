"""Training throughput and peak memory: regime3's step against the users' HF Trainer setup.

Both run in one process on the same GPU with the Qwen3-0.6B architecture (its published
config), random init, and the same synthetic data, shaped like the users' files: lengths
lognormal with a mean near 700 tokens, at most 4096, about 20% prompt tokens.

- baseline: transformers' Trainer, one example per row padded to the batch's longest, the
  model's default loss (full fp32 logits), fp32 weights with bf16 autocast, AdamW;
- regime3: examples packed best-fit into 4096-token rows with per-document positions (no
  attention across documents), 32k tokens per optimizer step in micro-batches, the chunked
  loss (no full logits), bf16 weights with BF16AdamW, activation checkpointing.

    python bench/train_throughput.py                      # both, the recorded run
    python bench/train_throughput.py --only regime3 --cap-gib 24 --examples 100000
    python bench/train_throughput.py --tiny --steps 3     # a CPU smoke run of the harness

Prints a table and writes JSON (--json-out).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from qwen_arch import QWEN3_06B  # bench/ is on sys.path when run as a script
from transformers import Qwen3Config, Qwen3ForCausalLM

from services.trainer.loss import IGNORE_INDEX, forward_loss
from services.trainer.optim import BF16AdamW
from services.trainer.packing import best_fit_decreasing

TINY = {**QWEN3_06B, "vocab_size": 4096, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 16}  # fmt: skip


@dataclass(frozen=True)
class Example:
    ids: np.ndarray  # int64 token ids
    prompt: int  # leading tokens that carry no loss


def synthetic(n: int, *, vocab: int, max_len: int, seed: int) -> list[Example]:
    """Lognormal lengths (mean ≈ 700, clipped to [16, max_len]), ~20% of each as prompt."""
    rng = np.random.default_rng(seed)
    sigma = 0.8
    mu = math.log(700) - sigma**2 / 2
    lengths = np.clip(rng.lognormal(mu, sigma, n).astype(int), 16, max_len)
    return [
        Example(rng.integers(100, vocab - 100, size=int(n_tok)), max(1, int(n_tok * 0.2)))
        for n_tok in lengths
    ]


def packed_rows(examples: list[Example], row_len: int) -> list[dict[str, np.ndarray]]:
    rows = []
    for members in best_fit_decreasing([len(e.ids) for e in examples], row_len):
        ids, labels, pos = [], [], []
        for i in members:
            e = examples[i]
            lab = e.ids.copy()
            lab[: e.prompt] = IGNORE_INDEX  # prompt, and the document's first token
            ids.append(e.ids)
            labels.append(lab)
            pos.append(np.arange(len(e.ids)))
        rows.append(
            {
                "input_ids": np.concatenate(ids),
                "labels": np.concatenate(labels),
                "position_ids": np.concatenate(pos),
            }
        )
    return rows


def collate_rows(rows: list[dict[str, np.ndarray]], device: str) -> dict[str, torch.Tensor]:
    width = max(len(r["input_ids"]) for r in rows)
    out = {}
    for key, pad in (("input_ids", 0), ("labels", IGNORE_INDEX), ("position_ids", 0)):
        batch = np.full((len(rows), width), pad, dtype=np.int64)
        for i, r in enumerate(rows):
            batch[i, : len(r[key])] = r[key]
        out[key] = torch.from_numpy(batch).to(device, non_blocking=True)
    return out


def gpu_sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_gib() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


def run_regime3(
    cfg: dict[str, Any], examples: list[Example], args: argparse.Namespace, device: str
) -> dict[str, Any]:
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = Qwen3ForCausalLM(Qwen3Config(**cfg, attn_implementation=args.attn)).to(device, dtype)
    model.train()
    if args.checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if args.compile:
        # Per decoder layer, not the whole model: one graph reused 28 times compiles fast and
        # fuses the RMSNorm / RoPE / SiLU elementwise chains the profile found unfused.
        for layer in model.model.layers:
            layer.compile(dynamic=False)
    opt = BF16AdamW(model.parameters(), lr=2e-5, weight_decay=0.0)
    rows = packed_rows(examples, args.max_length)
    rows_per_step = max(1, args.tokens_per_step // args.max_length)
    micro = args.micro_rows
    real_tokens = sum(len(r["input_ids"]) for r in rows)
    slots = len(rows) * args.max_length
    steps = [rows[i : i + rows_per_step] for i in range(0, len(rows), rows_per_step)]
    if args.steps:
        steps = steps[: args.warmup + args.steps]
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    timed_tokens, t0, ooms, losses, opt_seconds = 0, None, 0, [], 0.0
    for n, step_rows in enumerate(steps):
        if n == args.warmup:
            gpu_sync()
            t0 = time.perf_counter()
        while True:
            try:
                loss_tokens = sum(int((r["labels"][1:] != IGNORE_INDEX).sum()) for r in step_rows)
                total = 0.0
                for i in range(0, len(step_rows), micro):
                    batch = collate_rows(step_rows[i : i + micro], device)
                    with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
                        out = forward_loss(
                            model,
                            batch["input_ids"],
                            batch["position_ids"],
                            batch["labels"],
                            chunk_tokens=args.loss_chunk,
                        )
                    (out.loss_sum / loss_tokens).backward()
                    total += float(out.loss_sum.detach())
                break
            except torch.OutOfMemoryError:
                # What the trainer does: halve the micro-batch, retry the same step.
                opt.zero_grad(set_to_none=True)
                ooms += 1
                if micro == 1:
                    raise
                micro //= 2
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if n >= args.warmup:
            gpu_sync()
            t_opt = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if n >= args.warmup:
            gpu_sync()
            opt_seconds += time.perf_counter() - t_opt
        losses.append(total / loss_tokens)
        if n >= args.warmup:
            timed_tokens += sum(len(r["input_ids"]) for r in step_rows)
    gpu_sync()
    seconds = time.perf_counter() - (t0 or time.perf_counter())
    return {
        "setup": "regime3",
        "attn": args.attn,
        "checkpointing": args.checkpointing,
        "compile": args.compile,
        "tf32": args.tf32,
        "loss_chunk": args.loss_chunk,
        "steps_timed": len(steps) - args.warmup,
        "optimizer_share": round(opt_seconds / seconds, 3) if seconds else None,
        "tokens_per_step": args.tokens_per_step,
        "micro_rows_final": micro,
        "ooms": ooms,
        "tokens_per_sec": round(timed_tokens / seconds) if seconds else None,
        "peak_gib": round(peak_gib(), 2) if peak_gib() is not None else None,
        "packing_efficiency": round(real_tokens / slots, 4),
        "first_loss": round(losses[0], 4),
        "last_loss": round(losses[-1], 4),
        "examples": len(examples),
    }


def run_baseline(
    cfg: dict[str, Any], examples: list[Example], args: argparse.Namespace, batch: int, device: str
) -> dict[str, Any]:
    from torch.utils.data import Dataset
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    class Rows(Dataset):  # type: ignore[type-arg]
        def __len__(self) -> int:
            return len(examples)

        def __getitem__(self, i: int) -> dict[str, list[int]]:
            e = examples[i]
            labels = e.ids.tolist()
            labels[: e.prompt] = [IGNORE_INDEX] * e.prompt
            return {
                "input_ids": e.ids.tolist(),
                "labels": labels,
                "attention_mask": [1] * len(e.ids),
            }

    class PadToLongest:
        tokenizer_pad = 0

        def __call__(self, feats: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
            width = max(len(f["input_ids"]) for f in feats)
            out = {}
            for key, pad in (("input_ids", 0), ("labels", IGNORE_INDEX), ("attention_mask", 0)):
                out[key] = torch.tensor([f[key] + [pad] * (width - len(f[key])) for f in feats])
            return out

    _ = DataCollatorForSeq2Seq  # the users' collator pads the same way; ours needs no tokenizer
    model = Qwen3ForCausalLM(Qwen3Config(**cfg, attn_implementation="sdpa")).to(device)
    steps = args.baseline_steps
    targs = TrainingArguments(
        output_dir="/tmp/r3-baseline",
        per_device_train_batch_size=batch,
        max_steps=steps,
        learning_rate=2e-5,
        bf16=device == "cuda",
        logging_steps=10**9,
        save_strategy="no",
        report_to=[],
        dataloader_num_workers=0,
        use_cpu=device != "cuda",
    )
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    counted = {"tokens": 0}
    collate = PadToLongest()

    def counting(feats: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        b = collate(feats)
        counted["tokens"] += int(b["attention_mask"].sum())
        return b

    trainer = Trainer(model=model, args=targs, train_dataset=Rows(), data_collator=counting)
    try:
        gpu_sync()
        t0 = time.perf_counter()
        trainer.train()
        gpu_sync()
        seconds = time.perf_counter() - t0
    except torch.OutOfMemoryError as exc:
        result = {
            "setup": f"baseline batch {batch}",
            "oom": True,
            "error": str(exc).splitlines()[0][:160],
            "peak_gib": round(peak_gib(), 2) if peak_gib() is not None else None,
        }
        del trainer, model
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
        return result
    result = {
        "setup": f"baseline batch {batch}",
        "oom": False,
        "steps_timed": steps,
        "tokens_per_sec": round(counted["tokens"] / seconds),  # includes the first step
        "peak_gib": round(peak_gib(), 2) if peak_gib() is not None else None,
    }
    del trainer, model
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["regime3", "baseline"], default=None)
    ap.add_argument("--tiny", action="store_true", help="a tiny model, for a CPU smoke run")
    ap.add_argument("--examples", type=int, default=4000)
    ap.add_argument("--steps", type=int, default=30, help="timed regime3 steps (0: all data)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--baseline-steps", type=int, default=20)
    ap.add_argument("--baseline-batches", default="4,8")
    ap.add_argument("--max-length", type=int, default=4096)
    ap.add_argument("--tokens-per-step", type=int, default=32_768)
    ap.add_argument("--micro-rows", type=int, default=2)
    ap.add_argument("--loss-chunk", type=int, default=1024)
    ap.add_argument("--attn", default="sdpa", help="sdpa | flex_attention | eager")
    ap.add_argument("--no-checkpointing", dest="checkpointing", action="store_false")
    ap.add_argument("--compile", action="store_true", help="torch.compile each decoder layer")
    ap.add_argument(
        "--tf32",
        action="store_true",
        help="TF32 tensor cores for the loss's fp32 head-gradient GEMM",
    )
    ap.add_argument(
        "--cap-gib",
        type=float,
        default=None,
        help="cap this process's GPU memory (set_per_process_memory_fraction)",
    )
    ap.add_argument("--json-out", default=None)
    ap.add_argument(
        "--profile",
        default=None,
        help="write a torch.profiler table of the timed steps' CUDA kernels here",
    )
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    if args.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
    if args.cap_gib and device == "cuda":
        total = torch.cuda.get_device_properties(0).total_memory / 2**30
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.cap_gib / total))
    cfg = TINY if args.tiny else QWEN3_06B
    examples = synthetic(args.examples, vocab=cfg["vocab_size"], max_len=args.max_length, seed=0)
    lengths = np.array([len(e.ids) for e in examples])
    info = {
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "cap_gib": args.cap_gib,
        "mean_len": round(float(lengths.mean()), 1),
        "max_len": int(lengths.max()),
        "examples": len(examples),
    }
    print(json.dumps(info), flush=True)
    results = []
    if args.only in (None, "regime3") and args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            results.append(run_regime3(cfg, examples, args, device))
        with open(args.profile, "w") as f:
            f.write(
                prof.key_averages().table(
                    sort_by="cuda_time_total", row_limit=40, max_name_column_width=90
                )
            )
    elif args.only in (None, "regime3"):
        results.append(run_regime3(cfg, examples, args, device))
        print(json.dumps(results[-1]), flush=True)
    if args.only in (None, "baseline"):
        for b in (int(x) for x in args.baseline_batches.split(",")):
            results.append(run_baseline(cfg, examples, args, b, device))
            print(json.dumps(results[-1]), flush=True)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"info": info, "results": results}, f, indent=2)
    os.sys.stdout.flush()


if __name__ == "__main__":
    main()
