"""Evaluation: accuracy ± 95% CI of a model over few-shot episodes.

- `loop`: `evaluate` (episodes in, `EvalResult` out) and `mean_ci95`;
- `features`: where an episode's features come from: the frozen-prefix cache (`CachedPrefix`) or the
  pixels (`DirectPrefix`);
- `cache`: the frozen-prefix cache (`PrefixCache`) and the class text features cache;
- `plots`: the N-way accuracy curve.
"""

from __future__ import annotations

from .cache import PrefixCache
from .loop import EvalResult, evaluate, mean_ci95
from .plots import plot_nway_curve

__all__ = ["EvalResult", "PrefixCache", "evaluate", "mean_ci95", "plot_nway_curve"]
