"""What every run of a study trains with: the demo's recipe, the user's variables winning,
the study's own choices forced, and nothing but trainer settings recorded."""

from __future__ import annotations

from services.study.runner import recipe


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
    )
    assert chosen["R3_LEARNING_RATE"] == "1e-3"
    assert chosen["R3_MAX_LENGTH"] == "256" and chosen["R3_TOKENS_PER_STEP"] == "1024"
    assert chosen["R3_TORCH_THREADS"] == "1"
    assert chosen["R3_EVAL_STEPS"] == "20" and chosen["R3_SAVE_STEPS"] == "20"
    for name in ("R3_SEED", "R3_CHECKPOINT_DIR", "R3_ADMIN_TOKEN", "R3_REDIS_URL", "HOME"):
        assert name not in chosen
