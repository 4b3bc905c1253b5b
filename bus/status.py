"""The latest TrainingStatus (the old setup's status payload, docs/compat.md), in one Redis hash.

`redis-cli HGETALL r3:status:training` shows it field by field; the gateway serves the same
payload at `GET /status/training_status.json` so the users' old viewer keeps working.
"""

from __future__ import annotations

import json
from typing import Any, Literal, cast

import redis
from pydantic import BaseModel, ConfigDict, ValidationError

from bus import keys
from bus.encoding import is_structured  # one rule for what is JSON, shared with streams
from bus.events import Trend


class TrainingStatus(BaseModel):
    """Field names and meanings exactly as the users' old `core/training_status.py`, plus the
    live figures they asked for (`val_train_gap`, `tokens_per_sec`, `eta_seconds`, GPU);
    docs/compat.md explains each."""

    model_config = ConfigDict(extra="ignore")

    status: Literal["idle", "training", "crashed", "completed"] = "idle"
    current_step: int = 0
    total_steps: int | None = None
    epoch: int = 0
    loss: float | None = None
    learning_rate: float | None = None
    timestamp: str | None = None  # ISO 8601, as the seed writes it

    model_name: str | None = None
    max_output_tokens: int | None = None
    context_window: int | None = None
    # The version of the codebook whose <E###> codes the run's tokenizer holds (None: no codes).
    codebook: str | None = None

    batch_step: int | None = None
    batch_total_steps: int | None = None
    batch_number: int | None = None
    batch_queue_size: int | None = None
    current_file: str | None = None

    current_system_prompt: str | None = None
    current_prompt: str | None = None
    golden_answer: str | None = None
    model_answer: str | None = None
    answer_matches: bool | None = None

    total_evals: int = 0
    total_correct: int = 0
    accuracy_percent: float | None = None
    accuracy_last_20: float | None = None
    accuracy_last_50: float | None = None
    accuracy_trend: Trend | None = None

    streaming_ce: float | None = None
    loss_variance: float | None = None
    token_entropy: float | None = None
    loss_trend: Trend | None = None

    fixed_eval_em: float | None = None
    fixed_eval_ce: float | None = None
    fixed_eval_ece: float | None = None
    fixed_eval_trend: Trend | None = None

    pattern_heatmap: dict[str, Any] | None = None
    pattern_loss_trend: dict[str, Any] | None = None
    layer_activity_summary: dict[str, Any] | None = None
    lora_stats: dict[str, Any] | None = None  # always null: full fine-tuning, as today

    train_loss_history: list[float] = []
    accuracy_history: list[float] = []

    # The live figures the old payload had no field for.
    validation_loss: float | None = None
    val_train_gap: float | None = None
    tokens_per_sec: float | None = None
    eta_seconds: float | None = None
    gpu_temp_c: float | None = None
    gpu_vram_used_bytes: int | None = None
    gpu_vram_total_bytes: int | None = None
    gpu_power_watts: float | None = None
    compile_seconds: float | None = None  # the trainer's first compiled step, compile included


_JSON_FIELDS = frozenset(
    n for n, f in TrainingStatus.model_fields.items() if is_structured(f.annotation)
)


def _encode(name: str, value: Any) -> str:
    if name in _JSON_FIELDS:
        return json.dumps(value, separators=(",", ":"))
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class StatusStore:
    """Reads and partially updates the status hash; one writer (the trainer) at a time."""

    def __init__(self, connection: redis.Redis, key: str = keys.STATUS_TRAINING) -> None:
        self.redis = connection
        self.key = key

    def update(self, **fields: Any) -> None:
        """Set the given fields (validated against TrainingStatus); `None` removes a field."""
        unknown = fields.keys() - TrainingStatus.model_fields.keys()
        if unknown:
            raise ValueError(f"not TrainingStatus fields: {sorted(unknown)}")
        TrainingStatus.model_validate(fields)  # type errors surface here, not in a reader
        present: dict[Any, Any] = {k: _encode(k, v) for k, v in fields.items() if v is not None}
        absent = [k for k, v in fields.items() if v is None]
        pipe = self.redis.pipeline(transaction=True)
        if present:
            pipe.hset(self.key, mapping=present)
        if absent:
            pipe.hdel(self.key, *absent)
        pipe.execute()

    def read(self) -> TrainingStatus:
        """The status as stored; a field that no longer parses is dropped, not fatal."""
        stored = cast(dict[bytes, bytes], self.redis.hgetall(self.key))
        raw = {k.decode(): v.decode() for k, v in stored.items()}
        data: dict[str, Any] = {}
        for name, text in raw.items():
            if name not in TrainingStatus.model_fields:
                continue
            try:
                data[name] = json.loads(text) if name in _JSON_FIELDS else text
            except json.JSONDecodeError:
                continue
        try:
            return TrainingStatus.model_validate(data)
        except ValidationError as exc:
            bad = {str(e["loc"][0]) for e in exc.errors()}
            return TrainingStatus.model_validate({k: v for k, v in data.items() if k not in bad})

    def clear(self) -> None:
        self.redis.delete(self.key)
