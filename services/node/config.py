"""Settings of the inference node (env `R3_*`): where it listens, its tokens, serving limits."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr

from services.validation.config import ValidationSettings

MIB = 1 << 20


class NodeSettings(ValidationSettings):
    """The node and its worker, grouped by concern as the package is (serving, api, pulling,
    hardware, worker); the fixed sets' folder and eval budget are ValidationSettings' (shared
    with the trainer)."""

    # -- serving: the model on the device, batching, shutdown ------------------------------
    node_device: str = Field(
        "auto", description="Torch device of the weights: auto (cuda if present), cpu, cuda:0…"
    )
    node_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="Weights dtype: auto = float32 on CPU, the checkpoint's own dtype on a GPU.",
    )
    node_max_batch: int = Field(
        32, ge=1, le=1024, description="Most requests generated together in one batch."
    )
    node_batch_wait_seconds: float = Field(
        0.005,
        ge=0,
        le=1,
        description="How long the engine waits for more requests to join a batch once one "
        "arrives; longer gathers bigger batches, shorter answers a lone request sooner.",
    )
    node_max_queue: int = Field(
        1024,
        ge=1,
        description="Requests waiting for a batch; past this a request is refused with 503.",
    )
    node_cuda_graphs: bool = Field(
        True,
        description="On a GPU, capture the decode step once per batch/length bucket and "
        "replay it (CUDA graphs); off runs every step eagerly (slower, for debugging).",
    )
    node_fused_kernels: bool = Field(
        True,
        description="On a GPU with Liger-Kernel installed (the `cuda` extra), serve with its "
        "fused RMSNorm, RoPE and SwiGLU (fewer kernels per decode step).",
    )
    node_drain_seconds: float = Field(
        10.0,
        ge=0,
        le=3600,
        description="At shutdown (SIGTERM), how long requests under way may finish before "
        "they are ended with an error and the node exits.",
    )

    # -- serving: thinking markers (node defaults; a request's `thinking: {...}` overrides) --
    think_control: bool = Field(
        True,
        description="Apply the thinking-marker logits processors (🤔 opens the reasoning, 🛑 "
        "closes it) to every completion unless a request turns them off.",
    )
    think_open_max: int = Field(
        4, ge=0, description="Most 🤔 in a completion; only at its start, as one run."
    )
    think_close_min: int = Field(
        2, ge=1, description="Once a 🛑 run starts, it continues to at least this many."
    )
    think_close_max: int = Field(
        4, ge=1, description="Most 🛑 in the closing run; after it, no marker at all."
    )
    think_max_tokens: int | None = Field(
        None,
        ge=1,
        description="Cap on reasoning tokens (after the 🤔 run): reached, the 🛑 run is forced. "
        "Unset: no cap.",
    )

    # -- API: where it listens, what a request may ask -------------------------------------
    node_host: str = Field(
        "127.0.0.1", description="Address the node listens on; 0.0.0.0 to serve the LAN."
    )
    node_port: int = Field(8765, description="Port of the node's HTTP API (OpenAI-compatible).")
    node_name: str | None = Field(
        None,
        description="Name of this node in events and registry keys; unset: the bus host name.",
        json_schema_extra={"shown_default": "R3_HOST_NAME"},
    )
    node_max_messages: int = Field(256, ge=1, description="Most messages in one chat request.")
    node_max_tokens_limit: int = Field(
        4096, ge=1, description="Largest `max_tokens` a request may ask for."
    )
    node_default_max_tokens: int = Field(
        512, ge=1, description="`max_tokens` of a request that sets none."
    )
    node_max_body_bytes: int = Field(
        4 * MIB,
        ge=1024,
        description="Largest request body; a bigger one is refused with 413.",
        json_schema_extra={"shown_default": "4194304 (4 MiB)"},
    )
    node_default_temperature: float = Field(
        1.0,
        ge=0,
        le=2,
        description="Sampling temperature of a request that sets none (0 = greedy).",
    )
    node_default_top_p: float = Field(
        1.0, gt=0, le=1, description="Nucleus sampling `top_p` of a request that sets none."
    )

    # -- auth: bearer tokens of the API ----------------------------------------------------
    admin_token: SecretStr | None = Field(
        None,
        description="Bearer token for register, set_active, DELETE /models and power. Unset: "
        "those endpoints are off (403), never open.",
    )
    node_api_token: SecretStr | None = Field(
        None,
        description="Bearer token for inference and read endpoints when R3_NODE_PROTECT_READS "
        "is on (the admin token is accepted too).",
    )
    node_protect_reads: bool = Field(
        False,
        description="Require a bearer token (R3_NODE_API_TOKEN or R3_ADMIN_TOKEN) for "
        "inference and read endpoints too; off by default (a home LAN).",
    )

    # -- pulling: models on disk, checkpoints from the gateway, swaps ----------------------
    node_models_dir: Path | None = Field(
        None,
        description="Where a model registered by id alone (no path, no url) is looked for: "
        "`<dir>/<id>`, like the users' ~/llm/models/<checkpoint_name>.",
        json_schema_extra={"shown_default": "R3_DATA_DIR/models"},
    )
    gateway_url: str = Field(
        "http://127.0.0.1:8080",
        description="The trainer host's gateway: checkpoints are pulled from its "
        "/artifacts/checkpoints/ (and N3's jobs upload datasets to it).",
    )
    node_token: SecretStr | None = Field(
        None,
        description="Bearer token this node sends to the gateway (the gateway's "
        "R3_NODE_TOKEN, or its R3_ADMIN_TOKEN).",
    )
    checkpoint_watch: bool = Field(
        True,
        description="Pull checkpoints announced by checkpoint.ready (then activate them by "
        "R3_SWAP_POLICY); off: models are only registered and activated by hand.",
    )
    swap_policy: Literal["every", "manual", "improving"] = Field(
        "every",
        description="On checkpoint.ready: pull and activate every checkpoint, pull only "
        "(activate by hand with set_active), or activate only when val_loss improves on the "
        "serving model's.",
    )
    keep_models: int = Field(
        3,
        ge=1,
        description="Pulled checkpoints kept on disk (newest by step; the active one always "
        "stays); older ones are deleted and unregistered.",
    )
    pull_skip_files: list[str] = Field(
        ["optimizer.pt", "scheduler.pt", "rng_state.pt"],
        description="Manifest files not pulled (training state a server never reads), as JSON.",
    )
    pull_retries: int = Field(
        3,
        ge=0,
        description="Times one pull resumes a file with HTTP Range after a broken connection "
        "before it fails (a later delivery resumes again).",
    )
    pull_timeout_seconds: float = Field(
        30.0, gt=0, description="Connect/read timeout of each request to the gateway."
    )

    # -- hardware: telemetry and power -----------------------------------------------------
    telemetry_interval_seconds: float = Field(
        5.0, gt=0, description="Seconds between telemetry events the node publishes."
    )
    power_quiet_watts: float = Field(220, gt=0, description="GPU power limit of profile quiet.")
    power_normal_watts: float = Field(280, gt=0, description="GPU power limit of profile normal.")
    power_max_watts: float = Field(350, gt=0, description="GPU power limit of profile max.")
    power_schedule: str = Field(
        "",
        description="Daily power profiles in local time, first match wins, e.g. "
        "`quiet=22:00-07:00`; outside them R3_POWER_DEFAULT_PROFILE. Empty: no schedule.",
    )
    power_default_profile: Literal["quiet", "normal", "max"] = Field(
        "normal", description="Profile the schedule sets outside its rules."
    )
    power_sudo_nvidia_smi: bool = Field(
        False,
        description="When NVML refuses a power limit (not root), run `sudo -n nvidia-smi -pl` "
        "instead (needs a NOPASSWD sudoers line for nvidia-smi).",
    )

    # -- jobs: the node-worker (services.node.worker) --------------------------------------
    node_url: str = Field(
        "http://127.0.0.1:8765",
        description="The node the node-worker's jobs call over HTTP (evaluate, generate): jobs "
        "are clients of the local node, so a GPU holds one copy of the weights.",
    )
    jobs_concurrency: int = Field(
        32,  # the node's R3_NODE_MAX_BATCH: one full batch in flight
        ge=1,
        le=256,
        description="Requests an eval or generation job keeps in flight at once, so the node "
        "batches them.",
    )
    gen_max_tokens: int = Field(
        384, ge=1, description="`max_tokens` of each attempt a generation job samples."
    )
    gen_temperature: float = Field(
        0.7, ge=0, le=2, description="Sampling temperature of a generation job's attempts."
    )
    gen_dir: Path | None = Field(
        None,
        description="Where a generation job writes its shards before uploading them.",
        json_schema_extra={"shown_default": "R3_DATA_DIR/generated"},
    )

    @property
    def models_dir(self) -> Path:
        """Where a model registered by id alone is looked for."""
        return self.node_models_dir or self.layout.models

    @property
    def generated_dir(self) -> Path:
        """Where generation jobs write their shards."""
        return self.gen_dir or self.layout.generated


@lru_cache
def get_node_settings() -> NodeSettings:
    """Built lazily and cached; tests that change env call `cache_clear()`."""
    return NodeSettings()
