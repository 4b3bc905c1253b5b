"""Node fixtures: a running node (tests/rig/node.py) with test settings, and model variants."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from codec.codebook import CODEBOOK_FILE, Codebook
from codec.domains import default_codebook
from services.model.config import get_model_settings
from services.node.config import NodeSettings
from tests.rig.node import (
    ADMIN_TOKEN,
    RunningNode,
    love_markers,
    nudge,
    save_model_variant,
    start_node,
)
from tests.rig.ports import free_port


@pytest.fixture
def node_settings_factory(
    redis_url: str, embedded_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., NodeSettings]:
    """Settings of a test node: CPU, the embedded model as default, a free port, a token.

    R3_MODEL points at the session's embedded model so nothing is built again; R3_REDIS_URL
    at the test's database (the `redis_url` fixture). Keyword arguments override fields.
    """
    monkeypatch.setenv("R3_MODEL", str(embedded_dir))
    get_model_settings.cache_clear()

    def make(**overrides: Any) -> NodeSettings:
        fields: dict[str, Any] = {
            "node_port": free_port(),
            "node_name": "test-node",
            "data_dir": tmp_path / "data",
            "node_device": "cpu",
            "admin_token": ADMIN_TOKEN,
            "node_batch_wait_seconds": 0.02,
            **overrides,
        }
        return NodeSettings(**fields)

    return make


@pytest.fixture
def node_factory(
    node_settings_factory: Callable[..., NodeSettings],
) -> Iterator[Callable[..., RunningNode]]:
    """Start nodes with overridden settings (`node_factory(node_protect_reads=True)`)."""
    started: list[RunningNode] = []

    def make(**overrides: Any) -> RunningNode:
        node = start_node(node_settings_factory(**overrides))
        started.append(node)
        return node

    yield make
    for node in started:
        node.stop()


@pytest.fixture
def node(node_factory: Callable[..., RunningNode]) -> RunningNode:
    """A node with the default test settings, serving the embedded model."""
    return node_factory()


@pytest.fixture(scope="session")
def nudged_model_dir(tmp_path_factory: pytest.TempPathFactory, embedded_dir: Path) -> Path:
    """The embedded model with every weight moved a little: another version to swap to."""
    return save_model_variant(embedded_dir, tmp_path_factory.mktemp("nudged") / "nudged", nudge)


@pytest.fixture(scope="session")
def marker_model_dir(tmp_path_factory: pytest.TempPathFactory, embedded_dir: Path) -> Path:
    """A model that, greedy, always wants 🤔, then " one", then 🛑 (tests/rig/node.py says how)."""
    dest = tmp_path_factory.mktemp("markers") / "markers"
    return save_model_variant(embedded_dir, dest, love_markers)


# The model extended with code tokens (tests/node/test_codebook_serving.py and the pull tests).
CODED = "coded-3"


# <E000> of the test's codebook: a whole step, so a model that writes only this code writes
# decodable reasoning (the default codebook's <E000> is `) (`).
WHOLE_STEP = ("(", "ans", "valid", ")")


@pytest.fixture(scope="session")
def own_codebook() -> Codebook:
    """WHOLE_STEP, then the default codebook's fragments in reverse order: other codes."""
    fragments = [WHOLE_STEP, *reversed(default_codebook().fragments)]
    return Codebook(fragments, {"made_by": "test"})


def _add_codes(codebook: Codebook) -> Callable[[Any, Any], None]:
    from codec.hf_extension import add_codes

    def edit(model: Any, tokenizer: Any) -> None:
        add_codes(tokenizer, model, codebook.codes())

    return edit


@pytest.fixture(scope="session")
def coded_model_dir(
    tmp_path_factory: pytest.TempPathFactory, embedded_dir: Path, own_codebook: Codebook
) -> Path:
    """The embedded model and tokenizer extended with `own_codebook`'s codes, saved with it."""
    dest = tmp_path_factory.mktemp("coded") / CODED
    save_model_variant(embedded_dir, dest, _add_codes(own_codebook))
    own_codebook.save(dest / CODEBOOK_FILE)
    return dest
