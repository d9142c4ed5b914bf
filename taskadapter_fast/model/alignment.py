"""Fine-grained cross-modal alignment and the stage-wise semantic score (docs/method.md §5)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .text import cosine_matrix


def stage_bounds(num_aligned: int, num_stages: int) -> list[tuple[int, int]]:
    """Inclusive index ranges of the stages over `num_aligned` features, neighbours sharing an end point.

    b_s = round(s * (num_aligned - 1) / num_stages); stage s = b_s..b_{s+1}. For 7 aligned features and
    3 stages this is {0,1,2}, {2,3,4}, {4,5,6} (the official split); for one stage it is everything.
    """
    edges = [math.floor(s * (num_aligned - 1) / num_stages + 0.5) for s in range(num_stages + 1)]
    return [(edges[s], edges[s + 1]) for s in range(num_stages)]


class CrossModalAlignment(nn.Module):
    """Aligns query frame features F [M, T, E] to an aligned sequence F̄ [M, T', E].

    cross_attention (official, cross_query): F̄_i = softmax(F_i F_{i+1}^T / sqrt(E)) F_{i+1} + F_{i+1}, the
    attention running across the M query videos at each time step (no learnable weights; `layernorm`
    adds a learnable LayerNorm on the attention output, the SSv2-Full preset). per_video: frame i attends
    to frame i+1 of its own video only, and the residual is the query frame, as eq. (15) writes it:
    F̄_i = F_{i+1} + F_i (LN(F_{i+1}) + F_i with the LayerNorm). Each of `layers` applications shortens the
    sequence by one.
    conv1d: a learnable Conv1d(E, E, kernel 3) over time plus the centre frames (T' = T - 2).
    none: F̄ = F.
    """

    def __init__(self, embed_dim: int, kind: str, layers: int = 1, mode: str = "cross_query", layernorm: bool = False):
        super().__init__()
        self.kind, self.layers, self.mode = kind, layers, mode
        self.ln_1 = nn.LayerNorm(embed_dim) if (layernorm and kind == "cross_attention") else None
        self.conv = nn.Conv1d(embed_dim, embed_dim, kernel_size=3) if kind == "conv1d" else None

    def num_aligned(self, num_frames: int) -> int:
        if self.kind == "cross_attention":
            return num_frames - self.layers
        return num_frames - 2 if self.kind == "conv1d" else num_frames

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        if self.kind == "none":
            return feats
        if self.kind == "conv1d":
            return self.conv(feats.transpose(1, 2)).transpose(1, 2) + feats[:, 1:-1]
        for _ in range(self.layers):
            cur = feats[:, :-1].transpose(0, 1)  # [T-1, M, E] frame i of every query
            nxt = feats[:, 1:].transpose(0, 1)  # [T-1, M, E] frame i+1 of every query
            if self.mode == "cross_query":
                attn = torch.softmax(cur @ nxt.transpose(1, 2) / math.sqrt(cur.shape[-1]), dim=-1)  # [T-1, M, M]
                out, residual = attn @ nxt, nxt  # the official residual: the key frame
            else:  # a single key: the softmax weight is 1; eq. (15)'s residual: the query frame
                out, residual = nxt, cur
            if self.ln_1 is not None:
                out = self.ln_1(out)
            feats = (out + residual).transpose(0, 1)  # [M, T-1, E]
        return feats


def stage_scores(aligned: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """The stage table of eqs. (16)-(17): [S, M, C], entry [s, q, c] = mean over i in stage s of
    cos(F̄_i[q], F_T[c, s]).

    aligned: [M, T', E]; text: [C, S, E] (S text features per class).
    """
    sims = cosine_matrix(aligned.unsqueeze(0), text.transpose(0, 1).unsqueeze(1))  # [S, M, T', C]
    bounds = stage_bounds(aligned.shape[1], text.shape[1])
    return torch.stack([sims[s, :, lo : hi + 1].mean(dim=1) for s, (lo, hi) in enumerate(bounds)])


def semantic_score(aligned: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Ṗ[q, c] = mean over stages s of mean over i in s of cos(F̄_i[q], F_T[c, s]): the stage table's mean.

    aligned: [M, T', E]; text: [C, S, E] (S text features per class). Returns [M, C].
    """
    return stage_scores(aligned, text).mean(dim=0)
