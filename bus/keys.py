"""Every Redis key regime3 uses: streams, consumer groups, queues and hashes, in one place.

Lifetimes, so Redis memory stays bounded over weeks of running:
- event streams are trimmed on every XADD with an approximate MAXLEN (`~`), which Redis
  applies per macro node, so a stream may run a little over its cap but never grows
  without bound (caps: settings `R3_STREAM_MAXLEN_TRAINING`, `R3_STREAM_MAXLEN_DEFAULT`);
- the dead-letter stream is trimmed the same way (the default cap); an entry there is kept
  for a human to read, never retried automatically;
- hashes hold only the latest state (one field per value) and are overwritten in place;
- RQ's own keys (`rq:*`) follow RQ's TTLs: finished jobs 500 s by default, failed jobs a year.
"""

from __future__ import annotations

from typing import Final

PREFIX: Final = "r3:"

# --- event streams (XADD, trimmed by MAXLEN ~) -------------------------------------------
# One stream per topic, so a reader subscribes to what it shows and a noisy topic (training
# steps, telemetry) cannot push the rare ones (checkpoints) out of its window.
STREAM_TRAINING: Final = PREFIX + "stream:training"  # train.step, train.sample, train.layers
STREAM_JOBS: Final = PREFIX + "stream:jobs"  # job.queued … job.failed
STREAM_CHECKPOINTS: Final = PREFIX + "stream:checkpoints"  # checkpoint.ready / .pruned
STREAM_MODELS: Final = PREFIX + "stream:models"  # model.* on the nodes
STREAM_EVAL: Final = PREFIX + "stream:eval"  # eval.result
STREAM_TELEMETRY: Final = PREFIX + "stream:telemetry"  # telemetry, every few seconds a host
STREAM_ALERTS: Final = PREFIX + "stream:alerts"  # alert
STREAM_DEADLETTER: Final = PREFIX + "stream:deadletter"  # malformed or repeatedly failed
STREAM_STUDY: Final = PREFIX + "stream:study"  # study.progress, study.report (regime3 study)

# Short names for the CLI and the gateway (`--stream training`, `/events?streams=jobs`).
STREAMS: Final[dict[str, str]] = {
    "training": STREAM_TRAINING,
    "jobs": STREAM_JOBS,
    "checkpoints": STREAM_CHECKPOINTS,
    "models": STREAM_MODELS,
    "eval": STREAM_EVAL,
    "telemetry": STREAM_TELEMETRY,
    "alerts": STREAM_ALERTS,
    "deadletter": STREAM_DEADLETTER,
    "study": STREAM_STUDY,
}

# --- consumer groups (XREADGROUP / XACK / XAUTOCLAIM) ----------------------------------------
# A group lives as long as its stream; its pending list holds only unacknowledged entries.
GROUP_NODE_CHECKPOINTS: Final = "node-checkpoints"  # on STREAM_CHECKPOINTS: pull and swap
# Each node reads in a group of its own, `node-checkpoints:<node>` (node_checkpoints_group),
# so every node pulls every checkpoint; a restarted node resumes its group's pending entries.

# --- markers ---------------------------------------------------------------------------------
# SET NX with a 1-day TTL, so a malformed entry seen by several broadcast readers is
# dead-lettered once.
DEADLETTER_SEEN: Final = PREFIX + "deadletter:seen:{stream}:{entry_id}"
DEADLETTER_SEEN_TTL_S: Final = 86_400

# --- hashes (latest state, overwritten in place, no TTL) -------------------------------------
STATUS_TRAINING: Final = PREFIX + "status:training"  # the seed's TrainingStatus payload
NODE_STATUS: Final = PREFIX + "node:{node}"  # one node: active model, version, telemetry time
NODES: Final = PREFIX + "nodes"  # set of node names that have reported
# dataset sha256 → RQ job id of every file the inbox queued; no TTL (a few hundred bytes a
# file), so the same file dropped again months later is still recognized.
INBOX_QUEUED: Final = PREFIX + "inbox:queued"
# The node's model registry, per node (several nodes may share one Redis): a hash of model
# id → JSON entry (path or url, source, step, registered time), and a string with the active
# id. No TTL: entries live until DELETE /models/{id}; a few hundred bytes each.
NODE_MODELS: Final = PREFIX + "node:{node}:models"
NODE_ACTIVE_MODEL: Final = PREFIX + "node:{node}:active"
# Validation loss of each checkpoint a node pulled (model id → val_loss from checkpoint.ready),
# for the "improving" swap policy. No TTL: a field is deleted with its model (keep-last-K).
NODE_VAL_LOSS: Final = PREFIX + "node:{node}:val_loss"


# Liveness of a service that has no HTTP port and is not an RQ worker (the inbox): a string
# with the time of its last pass, SET with a TTL of a few passes, so a dead service's key
# expires by itself. Read by `regime3 health` (the compose healthchecks).
HEARTBEAT: Final = PREFIX + "heartbeat:{service}:{host}"


def heartbeat_key(service: str, host: str) -> str:
    return HEARTBEAT.format(service=service, host=host)


def node_status_key(node: str) -> str:
    return NODE_STATUS.format(node=node)


def node_models_key(node: str) -> str:
    return NODE_MODELS.format(node=node)


def node_active_model_key(node: str) -> str:
    return NODE_ACTIVE_MODEL.format(node=node)


def node_val_loss_key(node: str) -> str:
    return NODE_VAL_LOSS.format(node=node)


def node_checkpoints_group(node: str) -> str:
    return f"{GROUP_NODE_CHECKPOINTS}:{node}"


def deadletter_seen_key(stream: str, entry_id: str) -> str:
    return DEADLETTER_SEEN.format(stream=stream, entry_id=entry_id)


# --- RQ queues (RQ stores them as rq:queue:<name>) --------------------------------------------
# A worker lists its queues high → normal → low and RQ always takes the first non-empty one.
PRIORITIES: Final = ("high", "normal", "low")
TRAIN_QUEUES: Final = tuple(f"train-{p}" for p in PRIORITIES)
NODE_QUEUES: Final = tuple(f"node-{p}" for p in PRIORITIES)


def train_queue(priority: str) -> str:
    return f"train-{priority}"


def node_queue(priority: str) -> str:
    return f"node-{priority}"


# --- validation (the trainer's fixed evaluation) ----------------------------------------------
# One entry per evaluated checkpoint (or eval step): the answers to the fixed probe set, so the
# dashboard shows how each answer changed over training. A stream trimmed with MAXLEN ~
# EVOLUTION_MAXLEN (a few KB an entry: a couple of weeks of hourly checkpoints and more).
EVOLUTION: Final = PREFIX + "evolution"
EVOLUTION_MAXLEN: Final = 2000
# The feeder's state (hash, overwritten in place, no TTL): last decision, queued examples seen,
# generation jobs queued, the curriculum position.
FEEDER_STATUS: Final = PREFIX + "feeder"

# --- training history (bus/history.py) --------------------------------------------------------
# The stream above is trimmed, so a weeks-long run keeps its history as rollups written by the
# trainer at publish time: per run and bucket width (1, 16, 256, 4096, 65536 steps), a sorted
# set of buckets (min/max/last of loss, CE, tokens/s, accuracy) scored by bucket index. Each
# set keeps its newest 4,096 buckets (trimmed on every write: at most ~1.5 MB a run for all
# five levels) and expires HISTORY_TTL_S after the run's last write, so old runs go by
# themselves. HISTORY_RUNS: hash of run id → JSON {first_step, first_time, last_step,
# last_time}, one short field a run, no TTL (a run whose sets expired reads as empty).
HISTORY: Final = PREFIX + "history:{run_id}:{width}"
HISTORY_RUNS: Final = PREFIX + "history:runs"
HISTORY_TTL_S: Final = 90 * 86_400


def history_key(run_id: str, width: int) -> str:
    return HISTORY.format(run_id=run_id, width=width)


# --- studies (`regime3 study modes`, services/study) ------------------------------------------
# A study's full report JSON (a string, tens of KB with its curves), and the sorted set of
# study ids scored by their start (unix seconds). No TTL: a study is run by hand, a handful a
# week, and its report is what the dashboard's study page shows; delete both keys to forget one.
STUDY: Final = PREFIX + "study:{study_id}"
STUDIES: Final = PREFIX + "studies"


def study_key(study_id: str) -> str:
    return STUDY.format(study_id=study_id)
