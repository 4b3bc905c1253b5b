"""Gateway settings (env `R3_*`): where it listens, its tokens, SSE buffers, upload limits."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field

from settings.base import R3Settings

# services/gateway/config.py → the repository root, where helper D's dashboards/ lives.
REPO_DASHBOARDS = Path(__file__).resolve().parents[2] / "dashboards"
MIB = 1 << 20


class GatewaySettings(R3Settings):
    gateway_host: str = Field(
        "127.0.0.1",
        description="Address the gateway listens on; 0.0.0.0 to serve other machines.",
    )
    gateway_port: int = Field(8080, description="Port of the gateway (events, artifacts, API).")
    admin_token: str | None = Field(
        None,
        description="Bearer token for admin calls; also accepted for artifacts and uploads.",
    )
    node_token: str | None = Field(
        None,
        description="Bearer token the nodes use to download checkpoints and upload datasets.",
    )
    dashboard_dir: Path = Field(
        REPO_DASHBOARDS,
        description="Static dashboard files served at `/` (index.html).",
        json_schema_extra={"shown_default": "the repository's dashboards/"},
    )
    upload_max_bytes: int = Field(
        1024 * MIB,
        ge=1,
        description="Largest dataset `POST /datasets` accepts; a bigger upload is cut off "
        "with 413 and nothing is stored.",
        json_schema_extra={"shown_default": "1073741824 (1 GiB)"},
    )
    sse_buffer_events: int = Field(
        4096,
        ge=16,
        description="Events buffered per SSE client; a client that falls this far behind "
        "gets `event: lagged` with a resume cursor and is disconnected.",
    )
    sse_ping_seconds: float = Field(
        15.0, gt=0, description="Keep-alive comment sent on an idle SSE stream this often."
    )
    sse_send_timeout_seconds: float = Field(
        30.0,
        gt=0,
        description="An SSE client whose socket accepts nothing for this long is disconnected.",
    )

    @property
    def datasets_path(self) -> Path:
        """The dataset store, the same one the inbox and `regime3 enqueue` use."""
        return self.layout.datasets


@lru_cache
def get_gateway_settings() -> GatewaySettings:
    """Read once per process; tests that change the environment call `cache_clear()`."""
    return GatewaySettings()
