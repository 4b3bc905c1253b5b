"""Trainer test fixtures: the embedded tokenizer and model, offline, built once a session."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from transformers import PreTrainedTokenizerBase

from services.model.loading import load_tokenizer
from services.trainer.tokenize import ChatTokenizer

Row = dict[str, Any] | str | bytes


@pytest.fixture(scope="session")
def tokenizer(embedded_dir: Path) -> PreTrainedTokenizerBase:
    return load_tokenizer(embedded_dir)


@pytest.fixture(scope="session")
def chat(tokenizer: PreTrainedTokenizerBase) -> ChatTokenizer:
    return ChatTokenizer(tokenizer)


@pytest.fixture(scope="session")
def codec_rows() -> list[dict[str, Any]]:
    """300 users'-format examples from the codec domains, each with a unique meta.id."""
    from codec.domains import default_codebook, mixed_problems
    from codec.modes import RENDER_MODES

    rng = random.Random(0)
    codebook = default_codebook()
    rows = []
    for index, problem in enumerate(mixed_problems(300, seed=7)):
        row = problem.render(RENDER_MODES[index % len(RENDER_MODES)], codebook, rng)
        row["meta"]["id"] = f"ex-{index}"  # the domains repeat small problems
        rows.append(row)
    return rows


@pytest.fixture
def write_jsonl(tmp_path: Path) -> Callable[..., Path]:
    """Write rows (dicts as JSON, str/bytes verbatim) one a line to a file in tmp_path."""

    def write(rows: list[Row], name: str = "data.jsonl") -> Path:
        path = tmp_path / name
        with path.open("wb") as f:
            for row in rows:
                if isinstance(row, dict):
                    row = json.dumps(row, ensure_ascii=False)
                f.write((row.encode() if isinstance(row, str) else row) + b"\n")
        return path

    return write
