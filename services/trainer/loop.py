"""The Trainer: one model, optimizer and schedule kept in memory, training one file per call."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import redis
import torch

from bus.events import Alert
from bus.publish import Publisher
from bus.worker import Interrupted, report_progress
from checkpoints.durable import sha256_file
from checkpoints.manifest import JobCursor
from checkpoints.settings import CheckpointSettings, get_checkpoint_settings
from codec.codebook import Codebook, codebook_in
from services.model.loading import load_model_and_tokenizer
from services.trainer.checkpoint import CheckpointStore, publish_ready
from services.trainer.codes import add_code_tokens, codebook_for_file
from services.trainer.config import TrainerSettings, get_trainer_settings
from services.trainer.dataset_reader import DataCursor
from services.trainer.disk import DiskFull
from services.trainer.distributed import FileOrder, Group, peer_failure
from services.trainer.errors import CodebookMismatch, DataChangedError, TrainerError
from services.trainer.fixed_eval import FixedEvalOutcome, FixedEvaluator
from services.trainer.forward import StepForward, StepPlan
from services.trainer.gpu import GpuMeter
from services.trainer.layer_monitor import LayerMonitor
from services.trainer.loop_config import LoopSettings
from services.trainer.metrics import Reporter, StepFigures
from services.trainer.oom import Backoff, run_with_backoff
from services.trainer.optim import BF16AdamW
from services.trainer.packing import StepRows, file_rows, optimizer_steps
from services.trainer.resume import FileProgress, append_ledger, resume_point
from services.trainer.retention import RetentionPolicy, apply_retention
from services.trainer.sampling import Sampler
from services.trainer.tokenize import ChatTokenizer
from services.trainer.validate import ValidationReport, validate_file

log = logging.getLogger(__name__)


class TrainingInterrupted(TrainerError, Interrupted):
    """A stop was asked for (SIGTERM, Ctrl-C): the step finished and a checkpoint holds the
    cursor. Not a failure: the worker queues the job again at the front (bus.worker)."""


def _named(exc: TrainerError, path: Path, name: str) -> TrainerError:
    """`exc` with the user's file name where it named the stored `<sha256>.jsonl`: the person
    reading a failed job knows their file, not the store's (nor the server's paths)."""
    text = str(exc)
    for shown in (str(path.resolve()), str(path)):
        text = text.replace(shown, name)
    if text != str(exc):
        exc.args = (text,)
    return exc


def lr_factor(settings: TrainerSettings, decay_steps: int) -> Callable[[int], float]:
    """The schedule as a multiplier of the peak rate: linear warmup, then decay or constant."""
    warmup, floor = settings.warmup_steps, settings.min_lr_ratio

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if settings.lr_schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, decay_steps - warmup))
        if settings.lr_schedule == "linear":
            return floor + (1 - floor) * (1 - progress)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


class Trainer:
    """Built once per worker process. At construction it loads the newest checkpoint (weights,
    optimizer, schedule, RNG, step counters) or, without one, the configured model; then every
    `train_file` continues the same run, so training is continuous across jobs."""

    def __init__(
        self,
        connection: redis.Redis,
        *,
        settings: TrainerSettings | None = None,
        loop_settings: LoopSettings | None = None,
        checkpoint_settings: CheckpointSettings | None = None,
        model_path: str | Path | None = None,
        device: str | None = None,
        group: Group | None = None,
    ) -> None:
        # Under torchrun: this rank's place. Only the lead (rank 0) publishes, writes the
        # status hash, the ledger and checkpoints; `data_parallel()` wraps the model in DDP.
        self.group = group
        self.lead = group is None or group.lead
        self.ddp: torch.nn.parallel.DistributedDataParallel | None = None
        self.settings = settings or get_trainer_settings()
        self.loop = loop_settings or LoopSettings()
        self.ckpt_settings = checkpoint_settings or get_checkpoint_settings()
        self.connection = connection
        self.publisher = Publisher(connection)
        if device is None and group is not None:
            device = str(group.device)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.store = CheckpointStore(self.ckpt_settings.checkpoints_path)
        if self.loop.torch_threads:
            torch.set_num_threads(self.loop.torch_threads)
        torch.manual_seed(self.settings.seed)
        latest = self.store.load_latest()
        self.weights_dtype = self._weights_dtype()
        # The run's codebook: its code tokens are in the tokenizer and model. None until the
        # first file with codes (or taken from the checkpoint or model directory loaded).
        self.codebook: Codebook | None = None
        self.codebook_source = "the run's checkpoints"
        if latest is not None:
            self.model, self.tokenizer = latest.load_model(
                device=self.device, dtype=self.weights_dtype
            )
            self.model_name = latest.info.model_name
            self.codebook = codebook_in(latest.path)
            self.codebook_source = f"checkpoint {latest.info.id}"
        else:
            self.model, self.tokenizer = load_model_and_tokenizer(
                model_path, device=self.device, dtype=self.weights_dtype
            )
            self.model_name = Path(str(self.model.name_or_path or "model")).name
            # A checkpoint copied as the starting model keeps its codebook.
            start = Path(str(self.model.name_or_path or "/nonexistent"))
            if self.model.name_or_path and start.is_dir():
                self.codebook = codebook_in(start)
                self.codebook_source = f"the starting model {start}"
        self._rewrap = False  # under torchrun: DDP must wrap the resized model again
        self.model.train()
        if self.device.type == "cuda" and self.settings.gpu_memory_gib is not None:
            # Past the budget an allocation raises an out-of-memory like a full card would,
            # which is what turns checkpointing on and then lowers the micro-batch.
            index = self.device.index
            index = torch.cuda.current_device() if index is None else index
            total = torch.cuda.get_device_properties(index).total_memory / 2**30
            fraction = min(1.0, self.settings.gpu_memory_gib / total)
            torch.cuda.set_per_process_memory_fraction(fraction, index)
        self.checkpointing = False
        if self.settings.activation_checkpointing is True:
            self._enable_checkpointing()
        self.plan = StepPlan.resolve(self.settings, self.device)
        self.forward = StepForward(
            self.model,
            self.plan,
            chunk_tokens=self.settings.loss_chunk_tokens,
            max_length=self.settings.max_length,
        )
        self.compile_seconds: float | None = None  # set by the first step when compiled
        log.info("training step: %s", self.plan.describe())
        self.chat = ChatTokenizer(self.tokenizer)
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else self.tokenizer.eos_token_id or 0)
        self.optimizer = self._build_optimizer()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_factor(self.settings, self.loop.lr_decay_steps)
        )
        self.amp_dtype = self._amp_dtype()
        self.scaler = torch.amp.GradScaler(enabled=self.amp_dtype == torch.float16)
        self.global_step = 0
        self.files_taken = 0
        self.report = Reporter(
            connection,
            log_steps=self.settings.log_steps,
            epochs=self.settings.epochs,
            gpu=GpuMeter() if self.device.type == "cuda" else None,
            publisher=self.publisher,
        )
        # The cursor of an unfinished job found at startup; resume.py sets it (requeue_unfinished).
        self.pending_resume: JobCursor | None = None
        self.latest_cursor: JobCursor | None = None
        self.resumed_state: dict[str, Any] = {}  # trainer_state of the checkpoint loaded
        self.resumed_from: str | None = None  # its id
        if latest is not None:
            latest.restore(optimizer=self.optimizer, scheduler=self.scheduler, rng=True)
            state = self.resumed_state = latest.trainer_state()
            self.global_step = int(state.get("global_step", latest.info.step))
            self.files_taken = int(state.get("files_taken", 0))
            for loss in state.get("train_loss_history", []):
                self.report.loss.add(float(loss))
            self.latest_cursor = latest.info.cursor
            self.resumed_from = latest.info.id
            log.info("resumed weights and optimizer from checkpoint %s", latest.info.id)
        self.layers = LayerMonitor(self.model, self.settings.layer_monitor_steps)
        self.fixed_eval = FixedEvaluator.for_trainer(self, connection)
        self.sampler = Sampler(  # the fixed sets' prompts when there are, else every domain's
            self.tokenizer,
            count=self.settings.eval_examples,
            max_new_tokens=self.loop.sample_max_new_tokens,
            seed=self.settings.seed,
            prompts=self.fixed_eval.prompts(),
        )
        self.rows_per_batch = self.settings.rows_per_micro_batch
        self._stop = threading.Event()
        self.disk = DiskFull(  # a full disk pauses training (services.trainer.disk)
            self.store,
            lambda: RetentionPolicy.from_settings(self.ckpt_settings),
            self.publisher,
            self._stop,
            first_checkpoint_bytes=self._state_bytes,
        )
        if self.lead:
            self.report.set_status(
                "idle",
                model_name=self.model_name,
                context_window=self.settings.max_length,
                current_step=self.global_step,
                codebook=None if self.codebook is None else self.codebook.version,
            )

    def data_parallel(self) -> None:
        """Under torchrun, on every rank once all are built: wrap the model in DDP (rank 0's
        weights go to the others). The unwrapped model stays `self.model`: checkpoints,
        sampling and evaluation use it, so the checkpoint format does not change."""
        if self.group is not None and self.ddp is None:
            self.ddp = self.group.wrap(self.model, self.forward)

    # -- code tokens -----------------------------------------------------------------------

    def _take_codes(self, report: ValidationReport, name: str) -> bool:
        """Before a file's first step: the codebook its codes use (CodebookMismatch when it is
        not the run's), added as tokens if the run has none yet. True when tokens were added
        (the file must be validated again: its lines are shorter now)."""
        codebook = codebook_for_file(
            report, self.codebook, self.settings, name, run_source=self.codebook_source
        )
        if codebook is None or self.codebook is not None:
            return False
        self._add_codes(codebook)
        return True

    def _add_codes(self, codebook: Codebook) -> None:
        added = add_code_tokens(self.tokenizer, self.model, self.optimizer, codebook)
        self.codebook = codebook
        self.codebook_source = "the run's checkpoints"
        self.chat = ChatTokenizer(self.tokenizer)  # probe-checked again with the codes
        if added.changed:
            # A resized matrix: the compiled step, the layer monitor and DDP hold the old one.
            self.forward.refresh()
            self.layers = LayerMonitor(self.model, self.settings.layer_monitor_steps)
            self._rewrap = self.ddp is not None
        if self.lead:
            self.report.status.update(codebook=codebook.version)
            where = (
                f"the embedding grew from {added.rows_before} to {added.rows_after} rows"
                if added.resized
                else f"in spare rows of the {added.rows_after}-row embedding (no resize)"
            )
            self.publisher.publish(
                Alert(
                    level="info",
                    source="trainer",
                    code="code_tokens",
                    message=f"{len(added.ids)} codes of codebook {codebook.version} added as "
                    f"tokens ({len(added.fresh)} new rows from their fragments' mean; {where})",
                )
            )

    def _wrap_again(self) -> None:
        """Under torchrun, every rank at the same point: DDP over the resized model."""
        if self._rewrap and self.group is not None:
            self.ddp = None  # the old wrapper's hooks go with it
            self.ddp = self.group.wrap(self.model, self.forward)
        self._rewrap = False

    # -- construction ----------------------------------------------------------------------

    def _weights_dtype(self) -> torch.dtype:
        choice = self.loop.weights
        if self.settings.precision in ("fp16", "fp32"):
            choice = "fp32"  # fp16 autocast needs fp32 weights under its scaler; fp32 is fp32
        if choice == "auto":
            bf16_gpu = self.device.type == "cuda" and torch.cuda.is_bf16_supported()
            choice = "bf16" if bf16_gpu else "fp32"
        return torch.bfloat16 if choice == "bf16" else torch.float32

    def _build_optimizer(self) -> torch.optim.Optimizer:
        decay: list[torch.nn.Parameter] = []
        no_decay: list[torch.nn.Parameter] = []
        for param in self.model.parameters():
            if param.requires_grad:
                # Norm weights and biases are 1-D: decaying them only fights the data.
                (decay if param.dim() >= 2 else no_decay).append(param)
        s = self.settings
        groups = [
            {"params": decay, "weight_decay": s.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        betas = (s.adam_beta1, s.adam_beta2)
        if self.weights_dtype == torch.bfloat16:
            # Plain AdamW on bf16 weights rounds most small updates away; see optim.py.
            return BF16AdamW(groups, lr=s.learning_rate, betas=betas, eps=s.adam_eps)
        return torch.optim.AdamW(groups, lr=s.learning_rate, betas=betas, eps=s.adam_eps)

    def _amp_dtype(self) -> torch.dtype | None:
        precision = self.settings.precision
        if self.device.type != "cuda" or precision == "fp32":
            return None  # CPU: no autocast (bf16 matmuls are slow there and gain nothing)
        if precision == "fp16":
            return torch.float16
        if precision == "bf16" or torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _state_bytes(self) -> int:
        """What a checkpoint holds in memory now: the weights and the optimizer's state."""
        total = sum(p.numel() * p.element_size() for p in self.model.parameters())
        for state in self.optimizer.state.values():
            total += sum(t.numel() * t.element_size() for t in state.values() if torch.is_tensor(t))
        return total

    def request_stop(self) -> None:
        """Ask the loop to stop after the current optimizer step, with a checkpoint."""
        self._stop.set()

    # -- one optimizer step ----------------------------------------------------------------

    def _enable_checkpointing(self) -> bool:
        """Turn activation checkpointing on (once); False if it already was."""
        if self.checkpointing:
            return False
        self.model.gradient_checkpointing_enable(  # type: ignore[no-untyped-call]
            gradient_checkpointing_kwargs={"use_reentrant": False}
        )
        self.checkpointing = True
        return True

    def _lighten(self) -> bool:
        # Under `auto`, the first out-of-memory turns checkpointing on before any halving.
        if self.settings.activation_checkpointing != "auto":
            return False
        return self._enable_checkpointing()

    def _micro_batches(
        self, step: StepRows, rows_per_batch: int
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Forward and backward of every micro-batch of the step. Returns device tensors (the
        summed loss and sampled entropy) and the entropy's token count: nothing here waits for
        the GPU, the step reads the figures once at its end."""
        if self.ddp is not None:
            return self._shared_micro_batches(step, rows_per_batch)
        total_loss_tokens = max(1, step.loss_tokens)  # from the packer, on the host
        loss_sum = torch.zeros((), dtype=torch.float32, device=self.device)
        entropy_sum = torch.zeros((), dtype=torch.float32, device=self.device)
        entropy_tokens = 0
        # Compiled: every micro-batch has one shape (full rows, the last filled up with empty
        # rows), so the graph compiles once, not once per shape.
        width = self.settings.max_length if self.plan.compile else None
        for batch in step.micro_batches(rows_per_batch, self.pad_id, width):
            batch = batch.to(self.device)
            with self._autocast():
                out = self.forward(batch)
            # Token-weighted over the whole step: each micro-batch's summed loss over the
            # step's loss tokens, so the accumulated gradient is that of one big batch.
            self.scaler.scale(out.loss_sum / total_loss_tokens).backward()  # type: ignore[no-untyped-call]
            loss_sum += out.loss_sum.detach()
            entropy_sum += out.entropy_sum
            entropy_tokens += out.entropy_tokens
        return loss_sum, entropy_sum, entropy_tokens

    def _shared_micro_batches(
        self, step: StepRows, rows_per_batch: int
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """This rank's share of the step under DDP: micro-batches rank, rank + N, ...; each
        loss over the step's global loss tokens, times N because DDP averages the ranks'
        gradients, so the update is the one-process update. Gradients are exchanged on the
        last micro-batch only (no_sync before); a rank with one micro-batch fewer runs its
        last again with weight 0, since every rank must take part in that exchange."""
        group, ddp = self.group, self.ddp
        assert group is not None and ddp is not None
        scale = group.world / max(1, step.loss_tokens)
        loss_sum = torch.zeros((), dtype=torch.float32, device=self.device)
        entropy_sum = torch.zeros((), dtype=torch.float32, device=self.device)
        entropy_tokens = 0
        width = self.settings.max_length if self.plan.compile else None
        share = step.micro_batches(
            rows_per_batch, self.pad_id, width, rank=group.rank, world=group.world
        )
        rounds = -(-step.micro_batch_count(rows_per_batch) // group.world)
        if not share:
            share = step.micro_batches(rows_per_batch, self.pad_id, width)[:1]
            work = [(share[0], 0.0)] * rounds
        else:
            work = [(b, 1.0) for b in share] + [(share[-1], 0.0)] * (rounds - len(share))
        for number, (batch, weight) in enumerate(work):
            last = number == len(work) - 1
            # Out-of-memory is agreed before the last forward (DDP's first synchronised
            # forward rebuilds its buckets, a collective) and before the backward that
            # exchanges gradients, so all ranks back off together and none waits alone in a
            # collective. (One inside that backward ends the group: torchrun and the
            # checkpoint take over.)
            if last and number and not group.all_ok(True):
                raise torch.OutOfMemoryError("out of memory on a rank of the group")
            try:
                with contextlib.nullcontext() if last else ddp.no_sync():
                    with self._autocast():
                        out = ddp(batch.to(self.device))
                    if not last:
                        self.scaler.scale(out.loss_sum * (scale * weight)).backward()
            except torch.OutOfMemoryError:
                group.all_ok(False)  # the others learn it at the agreement they reach next
                raise
            if last:
                if not group.all_ok(True):
                    raise torch.OutOfMemoryError("out of memory on a rank of the group")
                self.scaler.scale(out.loss_sum * (scale * weight)).backward()
            if weight:
                loss_sum += out.loss_sum.detach()
                entropy_sum += out.entropy_sum
                entropy_tokens += out.entropy_tokens
        return loss_sum, entropy_sum, entropy_tokens

    def _alert_oom(self, backoff: Backoff) -> None:
        if not self.lead:
            return
        if backoff.checkpointing:
            self.publisher.publish(
                Alert(
                    level="warning",
                    source="trainer",
                    code="oom_recovered",
                    message=(
                        f"step {backoff.step}: out of memory at {backoff.rows_before} rows per "
                        "micro-batch; activation checkpointing turned on (R3_ACTIVATION_"
                        "CHECKPOINTING=auto) and the step retried at the same size"
                    ),
                )
            )
            return
        self.publisher.publish(
            Alert(
                level="warning",
                source="trainer",
                code="oom_recovered",
                message=(
                    f"step {backoff.step}: out of memory; micro-batch halved from "
                    f"{backoff.rows_before} to {backoff.rows_after} rows (accumulation doubled, "
                    "same global batch) and the step retried"
                ),
            )
        )

    def _report_compile(self, seconds: float) -> None:
        """The first compiled step's wall time (compilation, forward and backward included;
        later steps take well under a second): logged, alerted and kept in the status hash."""
        self.compile_seconds = round(seconds, 1)
        if not self.lead:
            return
        log.info("first compiled step took %.1f s (%s)", seconds, self.plan.describe())
        self.publisher.publish(
            Alert(
                level="info",
                source="trainer",
                code="compiled",
                message=f"the training step was compiled in {seconds:.1f} s (first step, "
                f"compilation included; {self.plan.describe()}); R3_COMPILE=off skips it",
            )
        )
        self.report.status.update(compile_seconds=self.compile_seconds)

    def _optimizer_step(self, step: StepRows) -> dict[str, Any]:
        number = self.global_step + 1
        started = time.perf_counter() if self.compile_seconds is None else None
        (loss_sum, entropy_sum, entropy_tokens), self.rows_per_batch = run_with_backoff(
            lambda rows: self._micro_batches(step, rows),
            self.rows_per_batch,
            step=number,
            reset=lambda: self.optimizer.zero_grad(set_to_none=True),
            on_backoff=self._alert_oom,
            lighten=self._lighten,
        )
        self.scaler.unscale_(self.optimizer)
        clip = self.settings.grad_clip if self.settings.grad_clip > 0 else math.inf
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        # The step's one read of the device: loss, entropy and gradient norm together.
        figures = torch.stack([loss_sum.float(), entropy_sum.float(), norm.float()])
        # Under torchrun a stop is decided here, by all ranks at once (asked of any, it is for
        # all); alone, at the end of the step, as the request finds it (None here).
        stop: bool | None = None
        if self.group is not None:
            (loss_total, entropy_total, grad_norm), entropy_tokens, stop = self.group.step_figures(
                figures, entropy_tokens, self._stop.is_set()
            )
        else:
            loss_total, entropy_total, grad_norm = figures.tolist()
        loss = loss_total / max(1, step.loss_tokens)
        entropy = entropy_total / max(1, entropy_tokens)
        if started is not None and self.plan.compile:
            self._report_compile(time.perf_counter() - started)
        if not math.isfinite(grad_norm) and self.amp_dtype != torch.float16:
            # One NaN/inf step would poison every weight it touches; skip it and say so.
            # (Under fp16 the GradScaler skips such steps itself and lowers its scale.)
            self.optimizer.zero_grad(set_to_none=True)
            if self.lead:
                self.publisher.publish(
                    Alert(
                        level="warning",
                        source="trainer",
                        code="nonfinite_gradients",
                        message=f"step {number}: gradient norm {grad_norm}; the update was "
                        "skipped (weights unchanged). Repeated, lower R3_LEARNING_RATE or check "
                        "the data.",
                    )
                )
        monitored = self.lead and self.layers.due(number) and math.isfinite(grad_norm)
        if monitored:
            self.layers.before_step()
        lr = float(self.scheduler.get_last_lr()[0])
        self.scaler.step(self.optimizer)  # a no-op for parameters whose gradient is None
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.global_step = number
        summary = self.layers.after_step() if monitored else None
        return {
            "loss": loss,
            "entropy": entropy,
            "grad_norm": grad_norm,
            "lr": lr,
            "layers": summary,
            "stop": stop,
        }

    # -- one file --------------------------------------------------------------------------

    def _recipe(self) -> dict[str, Any]:
        """What the manifest records as the recipe: the job's settings, the schedule's
        horizon and the weights' dtype as resolved (not `auto`)."""
        recipe = self.settings.model_dump(mode="json", exclude={"data_dir"})
        recipe["lr_decay_steps"] = self.loop.lr_decay_steps
        recipe["weights"] = "bf16" if self.weights_dtype == torch.bfloat16 else "fp32"
        return recipe

    def _rejects_path(self, name: str, digest: str) -> Path:
        root = self.loop.rejects_dir or self.ckpt_settings.layout.rejects
        return root / f"{Path(name).stem}.{digest[:12]}.rejects.jsonl"

    def _start_cursor(self, job_id: str | None, digest: str) -> JobCursor | None:
        pending, self.pending_resume = self.pending_resume, None
        if pending is None or job_id is None or pending.job_id != job_id:
            if pending is not None:
                self.pending_resume = pending  # it belongs to another job: keep it for that one
            return None
        if pending.dataset_sha256 != digest:
            self.publisher.publish(
                Alert(
                    level="warning",
                    source="trainer",
                    code="resume_discarded",
                    message=f"job {job_id}: the file changed since checkpoint (sha256 "
                    f"{pending.dataset_sha256[:12]} → {digest[:12]}); training it from the start",
                )
            )
            return None
        return pending

    def train_file(
        self,
        path: Path,
        *,
        job_id: str | None = None,
        sha256: str | None = None,
        name: str | None = None,
    ) -> dict[str, Any]:
        """Validate `path`, then train on it to the end (from the pending resume cursor when
        it names this job and file), checkpointing every R3_SAVE_STEPS and at the end."""
        path = Path(path)
        name = name or path.name
        self._stop.clear()
        self.rows_per_batch = self.settings.rows_per_micro_batch  # each file tries full size
        digest = sha256_file(path)
        if sha256 is not None and sha256 != digest:
            raise DataChangedError(
                f"{name}: sha256 is {digest[:12]}…, the job was queued for {sha256[:12]}…; the "
                "file changed after it was queued. Queue it again."
            )
        resume = self._start_cursor(job_id, digest)
        if resume is None:
            self.files_taken += 1  # a resumed file was counted when it was first taken
        self.report.set_status(
            "training",
            current_file=name,
            batch_number=self.files_taken,
            batch_step=0,
            batch_total_steps=None,
        )
        rejects = self._rejects_path(name, digest)

        def validate() -> ValidationReport:
            return self.disk.run(  # the rejects file may meet a full disk: pause, not fail
                functools.partial(
                    validate_file,
                    path,
                    self.chat,
                    self.settings,
                    rejects_path=rejects,
                    workers=self.loop.data_workers,
                    on_progress=lambda r: report_progress(
                        r.lines, None, unit="lines", message="validating"
                    ),
                ),
                what=f"the rejects file of {name}",
                where=rejects.parent,
                interrupted=lambda: TrainingInterrupted(
                    f"stopped on request while validating {name} waited for disk space"
                ),
                strict=True,
            )

        try:
            report = validate()
            if self._take_codes(report, name):
                # With the codes as tokens the lines are shorter: the lengths and rejects
                # training will meet are the ones of a second pass.
                report = validate()
        except CodebookMismatch as exc:
            self.report.set_status("idle")  # a file of another codebook is bad data
            if self.lead:
                self.publisher.publish(
                    Alert(
                        level="error", source="trainer", code="codebook_mismatch", message=str(exc)
                    )
                )
            raise _named(exc, path, name) from None
        except TrainerError as exc:
            self.report.set_status("idle")  # a bad file is not a crash of the trainer
            raise _named(exc, path, name) from None
        except Exception:
            self.report.set_status("idle")
            raise
        state = FileProgress(
            job_id=job_id,
            digest=digest,
            name=name,
            total_examples=report.examples * self.settings.epochs,
        )
        start: DataCursor | None = None
        if resume is not None:
            start = DataCursor(resume.byte_offset, resume.line, resume.rows_done)
            state.examples_done = resume.examples_done
            state.cursor = start
            state.epoch = int(self.resumed_state.get("epoch", 0))
            state.file_step = int(self.resumed_state.get("file_step", 0))
            if self.global_step == self.resumed_state.get("global_step"):
                state.saved_at = self.global_step  # the checkpoint resumed from is this state
            log.info("job %s: %s", job_id, resume_point(name, resume, report.examples))
        if self.group is not None:
            cpu_rng, device_rng = self.group.rng_state()
            self.group.send_order(
                FileOrder(
                    path=str(path),
                    name=name,
                    job_id=job_id,
                    sha256=digest,
                    start=start,
                    epoch=state.epoch,
                    rejected_offsets=tuple(report.rejected_offsets),
                    cpu_rng=cpu_rng,
                    device_rng=device_rng,
                    codebook=None if self.codebook is None else self.codebook.to_json(),
                )
            )
            self._wrap_again()
        try:
            steps = self._file_steps(
                path,
                report.rejected_offsets,
                start,
                state.epoch,
                on_epoch=lambda epoch: setattr(state, "epoch", epoch),
            )
            for step in steps:
                self._after_step(step, state)
            if self.global_step != state.saved_at:
                self._save(state, at_end=True)
        except TrainingInterrupted:
            # Taken again by this process (the stop was for this job, not the worker), it
            # goes on from the step just saved, not from the top of the file.
            self.pending_resume = state.job_cursor()
            self.resumed_state = {
                "global_step": self.global_step,
                "epoch": state.epoch,
                "file_step": state.file_step,
            }
            self.report.set_status("idle")
            raise
        except TrainerError as exc:
            self.report.set_status("crashed")
            raise _named(exc, path, name) from None
        except Exception as exc:
            if self.group is not None and peer_failure(exc):
                raise self._group_lost(name, exc) from exc
            self.report.set_status("crashed")
            raise
        self.report.set_status(
            "completed", batch_step=state.file_step, batch_total_steps=state.file_step
        )
        return {
            "file": name,
            "sha256": digest,
            "steps": state.file_step,
            "global_step": self.global_step,
            "examples": state.examples_done,
            "rejected": report.rejected,
            "final_loss": self.report.loss.history[-1] if self.report.loss.history else None,
        }

    def _group_lost(self, name: str, exc: BaseException) -> TrainingInterrupted:
        """Another rank died mid-step: not this file's fault. The job goes back to the front
        of its queue (an interruption, not a failure) and this process ends too, so torchrun
        (or the restart policy) starts the group again from the last checkpoint's cursor."""
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        message = (
            f"a rank of the training group died while training {name} ({reason}); the job "
            "resumes from the last checkpoint when the group restarts"
        )
        log.error("%s", message)
        self.publisher.publish(
            Alert(level="error", source="trainer", code="rank_lost", message=message)
        )
        self.report.set_status("idle")
        signal.raise_signal(signal.SIGTERM)  # the worker's warm stop: no next job on this group
        return TrainingInterrupted(message)

    def follow_file(self, order: FileOrder) -> None:
        """A rank other than the lead: train the file the lead ordered, step for step with it
        (the same rows from the same cursor, this rank's share of each step), until its end
        or a stop agreed by all ranks. Nothing is published or written here."""
        assert self.group is not None
        self._stop.clear()
        self.rows_per_batch = self.settings.rows_per_micro_batch
        if order.codebook is not None:
            codebook = Codebook.from_json(
                order.codebook, source=f"the lead's order for {order.name}"
            )
            if self.codebook is None:
                self._add_codes(codebook)  # the same codes the lead added before this order
            elif self.codebook.version != codebook.version:
                raise CodebookMismatch(
                    f"{order.name}: the lead trains codebook {codebook.version}, this rank holds "
                    f"{self.codebook.version}; restart the group from one checkpoint directory"
                )
        self._wrap_again()
        self.group.set_rng_state(order)
        steps = self._file_steps(Path(order.path), order.rejected_offsets, order.start, order.epoch)
        for step in steps:
            if self._optimizer_step(step)["stop"]:
                return

    def _file_steps(
        self,
        path: Path,
        rejected_offsets: Sequence[int],
        start: DataCursor | None,
        first_epoch: int,
        *,
        on_epoch: Callable[[int], None] | None = None,
    ) -> Iterator[StepRows]:
        """The file's packed optimizer steps from `start` (then from the top for each later
        epoch): one definition for the lead and the ranks that follow it, which must meet the
        same steps."""
        for epoch in range(first_epoch, self.settings.epochs):
            if on_epoch is not None:
                on_epoch(epoch)
            rows = file_rows(
                path,
                self.chat,
                self.settings,
                rejected_offsets=rejected_offsets,
                start=start,
                workers=self.loop.data_workers,
            )
            start = None
            yield from optimizer_steps(rows, self.settings.tokens_per_step)

    def _between_steps(self) -> contextlib.AbstractContextManager[Any]:
        """Around the lead's sampling and evaluation under torchrun: they must not move its
        random state away from the other ranks' (BF16AdamW's rounding draws from it)."""
        if self.group is None:
            return contextlib.nullcontext()
        return torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else [])

    def _after_step(self, step: StepRows, state: FileProgress) -> None:
        self.report.throughput.start()
        result = self._optimizer_step(step)
        if result["stop"]:
            self._stop.set()  # agreed by every rank (another's SIGTERM): no evaluation now
        self.report.throughput.stop(step.tokens)
        state.file_step += 1
        state.examples_done += len(step.examples)
        state.cursor = step.cursor_after
        if self.loop.train_ledger is not None:
            append_ledger(self.loop.train_ledger, state.job_id, self.global_step, step.examples)
        self.report.step(
            StepFigures(
                step=self.global_step,
                epoch=state.epoch + 1,
                loss=result["loss"],
                learning_rate=result["lr"],
                grad_norm=result["grad_norm"],
                entropy=result["entropy"],
                loss_tokens=step.loss_tokens,
                rows=len(step.rows),
                rows_per_batch=self.rows_per_batch,
                file_step=state.file_step,
                examples_done=state.examples_done,
                total_examples=state.total_examples,
                files_taken=self.files_taken,
                current_file=state.name,
                layers=result["layers"],
            )
        )
        if self.global_step % self.settings.save_steps == 0:
            self._save(state)
        if self.global_step % self.settings.eval_steps == 0:
            with self._between_steps():
                sample = self.sampler.sample(self.model, self._autocast(), codebook=self.codebook)
            self.report.sample(self.global_step, sample)
            with self._between_steps():
                self._fixed_eval()
        # Under torchrun only the agreed stop counts: the others go on to the next step.
        if self._stop.is_set() if result["stop"] is None else result["stop"]:
            if state.saved_at != self.global_step:
                self._save(state)
            raise TrainingInterrupted(
                f"stopped on request after step {self.global_step} of {state.name}; the "
                "checkpoint holds the data cursor and the job resumes when the trainer restarts"
            )

    # -- fixed evaluation ------------------------------------------------------------------

    def _fixed_eval(self, checkpoint_id: str | None = None) -> FixedEvalOutcome | None:
        """Score the fixed validation sets now (None when none are configured)."""
        with self._autocast():
            return self.fixed_eval.evaluate(
                self.model,
                step=self.global_step,
                train_loss=self.report.loss.streaming_ce,
                checkpoint_id=checkpoint_id,
            )

    # -- checkpoints -----------------------------------------------------------------------

    def _save(self, state: FileProgress, *, at_end: bool = False) -> None:
        job_cursor = state.job_cursor()
        save = functools.partial(
            self.store.save,
            self.model,
            self.tokenizer,
            step=self.global_step,
            trainer_state={
                "global_step": self.global_step,
                "files_taken": self.files_taken,
                "file_step": state.file_step,
                "epoch": state.epoch,
                "file_done": at_end,
                "train_loss_history": list(self.report.loss.history),
            },
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            cursor=job_cursor,
            trainer_config=self._recipe(),
            model_name=self.model_name,
            codebook=self.codebook,
        )
        info = self.disk.run(
            save,
            what=f"checkpoint of step {self.global_step}",
            where=self.store.root,
            interrupted=lambda: TrainingInterrupted(
                f"stopped on request after step {self.global_step} of {state.name} while "
                "waiting for disk space; it resumes from the last checkpoint's cursor"
            ),
        )
        state.saved_at = self.global_step
        self.latest_cursor = job_cursor
        fixed_em: float | None = None
        # Not on the way out: a stop must be quick (the supervisor's grace period).
        if self.loop.fixed_eval_at_checkpoint and not self._stop.is_set():
            with self._between_steps():
                outcome = self._fixed_eval(checkpoint_id=info.id)
            if outcome is not None and outcome.ce is not None:
                # Recorded before checkpoint.ready: retention keeps the lowest val_loss.
                self.store.record_validation(info.id, outcome.ce)
                info = self.store.info(info.id)
            fixed_em = outcome.em if outcome is not None else None
        publish_ready(self.publisher, info, fixed_eval_em=fixed_em)
        apply_retention(
            self.store, RetentionPolicy.from_settings(self.ckpt_settings), publisher=self.publisher
        )
