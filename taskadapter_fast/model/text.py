"""The semantic branch: sub-action prompts through CLIP's text tower with order adapters (docs/method.md §4)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .adapters import Adapter
from .visual import _msa


def build_prompts(
    class_names: Sequence[str], stages: Sequence[Sequence[str]], mode: str, template: str, label_template: str
) -> tuple[list[str], int]:
    """Prompts for C classes -> (C*P prompts, class-major, and P prompts per class).

    stages: three sub-action descriptions per class (beginning, process, end).
    mode "stages": P = 3, one prompt per stage (the method); "average": the same 3 prompts, features
    averaged later; "concat": P = 1, the three stages joined into one prompt; "none": P = 1, the label only.
    """
    prompts: list[str] = []
    for name, subs in zip(class_names, stages, strict=True):
        if mode in ("stages", "average"):
            prompts.extend(template.format(label=name, stage=s) for s in subs)
        elif mode == "concat":
            prompts.append(template.format(label=name, stage=" ".join(subs)))
        elif mode == "none":
            prompts.append(label_template.format(label=name))
        else:
            raise ValueError(f"unknown sub_actions mode {mode!r}")
    per_class = 3 if mode in ("stages", "average") else 1
    return prompts, per_class


class OrderAdaptedText(nn.Module):
    """Owns the order adapters A_o of the last M text blocks; runs CLIP's frozen text tower with them.

    In an adapted block, x [C, P, L, W] (C classes, P prompts, L = 77 tokens):
        x = x + MSA_causal(LN1(x))            per prompt, as in CLIP
        x = x + A_o(MSA_over_prompts(LN1(x))) O-MSA across the P prompts of a class, no mask
        x = x + MLP(LN2(x))
    """

    def __init__(self, clip: nn.Module, text_adapter_layers: int, adapter_ratio: float = 0.25):
        super().__init__()
        blocks = clip.transformer.resblocks
        self.depth = len(blocks)
        if text_adapter_layers > self.depth:
            raise ValueError(f"text_adapter_layers={text_adapter_layers} exceeds the text depth {self.depth}")
        self.width = clip.transformer.width
        self.first_adapted = self.depth - text_adapter_layers
        hidden = max(1, int(self.width * adapter_ratio))
        self.adapters = nn.ModuleDict(
            {
                str(i): Adapter(self.width, hidden, skip=False, zero_init=True)
                for i in range(self.first_adapted, self.depth)
            }
        )

    def forward(self, clip: nn.Module, tokens: torch.Tensor, per_class: int, impl: str = "auto") -> torch.Tensor:
        """tokens: [C*P, L] token ids (class-major) -> EOT features [C, P, E]."""
        num_prompts = tokens.shape[0]
        num_classes = num_prompts // per_class
        cast_dtype = clip.token_embedding.weight.dtype
        x = clip.token_embedding(tokens).to(cast_dtype) + clip.positional_embedding.to(cast_dtype)  # [C*P, L, W]
        attn_mask = clip.attn_mask
        if attn_mask is not None:
            attn_mask = attn_mask.to(device=x.device, dtype=x.dtype)
        if not clip.transformer.batch_first:
            raise ValueError("the text transformer must be batch_first (open_clip >= 2.24)")
        for i, block in enumerate(clip.transformer.resblocks):
            if i < self.first_adapted:
                x = block(x, attn_mask=attn_mask)
                continue
            x = x + block.ls_1(block.attention(block.ln_1(x), attn_mask=attn_mask))
            grouped = x.view(num_classes, per_class, *x.shape[1:])  # [C, P, L, W]
            order = _msa(block, block.ln_1(grouped), axis=1, impl=impl)  # O-MSA across the P prompts
            x = self.adapters[str(i)](order, base=grouped, impl=impl).flatten(0, 1)
            x = x + block.ls_2(block.mlp(block.ln_2(x)))
        x = clip.ln_final(x)
        eot = x[torch.arange(num_prompts, device=x.device), tokens.argmax(dim=-1)]  # [C*P, W]
        proj = clip.text_projection
        feats = proj(eot) if isinstance(proj, nn.Linear) else eot @ proj
        return feats.view(num_classes, per_class, -1)


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a [..., M, E], b [..., C, E] -> cosine similarities [..., M, C]."""
    return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).transpose(-1, -2)
