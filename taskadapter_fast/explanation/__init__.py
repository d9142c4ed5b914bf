"""Explaining a prediction (the paper's Fig. 11): `explain` collects, `Explanation` holds, `report` draws.

- collect.py: `explain`, `explain_queries`, `Explanation` (attention maps and stage-wise scores from the forward
  pass itself)
- report.py: `save_html` (one self-contained page) and `save_pngs` (a picture per query)
"""

from __future__ import annotations

from .collect import Explanation, explain, explain_queries

__all__ = ["Explanation", "explain", "explain_queries"]
