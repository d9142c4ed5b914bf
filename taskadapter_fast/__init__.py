"""taskadapter_fast: Task-Adapter++ few-shot action recognition, faithful and fast."""

from __future__ import annotations

__version__ = "0.1.0"
