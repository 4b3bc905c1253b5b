"""Hot-swap figures of the node: download with verification (MB/s) and load-and-swap (s).

A real checkpoint (model, tokenizer, manifest with every file's sha256) is written to a
trainer directory and served over loopback by the gateway's own artifact route (Range,
ETag, bearer token) under uvicorn. Then:

- download + verify: `services.node.pulling.puller.Puller` pulls it into a fresh models directory
  (manifest digest checked, every file hashed as it streams, fsynced, renamed into place);
  MB/s = bytes fetched / 1e6 / seconds of the whole pull;
- load-and-swap (transfer excluded): the node's own steps, as `activation.activate` runs
  them, on the pulled directory: `load_for_serving` (weights to the device), `warm_up`
  (prefill + 4 decode steps), `Engine.swap`; then the old weights are freed (reported
  apart: the new model already serves by then). The files are in the page cache, as they
  are right after a pull.

Models: `embedded` (the tiny CPU model, ~6 MB) or `qwen-arch` (Qwen3-0.6B's published
architecture, random init, bf16, ~1.2 GB of safetensors, with the embedded tokenizer: the
vocabulary does not change load or swap cost). `--download-mb` pads the checkpoint with a
random file up to that size, so a tiny model still gives a meaningful transfer figure.

Needs torch, transformers, safetensors, pydantic(-settings), fastapi, uvicorn and httpx,
and the repository on PYTHONPATH (no Redis).

    PYTHONPATH=. python bench/node_swap.py --device cpu --model embedded --download-mb 256
    PYTHONPATH=. python bench/node_swap.py --device cuda --model qwen-arch --out result.json
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from qwen_arch import QWEN3_06B  # bench/ is on sys.path when run as a script
from transformers import Qwen3Config, Qwen3ForCausalLM

from checkpoints.durable import sha256_file
from checkpoints.manifest import (
    MANIFEST,
    MANIFEST_DIGEST,
    FileEntry,
    Manifest,
    checkpoint_id,
)
from services.model.embedded import ensure_embedded_model
from services.model.loading import load_tokenizer
from services.node.config import NodeSettings
from services.node.pulling.puller import Puller
from services.node.serving.engine import Engine, GenerationRequest
from services.node.serving.loading import load_for_serving, warm_up

TOKEN = "bench-token"
TARGET_SWAP_S = 1.0
TARGET_DOWNLOAD_MB_S = 500.0


def build_model_dir(kind: str, work: Path, device: str) -> Path:
    """A model directory (weights + tokenizer) of the chosen kind."""
    embedded = ensure_embedded_model(work / "models-root")
    if kind == "embedded":
        return embedded
    tokenizer = load_tokenizer(embedded)
    config = Qwen3Config(
        **QWEN3_06B,
        bos_token_id=tokenizer.bos_token_id or 0,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    with torch.device(device):  # random init on the GPU: seconds, not a minute of CPU
        model = Qwen3ForCausalLM(config).to(torch.bfloat16)
    dest = work / "qwen-arch"
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    del model
    return dest


def write_checkpoint(model_dir: Path, root: Path, *, step: int, pad_to: int) -> tuple[str, str]:
    """A trainer checkpoint in CheckpointStore's layout; returns (id, manifest sha256)."""
    cid = checkpoint_id(step)
    path = root / cid
    shutil.copytree(model_dir, path)
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    if pad_to > size:  # incompressible, so nothing on the path can cheat
        with (path / "padding.bin").open("wb") as f:
            left = pad_to - size
            while left:
                chunk = os.urandom(min(left, 64 << 20))
                f.write(chunk)
                left -= len(chunk)
    files = [
        FileEntry(path=p.relative_to(path).as_posix(), size=p.stat().st_size, sha256=sha256_file(p))
        for p in sorted(path.rglob("*"))
        if p.is_file()
    ]
    manifest = Manifest(
        id=cid,
        step=step,
        created=datetime.now(UTC),
        model_name=model_dir.name,
        files=files,
        total_bytes=sum(f.size for f in files),
    )
    raw = (manifest.model_dump_json(indent=2) + "\n").encode()
    (path / MANIFEST).write_bytes(raw)
    digest = hashlib.sha256(raw).hexdigest()
    (path / MANIFEST_DIGEST).write_text(f"{digest}  {MANIFEST}\n")
    return cid, digest


def artifact_app(root: Path) -> Any:
    """The gateway's artifact route alone (no Redis needed): Range, ETag, bearer token."""
    from fastapi import FastAPI

    from services.gateway import artifacts, errors
    from services.gateway.config import GatewaySettings

    app = FastAPI()
    app.state.settings = GatewaySettings(node_token=TOKEN)
    app.state.checkpoints_root = root
    errors.install(app)
    app.include_router(artifacts.router)
    return app


def serve(root: Path, port: int) -> None:
    import uvicorn

    uvicorn.run(artifact_app(root), host="127.0.0.1", port=port, log_level="warning")


@contextmanager
def artifact_server(root: Path) -> Any:
    """The server in its own process, as the gateway is (it must not share our GIL)."""
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(root), "--port", str(port)], env=env
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(url + "/", timeout=1)
                break
            except httpx.HTTPError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the artifact server did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def bench_download(url: str, work: Path, cid: str, digest: str, runs: int) -> dict[str, Any]:
    results = []
    final = None
    for i in range(runs):
        models = work / f"node-models-{i}"
        shutil.rmtree(models, ignore_errors=True)
        with Puller(base_url=url, models_dir=models, token=TOKEN, skip=()) as puller:
            pulled = puller.pull(cid, manifest_sha256=digest)
        assert not pulled.already_present
        results.append(
            {
                "bytes": pulled.fetched_bytes,
                "seconds": round(pulled.download_seconds, 4),
                "mb_s": round(pulled.fetched_bytes / 1e6 / pulled.download_seconds, 1),
            }
        )
        if final is not None:
            shutil.rmtree(final.parent)  # keep one copy for the swap part
        final = pulled.path
        print(f"  download {i + 1}/{runs}: {results[-1]}", flush=True)
    assert final is not None
    return {
        "runs": results,
        "median_mb_s": statistics.median(r["mb_s"] for r in results),
        "path": str(final),
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _streams(engine: Engine, count: int, stop: threading.Event, log: list[Any]) -> list[Any]:
    """`count` clients, each streaming one request after another until `stop`."""

    def client(i: int) -> None:
        while not stop.is_set():
            request = GenerationRequest(
                prompt_ids=[1 + (i * 7 + j) % 50 for j in range(16)],
                max_tokens=64,
                temperature=0.7,
                top_p=0.95,
            )
            try:
                handle = engine.submit(request)
                events = list(handle.stream(timeout=120))
                final = events[-1]
                log.append((handle.version, final.reason, final.message))
            except Exception as exc:  # counted as a failed request
                log.append((None, "error", repr(exc)))

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    return threads


def bench_swaps(path: Path, settings: NodeSettings, swaps: int, streams: int = 0) -> dict[str, Any]:
    first = load_for_serving(path, "v0", settings)
    warm_up(first)
    engine = Engine(first, max_batch=max(8, streams), batch_wait_ms=1.0, max_queue=256)
    del first
    runs = []
    stop = threading.Event()
    log: list[Any] = []
    clients = _streams(engine, streams, stop, log) if streams else []
    if clients:
        time.sleep(3.0)  # the streams are running (and every decode bucket captured)
    try:
        for i in range(1, swaps + 1):
            t0 = time.perf_counter()
            loaded = load_for_serving(path, f"v{i}", settings)
            _sync(loaded.device)
            t1 = time.perf_counter()
            warm_up(loaded)
            t2 = time.perf_counter()
            old = engine.swap(loaded)
            t3 = time.perf_counter()
            device = old.device
            del old, loaded
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            t4 = time.perf_counter()
            runs.append(
                {
                    "load_s": round(t1 - t0, 4),
                    "warm_up_s": round(t2 - t1, 4),
                    "swap_s": round(t3 - t2, 6),
                    "load_and_swap_s": round(t3 - t0, 4),
                    "free_old_s": round(t4 - t3, 4),
                }
            )
            print(f"  swap {i}/{swaps}: {runs[-1]}", flush=True)
            if clients:
                time.sleep(1.0)
        active = engine.active.version
    finally:
        stop.set()
        for t in clients:
            t.join(timeout=60)
        engine.close()
    failed = [entry for entry in log if entry[1] == "error"]
    return {
        "streams": streams,
        "requests_during": len(log),
        "failed_requests": len(failed),
        "failures": failed[:5],
        "versions_seen": sorted({str(entry[0]) for entry in log}),
        "runs": runs,
        "median_load_and_swap_s": statistics.median(r["load_and_swap_s"] for r in runs),
        "active_after": active,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--model", choices=["embedded", "qwen-arch"], default="embedded")
    ap.add_argument("--download-mb", type=int, default=0, help="pad the checkpoint to this size")
    ap.add_argument("--downloads", type=int, default=3, help="timed pulls (each from scratch)")
    ap.add_argument("--swaps", type=int, default=5, help="timed load-and-swaps")
    ap.add_argument("--streams", type=int, default=0, help="streaming clients during the swaps")
    ap.add_argument("--workdir", default=None, help="where files go (default: a temp dir)")
    ap.add_argument("--out", default=None, help="write the result as JSON here")
    ap.add_argument("--serve", default=None, help=argparse.SUPPRESS)  # the server process
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(Path(args.serve), args.port)
        return

    work = Path(args.workdir or tempfile.mkdtemp(prefix="r3-node-swap-"))
    work.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    try:
        print(f"building the {args.model} model on {device} ...", flush=True)
        model_dir = build_model_dir(args.model, work, str(device))
        root = work / "trainer-checkpoints"
        root.mkdir(exist_ok=True)
        cid, digest = write_checkpoint(model_dir, root, step=1, pad_to=args.download_mb * 1_000_000)
        size = sum(p.stat().st_size for p in (root / cid).rglob("*") if p.is_file())
        weights = (root / cid / "model.safetensors").stat().st_size
        print(f"checkpoint {cid}: {size / 1e6:.1f} MB ({weights / 1e6:.1f} MB weights)")
        with artifact_server(root) as url:
            download = bench_download(url, work, cid, digest, args.downloads)
        settings = NodeSettings(node_device=str(device), node_dtype="auto")
        swap = bench_swaps(Path(download.pop("path")), settings, args.swaps, args.streams)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    result = {
        "bench": "node_swap",
        "time": datetime.now(UTC).isoformat(),
        "model": args.model,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "workdir": str(work),
        },
        "checkpoint_bytes": size,
        "weights_bytes": weights,
        "download_verify": download,
        "load_and_swap": swap,
        "targets": {"load_and_swap_s": TARGET_SWAP_S, "download_mb_s": TARGET_DOWNLOAD_MB_S},
        "met": {
            "load_and_swap": swap["median_load_and_swap_s"] <= TARGET_SWAP_S,
            "no_failed_request": swap["failed_requests"] == 0,
            "download": download["median_mb_s"] >= TARGET_DOWNLOAD_MB_S,
        },
    }
    print(json.dumps({k: result[k] for k in ("checkpoint_bytes", "met")}, indent=2))
    print(
        f"download+verify median {download['median_mb_s']:.0f} MB/s "
        f"(target >= {TARGET_DOWNLOAD_MB_S:.0f}); load-and-swap median "
        f"{swap['median_load_and_swap_s']:.3f} s (target <= {TARGET_SWAP_S})"
    )
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
