"""Figures of evaluation results: the N-way accuracy curve."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._atomic import atomic_savefig

__all__ = ["plot_nway_curve"]


def plot_nway_curve(points: Sequence[dict[str, Any]], path: str | os.PathLike, title: str) -> Path:
    """PNG of N-way 1-shot accuracy with 95% CI error bars (the paper's Fig. 9)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ways = [p["n_way"] for p in points]
    figure, axes = plt.subplots(figsize=(5, 3.5))
    axes.errorbar(ways, [p["accuracy"] for p in points], yerr=[p["ci95"] for p in points], marker="o", capsize=3)
    axes.set_xlabel("N (classes per episode), 1-shot")
    axes.set_ylabel("accuracy (%)")
    axes.set_xticks(ways)
    axes.set_title(title, fontsize=9)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    atomic_savefig(figure, path, dpi=120)
    plt.close(figure)
    return path
