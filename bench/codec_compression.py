"""Benchmark the codec: thinking tokens per mode on each domain, and encode+decode speed.

Targets (issue 3): canonical <= 0.5 x English and encoded <= 0.33 x English thinking tokens
on every built-in domain, under the project's default tokenizer and any HF tokenizer given
with --tokenizer; encode+decode >= 50,000 expressions/s on one core.

    .venv/bin/python bench/codec_compression.py [--tokenizer PATH ...] [--json-out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from codec.codebook import Codebook, code_name, whitespace_count
from codec.compression import measure
from codec.domains import default_codebook, mixed_problems

CANONICAL_TARGET = 0.5
ENCODED_TARGET = 0.33
SPEED_TARGET = 50_000


def default_tokenizer_counter(codebook: Codebook) -> tuple[Callable[[str], int] | None, str]:
    """The project's default tokenizer (services.model), codes added as tokens; or why not."""
    try:
        try:
            from services.model.embedded import load_default_tokenizer  # type: ignore[attr-defined]
        except ImportError:
            from services.model.loading import load_default_tokenizer
        tokenizer = load_default_tokenizer()
    except Exception as err:  # any failure means: not available on this checkout
        return None, f"default tokenizer unavailable: {type(err).__name__}: {err}"
    tokenizer.add_tokens([code_name(i) for i in range(len(codebook))])
    return (lambda text: len(tokenizer.encode(text, add_special_tokens=False))), "default"


def hf_counter(path: str, codebook: Codebook) -> Callable[[str], int]:
    from services.cli.codec_commands import hf_token_counter

    return hf_token_counter(path, codebook)


def speed(codebook: Codebook, seconds: float) -> dict[str, Any]:
    """encode+decode throughput on held-out canonical reasoning, per step and per example."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    reasonings = [p.canonical_reasoning for p in mixed_problems(2000, seed=1, split="heldout")]
    steps = [line for text in reasonings for line in text.split("\n")]
    out: dict[str, Any] = {}
    for name, data in (("step_expressions", steps), ("whole_reasonings", reasonings)):
        # CPU time of this process is the per-core rate even when other jobs share the CPU;
        # the wall-clock rate is reported beside it
        done, wall, cpu = 0, time.perf_counter(), time.process_time()
        while time.process_time() - cpu < seconds:
            for text in data:
                if codebook.decode(codebook.encode(text)) != text:
                    raise SystemExit(f"lossless round trip failed on {text!r}")
            done += len(data)
        out[name] = round(done / (time.process_time() - cpu))
        out[f"{name}_wall"] = round(done / (time.perf_counter() - wall))
    out["target_step_expressions_per_s"] = SPEED_TARGET
    out["pass"] = out["step_expressions"] >= SPEED_TARGET
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", action="append", default=[], help="HF tokenizer folder")
    parser.add_argument("--codebook", help="codebook JSON (default: the shipped one)")
    parser.add_argument("--per-level", type=int, default=50, help="problems per level")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--speed-seconds", type=float, default=3.0)
    parser.add_argument("--json-out", help="also write the JSON result to this file")
    args = parser.parse_args()

    codebook = Codebook.load(args.codebook) if args.codebook else default_codebook()
    counters: list[tuple[str, Callable[[str], int]]] = [("whitespace", whitespace_count)]
    notes: list[str] = []
    default, label = default_tokenizer_counter(codebook)
    if default is None:
        notes.append(label)
    else:
        counters.append(("default", default))
    counters += [(path, hf_counter(path, codebook)) for path in args.tokenizer]

    result: dict[str, Any] = {"tokenizers": {}, "notes": notes}
    all_pass = True
    for name, counter in counters:
        rows = measure(counter, codebook, per_level=args.per_level, seed=args.seed)
        print(f"\ntokenizer: {name}")
        print(
            f"{'domain':12} {'n':>5} {'english':>8} {'canon':>8} {'encoded':>8} "
            f"{'c/e':>6} {'x/e':>6}  ok"
        )
        for r in rows:
            ok = r.canonical_ratio <= CANONICAL_TARGET and r.encoded_ratio <= ENCODED_TARGET
            all_pass &= ok
            print(
                f"{r.domain:12} {r.examples:5d} {r.english / r.examples:8.1f} "
                f"{r.canonical / r.examples:8.1f} {r.encoded / r.examples:8.1f} "
                f"{r.canonical_ratio:6.3f} {r.encoded_ratio:6.3f}  {'yes' if ok else 'NO'}"
            )
        result["tokenizers"][name] = [r.to_dict() for r in rows]
    result["speed"] = speed(codebook, args.speed_seconds)
    all_pass &= result["speed"]["pass"]
    fast = result["speed"]
    print(
        f"\nencode+decode, one core, per CPU second: {fast['step_expressions']:,} step "
        f"expressions/s, {fast['whole_reasonings']:,} whole reasonings/s (wall clock: "
        f"{fast['step_expressions_wall']:,} / {fast['whole_reasonings_wall']:,}); "
        f"target {SPEED_TARGET:,} expressions/s"
    )
    for note in notes:
        print(f"note: {note}")
    result["pass"] = all_pass
    print(json.dumps(result, indent=1))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=1) + "\n")
    return 0 if all_pass else 1


if __name__ == "__main__":
    raise SystemExit(main())
