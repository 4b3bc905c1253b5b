"""The node's RQ job functions (`services.node.worker.jobs.evaluate` / `.generate`), over HTTP.

A job never loads weights: it calls the local node (R3_NODE_URL), which holds the GPU's one
copy of the model. Run them with `python -m services.node.worker`; queue them with
`bus.queues.enqueue` or `rq enqueue` (see docs/jobs.md).
"""

from __future__ import annotations

import logging
import random
from typing import Any

import redis
from rq import get_current_job

from bus.connections import connect
from bus.settings import get_bus_settings
from bus.worker import report_progress
from codec.domains import default_codebook
from codec.modes import Mode
from services.node.config import NodeSettings, get_node_settings
from services.node.errors import UnknownModelError
from services.node.pulling.registry import Registry
from services.node.worker import evaluation, generation
from services.node.worker.node_client import NodeClient

log = logging.getLogger(__name__)
MODEL_CHANGE_RETRIES = 3  # a swap mid-evaluation restarts it on the new model, this many times


def _connection() -> redis.Redis:
    job = get_current_job()
    return job.connection if job is not None else connect()


def _client(settings: NodeSettings) -> NodeClient:
    token = settings.node_api_token or settings.admin_token
    return NodeClient(settings.node_url, token=token.get_secret_value() if token else None)


def _progress(unit: str) -> Any:
    # A job.progress event about every tenth of the way (and at the end), not per item.
    def report(done: int, total: int, message: str | None = None) -> None:
        if done == total or done % max(1, total // 10) == 0:
            report_progress(done, total, unit=unit, message=message)

    return report


def _step_of(connection: redis.Redis, model_id: str, settings: NodeSettings) -> int | None:
    """The training step of a registered model, when this node's registry knows it."""
    node = settings.node_name or get_bus_settings().host_name
    try:
        return Registry(connection, node).get(model_id).step
    except UnknownModelError:
        return None


def evaluate(
    eval_set: str = "all",
    model: str = "active",
    mode: str = "english",
    limit: int | None = None,
    max_tokens: int | None = None,
    step: int | None = None,
    publish: bool = True,
) -> dict[str, Any]:
    """Score `eval_set` on the node's active model and publish `eval.result`.

    `eval_set`: a stored validation set (`arithmetic-d2-canonical`), a JSONL path in the
    training format, or a built-in held-out set (`all`, `<domain>`, `<domain>:<level>`)
    rendered in `mode`. `model` other than "active" must be the one the node serves now.
    """
    settings = get_node_settings()
    connection = _connection()
    node_name = settings.node_name or get_bus_settings().host_name
    with _client(settings) as client:
        for attempt in range(1, MODEL_CHANGE_RETRIES + 1):
            serving = client.active_model()
            if model not in ("active", serving):
                raise ValueError(
                    f"model {model!r} was asked for but the node serves {serving!r}; "
                    "set it active first (POST /models/set_active) or pass model=active"
                )
            # The serving model's codes: a built-in set is rendered with them, and its answers
            # decoded with them (None: it carries no codebook; the default one applies).
            codebook = client.model_codebook(serving)
            items = evaluation.resolve_eval_set(
                eval_set,
                validation_dir=settings.validation_path,
                mode=Mode(mode),
                limit=limit,
                codebook=codebook,
            )
            try:
                report = evaluation.evaluate_items(
                    client,
                    items,
                    codebook=codebook,
                    expected_model=serving,
                    eval_set=eval_set,
                    # The set's budget (services.validation.scorer) under R3_EVAL_MAX_TOKENS,
                    # or exactly the job's max_tokens.
                    max_tokens=max_tokens or settings.eval_max_tokens,
                    explicit_max_tokens=max_tokens is not None,
                    concurrency=settings.jobs_concurrency,
                    node_name=node_name,
                    step=step if step is not None else _step_of(connection, serving, settings),
                    train_ce=evaluation.train_loss(connection),
                    previous=evaluation.previous_ems(
                        connection, eval_set, scorer=evaluation.node_scorer(node_name)
                    ),
                    on_progress=_progress("examples"),
                )
                break
            except evaluation.ModelChanged as err:
                if attempt == MODEL_CHANGE_RETRIES:
                    raise
                log.info("evaluation restarts on the new model: %s", err)
    if publish:
        evaluation.publish(connection, report)
    return report.to_dict()


def generate(
    domain: str,
    count: int,
    difficulty: int = 1,
    mode: str = "english",
    seed: int | None = None,
    priority: str = "low",
    upload: bool = True,
    fallback: str = "golden",
    temperature: float | None = None,
    max_tokens: int | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """Sample the active model on `count` problems, keep what verifies, write a shard and
    upload it to the gateway (queued on train-<priority>). See services.node.worker.generation."""
    if fallback not in ("golden", "skip"):
        raise ValueError(f"fallback {fallback!r}: use golden or skip")
    settings = get_node_settings()
    if seed is None:
        seed = random.SystemRandom().randrange(2**31)  # recorded in the result and file name
    stem = name.removesuffix(".jsonl") if name else f"gen-{domain}-d{difficulty}-{mode}-{seed}"
    path = settings.generated_dir / f"{stem}.jsonl"
    with _client(settings) as client:
        # Encoded lines are rendered and judged with the serving model's own codes.
        serving = client.active_model()
        report = generation.generate_shard(
            client,
            domain=domain,
            count=count,
            difficulty=difficulty,
            mode=Mode(mode),
            seed=seed,
            path=path,
            max_tokens=max_tokens or settings.gen_max_tokens,
            temperature=settings.gen_temperature if temperature is None else temperature,
            concurrency=settings.jobs_concurrency,
            codebook=client.model_codebook(serving) or default_codebook(),
            # A reply of another model (a swap mid-job) is judged with that model's own.
            model=serving,
            fallback="golden" if fallback == "golden" else "skip",
            on_progress=_progress("problems"),
        )
    if upload and report.lines:
        token = settings.node_token.get_secret_value() if settings.node_token else None
        report.upload = generation.upload_shard(
            path, gateway_url=settings.gateway_url, token=token, priority=priority, name=path.name
        )
    return report.to_dict()
