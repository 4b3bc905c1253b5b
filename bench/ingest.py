"""Benchmark ingest: validate, tokenize and pack a large generated JSONL file in bounded memory.

Targets (issue 4): a 287 MB, 100k-example file is validated, tokenized and packed with peak
RSS <= 1 GiB, and so is a file four times larger; throughput is recorded.

    .venv/bin/python bench/ingest.py generate --out /tmp/ingest-100k.jsonl --examples 100000
    .venv/bin/python bench/ingest.py run --file /tmp/ingest-100k.jsonl --workers 2 \
        [--tokenizer PATH] [--json-out FILE]

`generate` composes users'-format conversations (🤔×4, reasoning, 🛑×2–4, answer) from the
codec domains, one to several exchanges each, about 2.9 KB a line, with one line in 500 broken
on purpose (bad JSON, a wrong 🤔 count, no final assistant turn) so the reject path is timed
too. `run` makes the two passes a training job makes: validation (every line parsed, checked,
tokenized; rejects written) and the training stream (tokenized again, packed into rows,
grouped into steps and collated into micro-batch tensors). Peak RSS is sampled every 0.2 s
over this process and its worker processes together.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil

GIB = 1 << 30
RSS_TARGET = GIB
SYSTEM = "You reason step by step between the markers, then answer."


def generate(out: Path, examples: int, seed: int, bad_every: int) -> dict[str, Any]:
    """Write `examples` lines to `out`; returns what was written."""
    from codec.domains import default_codebook, mixed_problems
    from codec.modes import RENDER_MODES
    from codec.problem import RenderSettings

    started = time.perf_counter()
    rng = random.Random(seed)
    codebook = default_codebook()
    # A pool of rendered exchanges, sampled with replacement: generating 100k+ fresh problems
    # would take longer than the benchmark itself, and repetition does not help the tokenizer.
    pool = []
    for index, problem in enumerate(mixed_problems(4000, seed)):
        mode = RENDER_MODES[index % len(RENDER_MODES)]
        content = problem.assistant_content(mode, codebook, rng, RenderSettings())
        pool.append((problem.question, content, problem.domain))
    written = bad = 0
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for index in range(examples):
            target = rng.uniform(700, 3300)  # content bytes; with JSON ~2.9 KB a line
            messages = [{"role": "system", "content": SYSTEM}] if rng.random() < 0.2 else []
            size = 0
            while size < target:
                question, answer, domain = rng.choice(pool)
                messages += [
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": answer},
                ]
                size += len(question.encode()) + len(answer.encode())
            line: dict[str, Any] = {
                "messages": messages,
                "meta": {"id": f"bench-{seed}-{index}", "domain": domain},
            }
            text = json.dumps(line, ensure_ascii=False)
            if bad_every and index % bad_every == bad_every - 1:
                bad += 1
                kind = (index // bad_every) % 3
                if kind == 0:
                    text = text[: len(text) // 2]  # cut mid-line: invalid JSON
                elif kind == 1:
                    messages[-1]["content"] = "🤔" + messages[-1]["content"]  # five 🤔
                    text = json.dumps(line, ensure_ascii=False)
                else:
                    line["messages"] = messages[:-1]  # no final assistant turn
                    text = json.dumps(line, ensure_ascii=False)
            f.write(text + "\n")
            written += 1
    size_bytes = out.stat().st_size
    return {
        "file": str(out),
        "examples": written,
        "broken_on_purpose": bad,
        "bytes": size_bytes,
        "mean_bytes_per_line": round(size_bytes / max(written, 1), 1),
        "seconds": round(time.perf_counter() - started, 1),
    }


class RssSampler(threading.Thread):
    """Peak resident memory of this process plus its children, sampled in the background."""

    def __init__(self, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.peak_total = 0
        self.peak_self = 0
        self._halt = threading.Event()
        self._me = psutil.Process()

    def sample(self) -> None:
        mine = self._me.memory_info().rss
        total = mine
        for child in self._me.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.NoSuchProcess:
                continue
        self.peak_self = max(self.peak_self, mine)
        self.peak_total = max(self.peak_total, total)

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self._halt.set()
        self.join()
        self.sample()


def log(message: str) -> None:
    # Progress on stderr, timestamped, so a long run in the background can be followed.
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def cpu_seconds() -> float:
    """CPU time of this process and of its reaped children (the worker pools)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def ingest(file: Path, tokenizer_path: str | None, workers: int) -> dict[str, Any]:
    from services.model.loading import load_tokenizer
    from services.trainer.config import TrainerSettings
    from services.trainer.packing import PackingStats, file_rows, optimizer_steps
    from services.trainer.tokenize import ChatTokenizer
    from services.trainer.validate import validate_file

    sampler = RssSampler()
    sampler.start()
    settings = TrainerSettings()
    if tokenizer_path is None:
        tokenizer = load_tokenizer(None)
    else:
        # A tokenizer directory needs no model config: load it on its own, from disk only.
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path, local_files_only=True)
    chat = ChatTokenizer(tokenizer)
    rejects = Path("/tmp") / f"{file.stem}.rejects.jsonl"
    result: dict[str, Any] = {
        "file": str(file),
        "file_bytes": file.stat().st_size,
        "tokenizer": tokenizer_path or "embedded (services.model, default)",
        "mask_method": chat.method,
        "workers": workers,
        "cpus": os.cpu_count(),
        "settings": {
            "max_length": settings.max_length,
            "tokens_per_step": settings.tokens_per_step,
            "micro_batch_tokens": settings.micro_batch_tokens,
            "pack_buffer_examples": settings.pack_buffer_examples,
            "overlong": settings.overlong,
            "thinking_markers": settings.thinking_markers,
        },
    }

    started, cpu0 = time.perf_counter(), cpu_seconds()

    def progress(so_far: Any) -> None:
        done = so_far.accepted_lines + so_far.rejected
        log(
            f"validate: {done} lines, {done / so_far.seconds:.0f}/s, "
            f"peak RSS {sampler.peak_total / 2**20:.0f} MiB"
        )

    report = validate_file(
        file, chat, settings, rejects_path=rejects, workers=workers, on_progress=progress
    )
    seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu0
    result["validate"] = {
        "seconds": round(seconds, 1),
        "cpu_seconds": round(cpu, 1),
        "lines": report.lines,
        "rejected": report.rejected,
        "rejects_by_kind": dict(report.kinds),
        "examples": report.examples,
        "tokens": report.tokens,
        "loss_tokens": report.loss_tokens,
        "mean_tokens": round(report.tokens / max(report.examples, 1), 1),
        "longest": report.longest,
        "examples_per_s": round(report.lines / seconds),
        "tokens_per_s": round(report.tokens / seconds),
        "mb_per_s": round(report.bytes_read / seconds / 1e6, 2),
        "rss_peak_so_far_mib": round(sampler.peak_total / 2**20),
    }

    started, cpu0 = time.perf_counter(), cpu_seconds()
    stats = PackingStats(settings.max_length)
    steps = micro_batches = 0
    rows = file_rows(
        file, chat, settings, rejected_offsets=report.rejected_offsets, workers=workers
    )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for step in optimizer_steps(rows, settings.tokens_per_step):
        steps += 1
        for row in step.rows:
            stats.add(row)
        # Collating is part of what the loop does per step; keep its tensors alive briefly.
        micro_batches += len(step.micro_batches(settings.rows_per_micro_batch, pad_id))
        if steps % 500 == 0:
            elapsed = time.perf_counter() - started
            log(
                f"pack: {stats.documents} examples in {steps} steps, "
                f"{stats.documents / elapsed:.0f}/s, peak RSS {sampler.peak_total / 2**20:.0f} MiB"
            )
    seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu0
    sampler.stop()
    result["pack"] = {
        "seconds": round(seconds, 1),
        "cpu_seconds": round(cpu, 1),
        "documents": stats.documents,
        "rows": stats.rows,
        "steps": steps,
        "micro_batches": micro_batches,
        "tokens": stats.tokens,
        "packing_efficiency": round(stats.efficiency, 4),
        "examples_per_s": round(stats.documents / seconds),
        "tokens_per_s": round(stats.tokens / seconds),
    }
    result["peak_rss_mib"] = {
        "total_with_workers": round(sampler.peak_total / 2**20),
        "main_process": round(sampler.peak_self / 2**20),
        # (RUSAGE_CHILDREN's maxrss is not reported: a spawned child is forked from this
        # process before it execs, so it records this process's size, not its own.)
        "main_process_ru_maxrss": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    result["rss_target_met"] = sampler.peak_total <= RSS_TARGET
    result["load_average"] = os.getloadavg()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="write a users'-format JSONL file")
    gen.add_argument("--out", type=Path, required=True)
    gen.add_argument("--examples", type=int, default=100_000)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--bad-every", type=int, default=500, help="break one line in N (0: none)")
    run = sub.add_parser("run", help="validate, tokenize and pack a file; measure RSS and speed")
    run.add_argument("--file", type=Path, required=True)
    run.add_argument("--tokenizer", help="a local HF tokenizer dir (default: the embedded one)")
    run.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    run.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    if args.command == "generate":
        print(json.dumps(generate(args.out, args.examples, args.seed, args.bad_every), indent=2))
        return 0
    result = ingest(args.file, args.tokenizer, args.workers)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json_out:
        args.json_out.write_text(text + "\n")
    return 0 if result["rss_target_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
