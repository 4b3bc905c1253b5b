"""What every run of a study trains with: the demo's recipe, the user's variables winning,
the study's own choices forced, and nothing but trainer settings recorded."""

from __future__ import annotations

import os
from pathlib import Path

from services.study.runner import recipe, run_environment


def test_the_user_wins_over_the_recipe_and_the_study_over_the_user() -> None:
    chosen = recipe(
        20,
        {
            "R3_LEARNING_RATE": "1e-3",  # the user's: wins over the demo's 3e-3
            "R3_EVAL_STEPS": "7",  # --eval-every decides
            "R3_SEED": "99",  # --seeds decide
            "R3_CHECKPOINT_DIR": "/shared",  # per run: would make the runs collide
            "R3_ADMIN_TOKEN": "secret",  # not a trainer setting: never in the report
            "R3_REDIS_URL": "redis://elsewhere/3",
            "HOME": "/root",
        },
        env_file=Path("/nonexistent/.env"),
    )
    assert chosen["R3_LEARNING_RATE"] == "1e-3"
    assert chosen["R3_MAX_LENGTH"] == "256" and chosen["R3_TOKENS_PER_STEP"] == "1024"
    assert chosen["R3_TORCH_THREADS"] == "1"
    assert chosen["R3_EVAL_STEPS"] == "20" and chosen["R3_SAVE_STEPS"] == "20"
    for name in ("R3_SEED", "R3_CHECKPOINT_DIR", "R3_ADMIN_TOKEN", "R3_REDIS_URL", "HOME"):
        assert name not in chosen


def test_the_runs_dotenv_counts_as_the_users_and_a_run_gets_exactly_the_recipe(
    tmp_path: Path,
) -> None:
    # The runs' settings read `.env` too, and a recipe value in their environment would beat
    # it: the file's variables are the user's, old renamed names as their new ones.
    env_file = tmp_path / ".env"
    env_file.write_text(
        "R3_LEARNING_RATE=1e-4\nR3_FIXED_EVAL_MAX_NEW_TOKENS=48\nR3_ADMIN_TOKEN=secret\n"
    )
    chosen = recipe(20, {"R3_MAX_LENGTH": "128"}, env_file=env_file)
    assert chosen["R3_LEARNING_RATE"] == "1e-4"  # .env beats the demo's 3e-3
    assert chosen["R3_MAX_LENGTH"] == "128"  # the environment too
    assert chosen["R3_EVAL_MAX_TOKENS"] == "48"  # the old name, as the new one
    assert "R3_ADMIN_TOKEN" not in chosen
    both = recipe(20, {"R3_LEARNING_RATE": "2e-4"}, env_file=env_file)
    assert both["R3_LEARNING_RATE"] == "2e-4"  # the environment beats .env, as in settings

    # A run's environment: this invocation's trainer variables (a resumed study's user may
    # have changed them) never reach it; the recipe the report shows does.
    env = run_environment(
        {"R3_LEARNING_RATE": "1e-4"},
        {
            "R3_LEARNING_RATE": "5e-1",
            "R3_WARMUP_STEPS": "9",
            "R3_FIXED_EVAL_MAX_NEW_TOKENS": "7",
            "R3_ADMIN_TOKEN": "secret",
            "PATH": os.environ.get("PATH", ""),
        },
    )
    assert env["R3_LEARNING_RATE"] == "1e-4"
    assert "R3_WARMUP_STEPS" not in env and "R3_FIXED_EVAL_MAX_NEW_TOKENS" not in env
    assert env["R3_ADMIN_TOKEN"] == "secret" and "PATH" in env
