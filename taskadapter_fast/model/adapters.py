"""Bottleneck adapters (docs/method.md §2.4, §4.3)."""

from __future__ import annotations

from torch import nn

from .. import ops


class Adapter(nn.Module):
    """A(y) = fc2(GELU(fc1(y))), plus y when `skip`; fc1: D -> hidden, fc2: hidden -> D, exact GELU.

    `zero_init` zeroes fc2's weight and bias, so a new adapter starts as the identity map of the block
    (A_t, A_s, A_mlp, A_o); the task adapter keeps nn.Linear's default init (docs/method.md §2.4).
    """

    def __init__(self, dim: int, hidden: int, skip: bool = False, zero_init: bool = True):
        super().__init__()
        self.skip = skip
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        if zero_init:
            nn.init.zeros_(self.fc2.weight)
            nn.init.zeros_(self.fc2.bias)

    def forward(self, y, base=None, impl: str = "auto"):
        """y: [..., D]; base: [..., D] or None. Returns base + (y if skip) + fc2(GELU(fc1(y)))."""
        return ops.fused_adapter(
            y, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias, base=base, skip=self.skip, impl=impl
        )


class VisualBlockAdapters(nn.Module):
    """The adapters of one adapted ViT block: A_t, A_s (skip), A_task, A_mlp (docs/method.md §2.3).

    `aim=False` drops A_t, A_s and A_mlp (and the T-MSA), `task=False` drops A_task (and the Task-MSA).
    """

    def __init__(self, dim: int, hidden: int, aim: bool = True, task: bool = True):
        super().__init__()
        self.t_adapter = Adapter(dim, hidden, skip=False, zero_init=True) if aim else None
        self.s_adapter = Adapter(dim, hidden, skip=True, zero_init=True) if aim else None
        self.task_adapter = Adapter(dim, hidden, skip=False, zero_init=False) if task else None
        self.mlp_adapter = Adapter(dim, hidden, skip=False, zero_init=True) if aim else None
