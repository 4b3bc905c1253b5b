"""The node-worker's HTTP client of the local node: jobs share the node's one copy of weights."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import httpx

from codec.codebook import Codebook
from codec.errors import CodebookError


class NodeUnavailable(RuntimeError):
    """The node did not answer or answered with an error."""


class ModelGone(NodeUnavailable):
    """The node does not know the model asked about (any more): 404 model_not_found."""


@dataclass(frozen=True)
class Reply:
    text: str
    model: str  # the version that produced it (the response's `model`)
    finish_reason: str | None = None


@dataclass(frozen=True)
class Scored:
    """Teacher-forced log-probabilities of a completion's tokens (POST /v1/score)."""

    model: str
    tokens: list[str]
    logprobs: list[float]
    offsets: list[tuple[int, int]]  # each token's [start, end) in the completion's characters
    ce: float | None


class NodeClient:
    """Chat completions and teacher-forced scores from one node, with errors that say where."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout: float = 600.0,
        retries: int = 3,
        backoff: float = 1.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self.backoff = backoff
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> NodeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        # A node restarting, or full for a moment (503), is worth a few patient retries: a
        # long eval or generation job should not fail for one refused request.
        for attempt in range(self.retries + 1):
            try:
                response = self._http.post(path, json=body)
            except httpx.TransportError as err:
                if attempt == self.retries:
                    raise NodeUnavailable(
                        f"the node at {self.base_url} did not answer {path} ({err}); is "
                        "`python -m services.node` running there? (R3_NODE_URL)"
                    ) from None
            else:
                if response.status_code != 503 or attempt == self.retries:
                    break
            time.sleep(self.backoff * 2**attempt)
        if response.status_code >= 400:
            try:
                detail = response.json()
                message = (detail.get("error") or {}).get("message") or detail.get("detail")
            except ValueError:
                message = response.text[:300]
            raise NodeUnavailable(
                f"the node at {self.base_url} refused {path}: "
                f"HTTP {response.status_code}: {message}"
            )
        data = response.json()
        assert isinstance(data, dict)
        return data

    def active_model(self) -> str:
        """The id of the model the node serves now (GET /v1/models lists the active one)."""
        try:
            response = self._http.get("/v1/models")
            response.raise_for_status()
        except httpx.HTTPError as err:
            raise NodeUnavailable(f"GET {self.base_url}/v1/models failed: {err}") from None
        models = response.json().get("data") or []
        if not models:
            raise NodeUnavailable(f"the node at {self.base_url} serves no model")
        return str(models[0]["id"])

    def model_codebook(self, model: str) -> Codebook | None:
        """The codebook `model`'s code tokens mean (GET /v1/models/{model}/codebook); None
        when it carries none, so the codec's default codebook applies. ModelGone when the
        node does not know the model (any more); NodeUnavailable for any other failure."""
        path = f"/v1/models/{model}/codebook"
        try:
            response = self._http.get(path)
            data = response.json()
        except (httpx.HTTPError, ValueError) as err:
            raise NodeUnavailable(f"GET {self.base_url}{path} failed: {err}") from None
        if response.status_code >= 400:
            error = (data.get("error") or {}) if isinstance(data, dict) else {}
            message = error.get("message")
            gone = response.status_code == 404 and error.get("code") == "model_not_found"
            raise (ModelGone if gone else NodeUnavailable)(
                f"the node at {self.base_url} refused GET {path}: "
                f"HTTP {response.status_code}: {message or response.text[:300]}"
            )
        if data.get("codebook") is None:
            return None
        try:
            codebook = Codebook.from_json(data["codebook"], source=f"{self.base_url}{path}")
        except CodebookError as err:
            raise NodeUnavailable(f"the node's codebook of {model!r} is unusable: {err}") from None
        if codebook.version != data.get("version"):
            raise NodeUnavailable(
                f"the node's codebook of {model!r} reads as {codebook.version}, not the "
                f"{data.get('version')} it names: the node and this worker run different codecs"
            )
        return codebook

    def chat(
        self,
        messages: list[dict[str, str]],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        thinking: dict[str, Any] | None = None,
    ) -> Reply:
        body: dict[str, Any] = {
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "top_p": top_p,
        }
        if seed is not None:
            body["seed"] = seed
        if thinking is not None:
            body["thinking"] = thinking  # e.g. {"enabled": False}: the model's own output
        data = self._post("/v1/chat/completions", body)
        choice = data["choices"][0]
        return Reply(
            text=choice["message"]["content"] or "",
            model=str(data["model"]),
            finish_reason=choice.get("finish_reason"),
        )

    def score(
        self, messages: list[dict[str, str]], completion: str, *, end_of_turn: bool = True
    ) -> Scored:
        data = self._post(
            "/v1/score",
            {"messages": messages, "completion": completion, "end_of_turn": end_of_turn},
        )
        return Scored(
            model=str(data["model"]),
            tokens=list(data["tokens"]),
            logprobs=[float(x) for x in data["logprobs"]],
            offsets=[(int(a), int(b)) for a, b in data["offsets"]],
            ce=data.get("ce"),
        )
