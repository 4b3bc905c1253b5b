"""The study's PNG plots: EM against steps, EM against loss tokens, thinking tokens per mode.

matplotlib is the optional extra `study` (pip install 'regime3[study]'), imported here only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from services.study.errors import StudyError


def require_matplotlib() -> None:
    """Fail before any training when the plots could not be drawn at the end."""
    _pyplot()


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display
        import matplotlib.pyplot as plt
    except ImportError:
        raise StudyError(
            "the study's plots need matplotlib: pip install 'regime3[study]' (or "
            "matplotlib>=3.8), then re-run the same command: finished runs are not trained "
            "again"
        ) from None
    return plt


def write_plots(data: dict[str, Any], out: Path) -> list[Path]:
    """Draw the three plots of a report (`report.report`'s dict) into `out`."""
    plt = _pyplot()
    plan = data["plan"]
    target = plan["target"]
    colors = {m: f"C{k}" for k, m in enumerate(plan["modes"])}
    styles = ["-", "--", ":", "-."]
    written = []
    for name, key, label in (
        ("em_vs_steps.png", "step", "optimizer steps"),
        ("em_vs_loss_tokens.png", "loss_tokens", "loss tokens trained"),
    ):
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for run in data["runs"]:
            if not run["curve"]:
                continue
            k = plan["seeds"].index(run["seed"]) % len(styles)
            ax.plot(
                [p[key] for p in run["curve"]],
                [p["em"] for p in run["curve"]],
                styles[k],
                color=colors[run["mode"]],
                marker=".",
                label=f"{run['mode']} seed {run['seed']}",
            )
        ax.axhline(target, color="grey", linewidth=0.8, linestyle=":")
        ax.set_xlabel(label)
        ax.set_ylabel("held-out EM")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{plan['domain']} d{plan['difficulty']}: EM vs {label}")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        written.append(out / name)
    means = [r for r in data["table"] if r["seed"] is None]
    fig, ax = plt.subplots(figsize=(6, 3.8))
    values = [r["thinking_tokens"] or 0.0 for r in means]
    bars = ax.bar([r["mode"] for r in means], values, color=[colors[r["mode"]] for r in means])
    ax.bar_label(bars, fmt="%.1f")
    ax.set_ylabel("thinking tokens per answer (last step)")
    ax.set_title("reasoning tokens before the first stop marker (mean over seeds)")
    fig.tight_layout()
    fig.savefig(out / "thinking_tokens.png", dpi=110)
    plt.close(fig)
    written.append(out / "thinking_tokens.png")
    return written
