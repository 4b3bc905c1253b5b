"""Typed, versioned events: every message a regime3 process puts on the bus.

An event is an envelope (`type`, `v`, `time`, `host`, `run_id`) plus its own payload fields.
Payload fields that also appear in the users' TrainingStatus (docs/compat.md) keep that
name and meaning (`loss`, `streaming_ce`, `current_step` …); new ones use base units in their
names (`_seconds`, `_bytes`, `_watts`, `_c`).

To change a payload incompatibly, raise the class's `VERSION`; a reader that meets a version
newer than its own dead-letters the entry instead of guessing.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from bus import keys


def _now() -> datetime:
    return datetime.now(UTC)


# The one trend vocabulary of every figure that moves (loss, accuracy, fixed-eval EM).
Trend = Literal["improving", "stable", "degrading"]


class Event(BaseModel):
    """The envelope; subclasses add the payload and fix `type`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    TYPE: ClassVar[str] = ""
    VERSION: ClassVar[int] = 1
    STREAM: ClassVar[str] = ""  # the key in bus.keys this type is published to

    type: str = ""
    v: int = 0
    time: datetime = Field(default_factory=_now)
    host: str = ""
    run_id: str = ""

    def model_post_init(self, __context: Any) -> None:
        # type and v always describe the class, whatever the caller passed.
        object.__setattr__(self, "type", self.TYPE)
        if self.v == 0:
            object.__setattr__(self, "v", self.VERSION)


# --- training (trainer, every step) ----------------------------------------------------------


class TrainStep(Event):
    """One optimizer step. Field names follow TrainingStatus where they overlap."""

    TYPE: ClassVar[str] = "train.step"
    STREAM: ClassVar[str] = keys.STREAM_TRAINING

    current_step: int
    total_steps: int | None = None
    epoch: int = 0
    loss: float
    learning_rate: float
    grad_norm: float | None = None
    streaming_ce: float | None = None  # EMA-smoothed cross-entropy
    loss_variance: float | None = None
    token_entropy: float | None = None
    tokens: int = 0  # loss tokens in this step
    tokens_per_sec: float | None = None
    eta_seconds: float | None = None
    batch_step: int | None = None  # step within the current file
    batch_total_steps: int | None = None
    batch_number: int | None = None  # how many files this trainer has taken
    batch_queue_size: int | None = None  # files waiting in the train queues
    current_file: str | None = None
    micro_batch: int | None = None
    grad_accum: int | None = None
    gpu_temp_c: float | None = None
    gpu_vram_used_bytes: int | None = None
    gpu_vram_total_bytes: int | None = None
    gpu_power_watts: float | None = None
    # The current file's examples (times epochs) and how many are done.
    file_examples_done: int | None = None
    file_examples_total: int | None = None
    # The whole training queue, refreshed when it changes: priority → {"files", "examples",
    # "tokens"} waiting (the running file excluded; tokens estimated from the current file's
    # tokens per example), and the seconds to train the current file and all of them at the
    # measured tokens/s (`eta_seconds` is the current file's alone).
    queue_backlog: dict[str, dict[str, float]] | None = None
    queue_eta_seconds: float | None = None


class TrainStatus(Event):
    """The trainer's status changed (idle, training, crashed, completed): what the status hash
    says, pushed, so a viewer never has to poll it."""

    TYPE: ClassVar[str] = "train.status"
    STREAM: ClassVar[str] = keys.STREAM_TRAINING

    status: str  # bus.status.TrainingStatus.status: idle, training, crashed, completed
    model_name: str | None = None
    current_file: str | None = None
    current_step: int | None = None


class TrainSample(Event):
    """The in-loop sample every `eval_steps`: one prompt, its golden and the model's answer."""

    TYPE: ClassVar[str] = "train.sample"
    STREAM: ClassVar[str] = keys.STREAM_TRAINING

    current_step: int
    current_system_prompt: str | None = None
    current_prompt: str
    golden_answer: str
    model_answer: str
    answer_matches: bool
    parse_failed: bool = False
    canonical_answer: str | None = None  # decoded to canonical form when regime 3 is on
    total_evals: int = 0
    total_correct: int = 0
    accuracy_percent: float | None = None
    accuracy_last_20: float | None = None
    accuracy_last_50: float | None = None
    accuracy_trend: Trend | None = None


class TrainLayers(Event):
    """The layer monitor: per-layer gradient and update norms, every N steps."""

    TYPE: ClassVar[str] = "train.layers"
    STREAM: ClassVar[str] = keys.STREAM_TRAINING

    current_step: int
    layer_activity_summary: dict[str, dict[str, float]]  # layer → {grad_norm, update_norm}


# --- jobs (any RQ worker) ---------------------------------------------------------------------


class _JobEvent(Event):
    STREAM: ClassVar[str] = keys.STREAM_JOBS

    job_id: str
    queue: str
    func: str = ""
    description: str | None = None


class JobQueued(_JobEvent):
    TYPE: ClassVar[str] = "job.queued"
    priority: Literal["high", "normal", "low"] = "normal"


class JobStarted(_JobEvent):
    TYPE: ClassVar[str] = "job.started"
    worker: str


class JobProgress(_JobEvent):
    TYPE: ClassVar[str] = "job.progress"
    done: int
    total: int | None = None
    unit: str = "items"
    message: str | None = None


class JobFinished(_JobEvent):
    TYPE: ClassVar[str] = "job.finished"
    worker: str
    duration_seconds: float
    result: dict[str, Any] | None = None


class JobFailed(_JobEvent):
    TYPE: ClassVar[str] = "job.failed"
    worker: str
    reason: str  # one line a human can act on
    exc_type: str | None = None
    duration_seconds: float | None = None


# --- checkpoints (trainer) -------------------------------------------------------------------


class CheckpointReady(Event):
    """A complete, verified-on-write checkpoint. A node pulls it from the gateway: the URL is
    the gateway's base + `checkpoints.manifest.artifact_path(checkpoint_id)` (the route is the
    gateway's), and the manifest must hash to `manifest_sha256`."""

    TYPE: ClassVar[str] = "checkpoint.ready"
    STREAM: ClassVar[str] = keys.STREAM_CHECKPOINTS

    checkpoint_id: str
    step: int
    manifest_sha256: str  # digest of manifest.json, which lists every file's sha256
    path: str | None = None  # deprecated, ignored: older trainers wrote the gateway's URL path
    size_bytes: int
    files: int
    val_loss: float | None = None
    fixed_eval_em: float | None = None


class CheckpointPruned(Event):
    TYPE: ClassVar[str] = "checkpoint.pruned"
    STREAM: ClassVar[str] = keys.STREAM_CHECKPOINTS

    checkpoint_id: str
    reason: Literal["retention", "disk"]
    freed_bytes: int
    disk_free_bytes: int | None = None


# --- models (node) ---------------------------------------------------------------------------


class CheckpointPulled(Event):
    TYPE: ClassVar[str] = "checkpoint.pulled"
    STREAM: ClassVar[str] = keys.STREAM_MODELS

    node: str
    checkpoint_id: str
    bytes: int
    download_seconds: float
    resumed_bytes: int = 0  # bytes a Range request did not have to fetch again


class ModelSwapped(Event):
    TYPE: ClassVar[str] = "model.swapped"
    STREAM: ClassVar[str] = keys.STREAM_MODELS

    node: str
    model_id: str
    previous_model_id: str | None = None
    step: int | None = None
    bytes: int = 0
    download_seconds: float = 0.0
    load_seconds: float
    swap_seconds: float


class ModelSwapFailed(Event):
    TYPE: ClassVar[str] = "model.swap_failed"
    STREAM: ClassVar[str] = keys.STREAM_MODELS

    node: str
    checkpoint_id: str
    reason: str
    attempt: int = 1
    serving_model_id: str | None = None  # what keeps serving


class ModelActivated(Event):
    """The registry's active model changed by hand (`set_active`, a rollback)."""

    TYPE: ClassVar[str] = "model.activated"
    STREAM: ClassVar[str] = keys.STREAM_MODELS

    node: str
    model_id: str
    previous_model_id: str | None = None
    by: Literal["manual", "auto"] = "manual"


# --- evaluation (node) -----------------------------------------------------------------------


class EvalResult(Event):
    """A fixed validation set scored on one model. Names follow TrainingStatus's `fixed_eval_*`."""

    TYPE: ClassVar[str] = "eval.result"
    STREAM: ClassVar[str] = keys.STREAM_EVAL

    model_id: str
    eval_set: str
    step: int | None = None
    total: int
    correct: int
    parse_failures: int = 0
    fixed_eval_em: float
    fixed_eval_ce: float | None = None
    fixed_eval_ece: float | None = None
    val_train_gap: float | None = None
    fixed_eval_trend: Trend | None = None
    pattern_heatmap: dict[str, dict[str, float]] = Field(default_factory=dict)  # domain→diff→EM
    # The answers behind each heatmap cell (domain→diff→n), so a cell's EM is read with its n.
    pattern_counts: dict[str, dict[str, int]] = Field(default_factory=dict)
    # Who scored it: "trainer" (in-process) or "node:<name>" (over the node's HTTP API); None
    # from publishers older than the one scorer. Same rules either way (services.validation.
    # scorer), but a reader keeps the two apart: they score different model versions.
    scorer: str | None = None
    max_tokens: int | None = None  # the answer budget the set was scored under
    # `fixed_eval_ce` is per token of the set's own reference, so it cannot compare modes
    # (English references are ~5x longer than canonical ones). `answer_ce` can: the mean NLL
    # per token of the golden ANSWER only (the text after the reference's last 🛑), the same
    # text in every mode. None from publishers older than it.
    answer_ce: float | None = None
    # Mean tokens of the model's own reasoning per answer: the tokens before its first 🛑 (all
    # its tokens when it wrote no 🛑), less the four opening 🤔 that every mode writes, as the
    # model's tokenizer counts them (a code token is one).
    thinking_tokens: float | None = None
    codebook: str | None = None  # the codebook version codes were decoded with; None = default


# --- studies (`regime3 study modes`) ---------------------------------------------------------

StudyState = Literal["running", "done", "failed"]


class StudyProgress(Event):
    """One evaluation point of one run of a study (a mode and a seed), or its end."""

    TYPE: ClassVar[str] = "study.progress"
    STREAM: ClassVar[str] = keys.STREAM_STUDY

    study_id: str
    mode: str
    seed: int
    step: int
    total_steps: int
    em: float | None = None
    answer_ce: float | None = None
    thinking_tokens: float | None = None
    parse_failures: int | None = None
    loss_tokens: int | None = None  # loss tokens trained up to `step`
    state: StudyState = "running"


class StudyReport(Event):
    """A study's result table (the full report JSON is at `keys.study_key(study_id)`)."""

    TYPE: ClassVar[str] = "study.report"
    STREAM: ClassVar[str] = keys.STREAM_STUDY

    study_id: str
    domain: str
    difficulty: int
    modes: list[str]
    seeds: list[int]
    steps: int
    table: list[dict[str, Any]]  # one row per mode (means over seeds) and per mode and seed
    # The report's file relative to the study's --out folder ("report.json"), never a host
    # path: this stream is broadcast on the open /events route.
    report_path: str


# --- telemetry (every host) ------------------------------------------------------------------


class GpuReading(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    index: int
    name: str
    temp_c: float | None = None
    vram_used_bytes: int | None = None
    vram_total_bytes: int | None = None
    power_watts: float | None = None
    power_limit_watts: float | None = None
    utilization_percent: float | None = None
    sm_clock_mhz: int | None = None
    mem_clock_mhz: int | None = None


class Telemetry(Event):
    """One host's GPU and system readings. `gpus` is null with `gpu_reason` when NVML can't."""

    TYPE: ClassVar[str] = "telemetry"
    STREAM: ClassVar[str] = keys.STREAM_TELEMETRY

    role: Literal["trainer", "node", "gateway", "other"] = "other"
    gpus: list[GpuReading] | None = None
    gpu_reason: str | None = None
    power_profile: str | None = None
    cpu_percent: float
    ram_used_bytes: int
    ram_total_bytes: int
    disk_free_bytes: int
    disk_total_bytes: int


# --- alerts ----------------------------------------------------------------------------------


class Alert(Event):
    """Something a human should see: an OOM that was recovered from, a disk running low."""

    TYPE: ClassVar[str] = "alert"
    STREAM: ClassVar[str] = keys.STREAM_ALERTS

    level: Literal["info", "warning", "error"]
    source: str  # the process that raised it: trainer, node, inbox …
    code: str  # stable, for filtering: oom_recovered, disk_low, swap_failed …
    message: str


# --- dead letters ----------------------------------------------------------------------------


class DeadLetter(Event):
    """An entry no reader could use (malformed) or whose handler kept failing."""

    TYPE: ClassVar[str] = "deadletter"
    STREAM: ClassVar[str] = keys.STREAM_DEADLETTER

    source_stream: str
    source_id: str
    error: str
    deliveries: int = 0
    group: str | None = None
    consumer: str | None = None
    entry: dict[str, str]  # the original fields, as Redis returned them


EVENT_TYPES: dict[str, type[Event]] = {
    cls.TYPE: cls
    for cls in (
        TrainStep,
        TrainStatus,
        TrainSample,
        TrainLayers,
        JobQueued,
        JobStarted,
        JobProgress,
        JobFinished,
        JobFailed,
        CheckpointReady,
        CheckpointPruned,
        CheckpointPulled,
        ModelSwapped,
        ModelSwapFailed,
        ModelActivated,
        EvalResult,
        StudyProgress,
        StudyReport,
        Telemetry,
        Alert,
        DeadLetter,
    )
}
