"""Explaining predictions: the attention and the stage-wise scores behind them, from the forward pass itself.

`explain(model, support, support_labels, query, class_names, corpus)` runs what `model(...)` runs and, on the
way, reads (docs/method.md §10):
- the spatial attention of the last adapted block: the class token's attention over the patch grid of each
  query frame (mean over heads), and optionally its rollout through the adapted blocks;
- the Task-MSA attention of the last adapted block: how much each query frame's class token attends to each
  video of its set (mean over heads);
- the stage table of eqs. (16)-(17) (stages x classes cosines, whose mean over stages is the semantic score Ṗ),
  the visual score P and the final scores, which are the model's own.

The attention is read by a recorder the adapted blocks call with the input of each attention (`record=` of
`TaskAdapterPP.encode_videos`); it recomputes the attention probabilities from that input with the block's
own projections and changes nothing downstream. Without an explanation no recorder is passed, and the forward
pass is the plain one.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Explanation:
    """Why the model scored Q queries as it did, against C classes (tensors in the forward pass's device/dtype,
    except `frames`).

    Attention maps are probability distributions over what they attend to: `spatial_attention[q, t]` sums to 1
    over the patch grid, `task_attention[q, t]` over the V videos. A part the model's config does not have is
    None: `task_attention` without task adapters (the AIM ablation), the stage table and Ṗ with
    `score="video"`, P with `score="text"`.
    """

    spatial_attention: torch.Tensor  # [Q, T, H', W'] last adapted block, class token -> patches, mean over heads
    task_attention: torch.Tensor | None  # [Q, T, V] last adapted block's Task-MSA, class token, mean over heads
    stage_similarity: torch.Tensor | None  # [Q, S, C] Cos(F̄_Q[s], F_T^c[s]), eq. (17) before the mean
    visual_score: torch.Tensor | None  # P [Q, C]
    semantic_score: torch.Tensor | None  # Ṗ [Q, C] = stage_similarity.mean(1)
    scores: torch.Tensor  # [Q, C], the model's own scores (P ⊙ Ṗ by default)
    predictions: torch.Tensor  # [Q] argmax of scores
    class_names: list[str]
    stage_texts: list[list[str]]  # per class, the text of each of its S stages (the sub-actions), as prompted
    frames: torch.Tensor  # [Q, T, S, S, 3] uint8 on the CPU: the query frames as the model saw them
    query_names: list[str]  # a name per query (its file, or "query <i>")
    task_videos: list[list[str]]  # per query, the names of the V videos its Task-MSA attends over
    task_self: list[int]  # per query, which of its task_videos is the query itself
    query_labels: torch.Tensor | None = None  # [Q] the true class of each query, when known
    rollout: torch.Tensor | None = None  # [Q, T, H', W'] attention rollout through the adapted blocks
    static_stage_similarity: torch.Tensor | None = None  # [Q, S, C] the stage table with the static label prompt
    stage_frames: list[tuple[int, int]] = field(default_factory=list)  # per stage, its aligned features lo..hi
    logit_scale: float = 64.0
    inductive: bool = False  # each query encoded as a set of one (its Task-MSA sees itself only)
    model_summary: str = ""

    @property
    def num_queries(self) -> int:
        return int(self.scores.shape[0])

    @property
    def probabilities(self) -> torch.Tensor:
        """softmax(logit_scale * scores) [Q, C], as the loss sees them."""
        return torch.softmax(self.logit_scale * self.scores.float(), dim=1)

    def wrong(self) -> torch.Tensor | None:
        """[Q] bool: predicted class != true class; None when the true classes are unknown."""
        if self.query_labels is None:
            return None
        return self.predictions.cpu() != self.query_labels.cpu()

    def cpu(self) -> Explanation:
        """A copy with every tensor on the CPU (what the reports read)."""
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return Explanation(**{k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in moved.items()})

    def save_html(self, path: str | os.PathLike, title: str | None = None) -> Path:
        """One self-contained HTML report (images embedded, no network): a section per query."""
        from .report import save_html

        return save_html([self], path, title=title)

    def save_png(self, folder: str | os.PathLike) -> list[Path]:
        """One PNG per query in `folder` (created); returns their paths."""
        from .report import save_pngs

        return save_pngs([self], folder)


def _head_probs(block: nn.Module, h: torch.Tensor, queries: slice | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(head dim)) of `block`'s attention on h [B, L, D] (sequence L), mean over heads, in
    float32 -> [B, L', L] (L' = the rows `queries` picks, all by default)."""
    attn = block.attn
    dim, heads = h.shape[-1], attn.num_heads
    weight, bias = attn.in_proj_weight, attn.in_proj_bias
    rows = h if queries is None else h[:, queries]
    q = F.linear(rows, weight[:dim], None if bias is None else bias[:dim])
    k = F.linear(h, weight[dim : 2 * dim], None if bias is None else bias[dim : 2 * dim])
    q = q.float().unflatten(-1, (heads, -1)).transpose(1, 2)  # [B, H, L', hd]
    k = k.float().unflatten(-1, (heads, -1)).transpose(1, 2)  # [B, H, L, hd]
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    return torch.softmax(logits, dim=-1).mean(dim=1)


class AttentionRecorder:
    """Called by the adapted blocks (`record=`) with the input of their spatial MSA and Task-MSA; keeps what an
    explanation shows of one encoded set: the last block's class-token rows, and the rollout if asked for."""

    def __init__(self, last_block: int, rollout: bool = False):
        self.last_block, self.want_rollout = last_block, rollout
        self.spatial: torch.Tensor | None = None  # [V, T, N] class token -> all tokens
        self.task: torch.Tensor | None = None  # [V, T, V]
        self._product: torch.Tensor | None = None  # [V*T, N, N] rollout through the blocks so far
        self.rollout: torch.Tensor | None = None  # [V, T, N]

    def __call__(self, index: int, kind: str, block: nn.Module, h: torch.Tensor) -> None:
        with torch.no_grad():
            if kind == "spatial":
                self._spatial(index, block, h)
            elif kind == "task" and index == self.last_block:
                cls = h[:, :, 0].transpose(0, 1)  # [T, V, D]: per frame, the sequence of the V videos
                self.task = _head_probs(block, cls).transpose(0, 1)  # [V, T, V]

    def _spatial(self, index: int, block: nn.Module, h: torch.Tensor) -> None:
        last = index == self.last_block
        if not (last or self.want_rollout):
            return  # only the last block's map is shown; the rollout chains every adapted block
        num_videos, num_frames = h.shape[:2]
        # The last block: the class token's row only (all the map and the rollout read); earlier ones: every row.
        probs = _head_probs(block, h.flatten(0, 1), slice(0, 1) if last else None)  # [V*T, 1 or N, N]
        if last:
            self.spatial = probs[:, 0].view(num_videos, num_frames, -1)
        if not self.want_rollout:
            return
        # Attention rollout: each block's attention with its residual (0.5 A + 0.5 I), chained block by block.
        eye = torch.eye(probs.shape[-1], device=probs.device, dtype=probs.dtype)[: probs.shape[1]]
        mixed = 0.5 * probs + 0.5 * eye
        self._product = mixed if self._product is None else mixed @ self._product
        if last:
            self.rollout = self._product[:, 0].view(num_videos, num_frames, -1)


def patch_map(rows: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Class-token attention rows [V, T, N] (token 0 the class token) -> [V, T, H', W'] over the patches,
    renormalised to sum to 1 (the class token's weight on itself left out)."""
    patches = rows[..., 1:]
    patches = patches / patches.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(patches.dtype).tiny)
    return patches.unflatten(-1, grid)


def denormalize(videos: torch.Tensor) -> torch.Tensor:
    """Normalised clips [Q, T, 3, S, S] -> uint8 [Q, T, S, S, 3] on the CPU: the frames as the model saw them."""
    from ..data.decode_common import CLIP_MEAN, CLIP_STD

    mean = torch.tensor(CLIP_MEAN).view(1, 1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 1, 3, 1, 1)
    pixels = (videos.detach().float().cpu() * std + mean).clamp(0, 1)
    return (pixels * 255).round().to(torch.uint8).permute(0, 1, 3, 4, 2).contiguous()


def stage_texts(model, class_names: Sequence[str], corpus, sub_actions: str | None = None) -> list[list[str]]:
    """Per class, the text behind each of its S text features: the sub-action of each stage (or the prompt)."""
    mode = model.config.sub_actions if sub_actions is None else sub_actions
    if mode in ("stages", "average") and corpus is not None:
        from ..data.corpus import resolve_subactions

        subs = resolve_subactions(corpus, [str(name) for name in class_names])
        return [[" / ".join(s)] for s in subs] if mode == "average" else [list(s) for s in subs]
    prompts, per_class = model.class_prompts(class_names, corpus, mode)
    return [prompts[c * per_class : (c + 1) * per_class] for c in range(len(class_names))]


def _task_videos(names: list[str], class_names, query_labels, inductive: bool) -> list[list[str]]:
    """Per query, the videos its Task-MSA attends over: the query set (or itself alone), each with its true class
    when known."""
    if query_labels is not None:
        labels = torch.as_tensor(query_labels).tolist()
        names = [f"{name} ({class_names[label]})" for name, label in zip(names, labels, strict=True)]
    return [[name] for name in names] if inductive else [names] * len(names)


def _model_summary(model, inductive: bool) -> str:
    config = model.config
    parts = [
        config.clip_model,
        f"{model.visual.depth - model.visual.first_adapted} adapted block(s)",
        "task adapters on" if config.task_adapter else "task adapters off (AIM)",
        f"sub-actions {config.sub_actions}",
        "inductive (each query alone)" if inductive else "transductive (queries as one set)",
    ]
    return ", ".join(parts)


def _grid(model) -> tuple[int, int]:
    grid = model.clip.visual.grid_size
    return (int(grid[0]), int(grid[1]))


def encode_explained(model, query: torch.Tensor, inductive: bool, rollout: bool):
    """Query features [Q, T, E] and their recorders: one for the set, or one per query when inductive."""
    last = model.visual.depth - 1
    sets = [query[q : q + 1] for q in range(query.shape[0])] if inductive else [query]
    feats, recorders = [], []
    for videos in sets:
        recorder = AttentionRecorder(last, rollout)
        feats.append(model.encode_videos(videos, record=recorder))
        recorders.append(recorder)
    return feats, recorders


def explain_queries(
    model,
    support_feats: torch.Tensor,
    support_labels: torch.Tensor,
    text_feats: torch.Tensor | None,
    query: torch.Tensor,
    class_names: Sequence[str],
    corpus: Mapping[str, Sequence[str]] | None,
    *,
    query_labels: torch.Tensor | Sequence[int] | None = None,
    query_names: Sequence[str] | None = None,
    inductive: bool = False,
    rollout: bool = False,
    static_prompt: bool = False,
) -> Explanation:
    """`explain` on a support set and class texts already encoded (`model.encode_videos`, `model.encode_classes`),
    as `predict` and `evaluate` hold them: the query clips [Q, T, 3, S, S] are encoded and scored here.

    inductive: each query encoded and scored alone (as `predict` does by default), else as one set.
    """
    num_classes, num_queries = len(class_names), query.shape[0]
    feats, recorders = encode_explained(model, query, inductive, rollout)
    parts = [model.score_parts(support_feats, support_labels, f, text_feats, num_classes) for f in feats]
    grid = _grid(model)
    names = list(query_names) if query_names is not None else [f"query {q + 1}" for q in range(num_queries)]
    if len(names) != num_queries:
        raise ValueError(f"query_names has {len(names)} names for {num_queries} queries")

    def joined(get) -> torch.Tensor | None:
        pieces = [get(p) for p in parts]
        return None if pieces[0] is None else torch.cat(pieces)

    scores = joined(lambda p: p.scores)
    stages = joined(lambda p: None if p.stages is None else p.stages.transpose(0, 1))  # [Q, S, C]
    static = None
    if static_prompt and stages is not None:
        static_text = model.encode_classes(class_names, corpus, sub_actions="none").float()  # [C, 1, E]
        expanded = static_text.expand(-1, stages.shape[1], -1)  # the label prompt at every stage
        from ..model.alignment import stage_scores

        static = torch.cat([stage_scores(p.aligned, expanded).transpose(0, 1) for p in parts])
    task = None
    if recorders[0].task is not None:
        task = torch.cat([r.task for r in recorders])
    from ..model.alignment import stage_bounds

    aligned_len = None if parts[0].aligned is None else parts[0].aligned.shape[1]
    return Explanation(
        spatial_attention=patch_map(torch.cat([r.spatial for r in recorders]), grid),
        task_attention=task,
        stage_similarity=stages,
        visual_score=joined(lambda p: p.visual),
        semantic_score=joined(lambda p: p.semantic),
        scores=scores,
        predictions=scores.argmax(dim=1),
        class_names=[str(n) for n in class_names],
        stage_texts=stage_texts(model, class_names, corpus) if stages is not None else [[] for _ in class_names],
        frames=denormalize(query),
        query_names=names,
        task_videos=_task_videos(names, class_names, query_labels, inductive),
        task_self=[0] * num_queries if inductive else list(range(num_queries)),
        query_labels=None if query_labels is None else torch.as_tensor(query_labels).cpu(),
        rollout=patch_map(torch.cat([r.rollout for r in recorders]), grid) if rollout else None,
        static_stage_similarity=static,
        stage_frames=[] if stages is None else stage_bounds(aligned_len, stages.shape[1]),
        logit_scale=float(model.config.logit_scale),
        inductive=inductive,
        model_summary=_model_summary(model, inductive),
    )


def explain(
    model,
    support: torch.Tensor,
    support_labels: torch.Tensor | Sequence[int],
    query: torch.Tensor,
    class_names: Sequence[str],
    corpus: Mapping[str, Sequence[str]] | None,
    *,
    query_labels: torch.Tensor | Sequence[int] | None = None,
    query_names: Sequence[str] | None = None,
    inductive: bool = False,
    rollout: bool = False,
    static_prompt: bool = False,
) -> Explanation:
    """The scores `model(support, support_labels, query, class_names, corpus)` gives, with what they are made of.

    Arguments as `model(...)` takes them (support [C*K, T, 3, S, S] with labels in 0..C-1, query [Q, T, 3, S, S]
    normalised clips); the model runs as it is (call `model.eval()` first, as for predictions), without
    gradients. Its `scores` equal `model(...)`'s exactly: the same modules, kernels and precision compute them.
    query_labels: the true classes, when known (the report marks them). inductive: each query alone (a set of
    one), as `predict` does. rollout: also the attention rollout through the adapted blocks. static_prompt: also
    the stage table with the static label prompt in place of the sub-action stages (the paper's comparison).
    """
    from ..model.task_adapter import check_episode

    support_labels = torch.as_tensor(support_labels, device=model.device)
    check_episode(support, support_labels, query, class_names)
    with torch.no_grad():
        support_feats = model.encode_videos(support)
        text = model.encode_classes(class_names, corpus) if model.config.score != "video" else None
        return explain_queries(
            model, support_feats, support_labels, text, query, class_names, corpus, query_labels=query_labels,
            query_names=query_names, inductive=inductive, rollout=rollout, static_prompt=static_prompt,
        )  # fmt: skip
