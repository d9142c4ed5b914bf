"""Task-Adapter++: the full model (docs/method.md §2–§6)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .alignment import CrossModalAlignment, stage_scores
from .backbone import build_clip, get_tokenizer
from .metrics import build_metric
from .text import OrderAdaptedText, build_prompts
from .visual import TaskAdaptedVisual

log = logging.getLogger(__name__)

OFFICIAL_COMPAT_NOTE = (
    "official_compat=True: the semantic score is multiplied TRANSPOSED ([class, query] times [query, class]), "
    "as the official code does. Because queries are ordered by class, query a is then paired with the text of "
    "class a: the query order leaks the label into the score. Use only for parity runs against the official code."
)


def _at_least_fp32(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


class ScoreParts(NamedTuple):
    """The scores [M, C] and what they are made of (docs/method.md §3, §5, §6); None where config.score skips it."""

    scores: torch.Tensor  # P ⊙ Ṗ (or P, or Ṗ alone)
    visual: torch.Tensor | None  # P [M, C]
    semantic: torch.Tensor | None = None  # Ṗ [M, C]
    stages: torch.Tensor | None = None  # the stage table [S, M, C]; its mean over stages is Ṗ
    aligned: torch.Tensor | None = None  # F̄ [M, T', E]


class TaskAdapterPP(nn.Module):
    """Frozen CLIP + Task-Adapter visual branch + order-adapted text branch + stage-wise alignment.

    Use `taskadapter_fast.create_model` to build one.
    """

    def __init__(self, config: ModelConfig, clip: nn.Module | None = None):
        super().__init__()
        self.config = config
        if clip is None:
            clip = build_clip(config.clip_model, config.pretrained, config.quick_gelu, config.init_seed)
        self.clip = clip
        self.tokenizer = get_tokenizer(config.clip_model)
        self.clip.requires_grad_(False)
        visual = self.clip.visual
        self.visual = TaskAdaptedVisual(
            visual,
            num_frames=config.num_frames,
            adapter_layers=config.adapter_layers,
            adapter_ratio=config.adapter_ratio,
            aim=config.aim_adapters,
            task=config.task_adapter,
            temporal_embedding=config.temporal_embedding,
        )
        if config.full_finetune:
            visual.requires_grad_(True)
        self.text = OrderAdaptedText(self.clip, config.text_adapter_layers, config.adapter_ratio)
        embed_dim = visual.output_dim
        self.embed_dim = embed_dim
        self.alignment = CrossModalAlignment(
            embed_dim, config.alignment, config.alignment_layers, config.alignment_mode, config.alignment_layernorm
        )
        self.metric = build_metric(config.metric, embed_dim, config.num_frames, **config.metric_options)
        if config.official_compat:
            warnings.warn(OFFICIAL_COMPAT_NOTE, stacklevel=2)

    # ----------------------------------------------------------------------------------------- parameters
    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters())

    def parameter_report(self) -> dict[str, int]:
        """Trainable parameter counts per part, plus the frozen total."""
        report = {
            "temporal_embedding": 0
            if self.visual.temporal_embedding is None
            else self.visual.temporal_embedding.numel(),
            "visual_adapters": sum(p.numel() for p in self.visual.adapters.parameters() if p.requires_grad),
            "text_adapters": sum(p.numel() for p in self.text.adapters.parameters() if p.requires_grad),
            "alignment": sum(p.numel() for p in self.alignment.parameters() if p.requires_grad),
            "metric": sum(p.numel() for p in self.metric.parameters() if p.requires_grad),
            "backbone_trainable": sum(p.numel() for p in self.clip.parameters() if p.requires_grad),
        }
        report["trainable_total"] = self.num_trainable_parameters()
        report["frozen_total"] = sum(p.numel() for p in self.parameters() if not p.requires_grad)
        return report

    def train(self, mode: bool = True):
        super().train(mode)
        if not self.config.full_finetune:
            self.clip.eval()  # frozen backbone: no dropout, whatever the mode
        return self

    @property
    def device(self) -> torch.device:
        return self.clip.visual.conv1.weight.device

    @property
    def impl(self) -> str:
        return self.config.impl

    # ----------------------------------------------------------------------------------------- encoders
    def encode_videos(self, videos: torch.Tensor, record=None) -> torch.Tensor:
        """videos: [V, T, 3, S, S] normalised frames of ONE set (Task-MSA runs across its V videos) -> [V, T, E].

        record: reads the adapted blocks' attention inputs (`TaskAdaptedVisual.encode_suffix`; `taf.explain`).
        """
        tokens = self.visual.encode_prefix(self.clip.visual, videos, impl=self.impl)
        return self.visual.encode_suffix(self.clip.visual, tokens, impl=self.impl, record=record)

    def encode_video_prefix(self, videos: torch.Tensor) -> torch.Tensor:
        """The per-video frozen part: [V, T, 3, S, S] -> tokens [V, T, N, D] (cacheable at evaluation)."""
        return self.visual.encode_prefix(self.clip.visual, videos, impl=self.impl)

    def encode_from_prefix(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [V, T, N, D] of one set from `encode_video_prefix` -> features [V, T, E]."""
        return self.visual.encode_suffix(self.clip.visual, tokens, impl=self.impl)

    def class_prompts(
        self, class_names: Sequence[str], corpus: Mapping[str, Sequence[str]] | None, sub_actions: str | None = None
    ) -> tuple[list[str], int]:
        """-> (the C*P text prompts, class-major, P per class). sub_actions: the config's mode unless given."""
        class_names = [str(n) for n in class_names]
        if not class_names:
            raise ValueError("class_names is empty")
        mode = self.config.sub_actions if sub_actions is None else sub_actions
        if mode == "none":
            stages: list[list[str]] = [[] for _ in class_names]
        else:
            if corpus is None:
                raise ValueError(f"sub_actions={mode!r} needs a sub-action corpus, got None")
            from ..data.corpus import resolve_subactions

            stages = resolve_subactions(corpus, class_names)
        return build_prompts(class_names, stages, mode, self.config.prompt_template, self.config.label_prompt_template)

    @torch.compiler.disable  # Python string work (prompts, BPE): nothing for torch.compile to trace
    def tokenize_classes(
        self, class_names: Sequence[str], corpus: Mapping[str, Sequence[str]] | None, sub_actions: str | None = None
    ):
        """-> (token ids [C*P, 77] on the model's device, P prompts per class)."""
        prompts, per_class = self.class_prompts(class_names, corpus, sub_actions)
        return self.tokenizer(prompts).to(self.device), per_class

    def encode_classes(
        self, class_names: Sequence[str], corpus: Mapping[str, Sequence[str]] | None, sub_actions: str | None = None
    ) -> torch.Tensor:
        """-> text features [C, S, E]: S = 3 sub-action stages (1 for the none/concat/average ablations).

        sub_actions: the config's mode unless given ("none": the static label prompt, `taf.explain`).
        """
        sub_actions = self.config.sub_actions if sub_actions is None else sub_actions
        tokens, per_class = self.tokenize_classes(class_names, corpus, sub_actions)
        feats = self.text(self.clip, tokens, per_class, impl=self.impl)  # [C, P, E]
        if sub_actions == "average":
            feats = feats.mean(dim=1, keepdim=True)
        return feats

    # ----------------------------------------------------------------------------------------- scores
    def scores_from_features(
        self,
        support_feats: torch.Tensor,
        support_labels: torch.Tensor,
        query_feats: torch.Tensor,
        text_feats: torch.Tensor | None,
        num_classes: int,
    ) -> torch.Tensor:
        """support_feats [C*K, T, E], labels [C*K] in 0..C-1, query_feats [M, T, E], text [C, S, E] -> [M, C].

        text_feats may be None only when config.score == "video".

        Runs in float32 (at least) with autocast off: these tensors are tiny, and bf16 cosines (spacing
        2^-9 near 0.4, 0.125 after the x64 logit scale) would tie and flip predictions.
        """
        return self.score_parts(support_feats, support_labels, query_feats, text_feats, num_classes).scores

    def score_parts(
        self,
        support_feats: torch.Tensor,
        support_labels: torch.Tensor,
        query_feats: torch.Tensor,
        text_feats: torch.Tensor | None,
        num_classes: int,
    ) -> ScoreParts:
        """`scores_from_features` with the parts the scores are made of (`ScoreParts`), from the same computation."""
        with torch.autocast(support_feats.device.type, enabled=False):
            return self._scores(
                _at_least_fp32(support_feats),
                support_labels,
                _at_least_fp32(query_feats),
                None if text_feats is None else _at_least_fp32(text_feats),
                num_classes,
            )

    def _scores(self, support_feats, support_labels, query_feats, text_feats, num_classes: int) -> ScoreParts:
        grouped = group_support(support_feats, support_labels, num_classes)  # [C, K, T, E]
        if self.config.score == "text":
            video = None
        else:
            video = self.metric(grouped, query_feats)  # P [M, C]
        if self.config.score == "video":
            return ScoreParts(video, video)
        aligned = self.alignment(query_feats)  # F̄ [M, T', E]
        stages = stage_scores(aligned, text_feats)  # [S, M, C]
        semantic = stages.mean(dim=0)  # Ṗ [M, C] (= semantic_score)
        if self.config.score == "text":
            return ScoreParts(semantic, None, semantic, stages, aligned)
        if self.config.official_compat:
            if semantic.shape[0] != semantic.shape[1]:
                raise ValueError(
                    f"official_compat needs as many queries as classes (Q = 1); got {semantic.shape[0]} queries "
                    f"for {semantic.shape[1]} classes"
                )
            return ScoreParts(video * semantic.t(), video, semantic, stages, aligned)
        return ScoreParts(video * semantic, video, semantic, stages, aligned)

    def forward(
        self,
        support: torch.Tensor,
        support_labels: torch.Tensor,
        query: torch.Tensor,
        class_names: Sequence[str],
        corpus: Mapping[str, Sequence[str]] | None,
    ) -> torch.Tensor:
        """support [C*K, T, 3, S, S], labels [C*K] in 0..C-1, query [C*Q, T, 3, S, S] -> scores [C*Q, C] = P ⊙ Ṗ.

        Support and query are encoded as separate sets, so no support information reaches a query.
        """
        support_labels = torch.as_tensor(support_labels, device=self.device)
        check_episode(support, support_labels, query, class_names)
        support_feats = self.encode_videos(support)
        query_feats = self.encode_videos(query)
        text_feats = self.encode_classes(class_names, corpus) if self.config.score != "video" else None
        return self.scores_from_features(support_feats, support_labels, query_feats, text_feats, len(class_names))

    def loss(self, scores: torch.Tensor, query_labels: torch.Tensor) -> torch.Tensor:
        """CE(logit_scale * scores, y), logit_scale = 64 by default (docs/method.md §6)."""
        query_labels = torch.as_tensor(query_labels, device=scores.device)
        if query_labels.shape != scores.shape[:1]:
            raise ValueError(
                f"query_labels has shape {tuple(query_labels.shape)} but scores has {scores.shape[0]} queries"
            )
        return F.cross_entropy(self.config.logit_scale * scores.float(), query_labels.long())


@torch.compiler.disable  # data-dependent checks: eager, outside any compiled graph
def check_support_grouping(support_labels: torch.Tensor, num_classes: int) -> None:
    counts = torch.bincount(support_labels, minlength=num_classes)
    if counts.numel() != num_classes or bool((counts != counts[0]).any()) or int(counts[0]) == 0:
        raise ValueError(
            f"every class 0..{num_classes - 1} needs the same number of support videos; counts per class: "
            f"{counts.tolist()}"
        )


def group_support(support_feats: torch.Tensor, support_labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[C*K, T, E] features with labels [C*K] -> [C, K, T, E], each class's K shots in their given order."""
    check_support_grouping(support_labels, num_classes)  # so every class has exactly C*K / C shots
    order = torch.argsort(support_labels, stable=True)
    return support_feats[order].view(num_classes, support_feats.shape[0] // num_classes, *support_feats.shape[1:])


@torch.compiler.disable  # data-dependent checks: eager, outside any compiled graph
def check_episode(support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor, class_names) -> None:
    if support.dim() != 5 or query.dim() != 5:
        raise ValueError(
            f"support and query must be [V, T, 3, S, S]; got {tuple(support.shape)} and {tuple(query.shape)}"
        )
    if support_labels.dim() != 1 or support_labels.shape[0] != support.shape[0]:
        raise ValueError(
            f"support_labels has {tuple(support_labels.shape)} entries but there are {support.shape[0]} support videos"
        )
    num_classes = len(class_names)
    if support_labels.numel() and (int(support_labels.min()) < 0 or int(support_labels.max()) >= num_classes):
        raise ValueError(
            f"support_labels must lie in 0..{num_classes - 1} for {num_classes} class names; got "
            f"{sorted(set(support_labels.tolist()))}"
        )
    if support.shape[1:] != query.shape[1:]:
        raise ValueError(f"support frames {tuple(support.shape[1:])} and query frames {tuple(query.shape[1:])} differ")
