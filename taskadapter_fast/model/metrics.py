"""Video-metric heads: the video score P of docs/method.md §3, eq. (11), selectable by name.

Every head maps support features ``[C, K, T, E]`` (support videos grouped by class, class order =
episode order) and query features ``[M, T, E]`` to scores ``[M, C]``. Scores are SIMILARITIES on a
cosine-like scale (higher = more similar, identical inputs near 1), because the model multiplies
them element-wise with the semantic score Ṗ (a mean of cosines) and trains with CE(64 · P ⊙ Ṗ):
a distance, or a similarity of arbitrary sign and scale, would flip or swamp the text score.

| name | method | score |
| --- | --- | --- |
| ``proto_mean`` | official Task-Adapter++ ProtoNet (default) | cosine of temporal means, [-1, 1] |
| ``proto_frame`` | the paper's "ProtoNet" reading | mean frame-wise cosine, [-1, 1] |
| ``otam`` | OTAM, Cao et al. CVPR'20 | 1 - aligned cosine distance / (2T), [-1, 1] when λ = 0 |
| ``trx`` | TRX, Perrett et al. CVPR'21 | 1 - mean squared L2 / 2 on unit values, [-1, 1] |
| ``bimhm`` | Bi-MHM of HyRSM, Wang et al. CVPR'22 | half the bidirectional mean-max cosine, [-1, 1] |

The heads are pure PyTorch and batched over queries and classes (Python loops run only over
frames, tuple cardinalities or nothing).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DEFAULT_METRIC",
    "METRICS",
    "BiMHMMetric",
    "OTAMMetric",
    "ProtoFrameMetric",
    "ProtoMeanMetric",
    "TRXMetric",
    "VideoMetric",
    "build_metric",
]

# TRX (Perrett et al.) scales its fixed sinusoidal positional encoding by this factor before adding it.
_TRX_PE_SCALE = 0.1


class VideoMetric(nn.Module):
    """Base class: validates the episode's feature shapes, then scores every query against every class.

    Subclasses implement ``_scores(support_feats, query_feats)`` on validated inputs.
    """

    name: str = ""

    def __init__(self, embed_dim: int, num_frames: int) -> None:
        super().__init__()
        if not isinstance(embed_dim, int) or embed_dim < 1:
            raise ValueError(f"embed_dim must be a positive int, got {embed_dim!r}")
        if not isinstance(num_frames, int) or num_frames < 1:
            raise ValueError(f"num_frames must be a positive int, got {num_frames!r}")
        self.embed_dim = embed_dim
        self.num_frames = num_frames

    @property
    def has_parameters(self) -> bool:
        """True when the head has learnable parameters (they train with the adapters)."""
        return any(True for _ in self.parameters())

    def forward(self, support_feats: torch.Tensor, query_feats: torch.Tensor) -> torch.Tensor:
        """Score queries against classes.

        support_feats: [C, K, T, E] support video features, grouped by class in episode class order.
        query_feats: [M, T, E] query video features.
        Returns [M, C] similarities (higher = more similar), on the scale given in the head's docstring.
        """
        self._check_inputs(support_feats, query_feats)
        return self._scores(support_feats, query_feats)

    def _scores(self, support_feats: torch.Tensor, query_feats: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _check_inputs(self, support_feats: torch.Tensor, query_feats: torch.Tensor) -> None:
        for arg, value in (("support_feats", support_feats), ("query_feats", query_feats)):
            if not isinstance(value, torch.Tensor) or not value.is_floating_point():
                kind = f"tensor of dtype {value.dtype}" if isinstance(value, torch.Tensor) else type(value).__name__
                raise ValueError(f"{self.name}: {arg} must be a floating-point tensor, got a {kind}")
        support_shape, query_shape = tuple(support_feats.shape), tuple(query_feats.shape)
        shapes = f"support_feats {support_shape}, query_feats {query_shape}"
        if support_feats.dim() != 4:
            raise ValueError(
                f"{self.name}: support_feats must be 4-D [C, K, T, E] (classes, shots, frames, embed_dim), "
                f"got {support_feats.dim()}-D; {shapes}"
            )
        if query_feats.dim() != 3:
            raise ValueError(
                f"{self.name}: query_feats must be 3-D [M, T, E] (queries, frames, embed_dim), "
                f"got {query_feats.dim()}-D; {shapes}"
            )
        if 0 in support_shape or 0 in query_shape:
            raise ValueError(f"{self.name}: every dimension must be at least 1; {shapes}")
        if support_shape[2:] != query_shape[1:]:
            raise ValueError(f"{self.name}: support [C, K, T, E] and query [M, T, E] must agree on T and E; {shapes}")
        if query_shape[1:] != (self.num_frames, self.embed_dim):
            raise ValueError(
                f"{self.name}: this head was built for T = num_frames = {self.num_frames} and "
                f"E = embed_dim = {self.embed_dim}; {shapes}"
            )

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_frames={self.num_frames}"


def _frame_cosines(support_feats: torch.Tensor, query_feats: torch.Tensor) -> torch.Tensor:
    """All frame-to-frame cosines: [C, K, T, E] x [M, T, E] -> [M, C, K, T_query, T_support]."""
    support_unit = F.normalize(support_feats, dim=-1)
    query_unit = F.normalize(query_feats, dim=-1)
    return torch.einsum("mqe,ckse->mckqs", query_unit, support_unit)


class ProtoMeanMetric(VideoMetric):
    """Official Task-Adapter++ ProtoNet score (the default head).

    F̂_c = mean_k support[c, k] ([T, E]), P[q, c] = cos(mean_t F_q[t], mean_t F̂_c[t]).
    Scale: a plain cosine in [-1, 1]; identical temporal means give exactly 1. Blind to frame
    order (the temporal mean discards it).
    """

    name = "proto_mean"

    def _scores(self, support_feats: torch.Tensor, query_feats: torch.Tensor) -> torch.Tensor:
        prototype_mean = support_feats.mean(dim=(1, 2))  # [C, E]: mean over shots and frames
        query_mean = query_feats.mean(dim=1)  # [M, E]
        return F.normalize(query_mean, dim=-1) @ F.normalize(prototype_mean, dim=-1).T  # [M, C]


class ProtoFrameMetric(VideoMetric):
    """The paper's "ProtoNet" reading: frame-wise cosine to the prototype, averaged over time.

    F̂_c = mean_k support[c, k] ([T, E]), P[q, c] = (1/T) Σ_t cos(F_q[t], F̂_c[t]).
    Scale: a mean of cosines in [-1, 1]; a query equal to the prototype frame by frame gives exactly 1.
    """

    name = "proto_frame"

    def _scores(self, support_feats: torch.Tensor, query_feats: torch.Tensor) -> torch.Tensor:
        prototype_unit = F.normalize(support_feats.mean(dim=1), dim=-1)  # [C, T, E]
        query_unit = F.normalize(query_feats, dim=-1)  # [M, T, E]
        return torch.einsum("mte,cte->mc", query_unit, prototype_unit) / query_feats.shape[1]


def _soft_min(values: list[torch.Tensor], temperature: float) -> torch.Tensor:
    """Smooth minimum -λ·log Σ exp(-v/λ) of same-shaped tensors; the exact minimum when λ = 0."""
    if len(values) == 1:
        return values[0]
    stacked = torch.stack(values, dim=-1)
    if temperature == 0:
        return stacked.amin(dim=-1)
    return -temperature * torch.logsumexp(stacked / -temperature, dim=-1)


def _otam_cumulative_distance(distance: torch.Tensor, temperature: float) -> torch.Tensor:
    """OTAM's ordered alignment cost of a distance matrix [..., R, S] -> [...].

    The matrix is padded with one zero column before and after its S columns. Inside the real
    columns a step moves one column right, staying on the row or going one row down, so every
    column is matched exactly once and the rows are visited in order; in the two padding columns
    the path may also move straight down at no cost, so it may start and end on any row.
    Γ(r, s) = D(r, s) + softmin(predecessors); the result is Γ at the last row of the right padding.
    """
    num_cols = distance.shape[-1]
    zero = distance.new_zeros(distance.shape[:-2])
    previous_row: list[torch.Tensor] = []
    for row, distance_row in enumerate(distance.unbind(dim=-2)):
        cells = distance_row.unbind(dim=-1)
        # left padding column: reached only from above at zero cost, so it stays 0
        current_row = [zero]
        for col in range(1, num_cols + 1):
            # from the left, or (below the first row) from the upper left
            predecessors = [current_row[col - 1]] if row == 0 else [previous_row[col - 1], current_row[col - 1]]
            current_row.append(cells[col - 1] + _soft_min(predecessors, temperature))
        # right padding column (zero distance): from the left, the upper left, or straight above
        if row == 0:
            current_row.append(current_row[num_cols])
        else:
            current_row.append(
                _soft_min([previous_row[num_cols], current_row[num_cols], previous_row[num_cols + 1]], temperature)
            )
        previous_row = current_row
    return previous_row[num_cols + 1]


class OTAMMetric(VideoMetric):
    """OTAM (Cao et al., CVPR'20): ordered temporal alignment of query and support frames.

    Per query q and support video s: D[i, j] = 1 - cos(q_i, s_j). Γ_qs is OTAM's cumulative
    alignment cost of D (rows = query frames, one zero column padded on both ends, smooth minimum
    with temperature λ), so every support frame is matched once, in order, to a query frame; Γ_sq is
    the same on Dᵀ. Both directions are averaged, as common OTAM implementations do, and so are the
    K shots of a class:

        P[q, c] = 1 - (1/K) Σ_k (Γ_qs(q, s_ck) + Γ_sq(q, s_ck)) / (2T)

    Scale: with λ = 0 (exact minimum) P is the mean cosine over the matched frame pairs of the best
    alignments, in [-1, 1], and identical sequences give exactly 1. With λ > 0 the smooth minimum
    lies below the exact one by at most λ·log(number of paths), so P may exceed 1 by up to that
    amount divided by T; it stays a smooth, ordered stand-in for the exact score.
    """

    name = "otam"

    def __init__(self, embed_dim: int, num_frames: int, temperature: float = 0.1) -> None:
        super().__init__(embed_dim, num_frames)
        is_number = isinstance(temperature, (int, float)) and not isinstance(temperature, bool)
        if not is_number or not 0 <= temperature < math.inf:
            raise ValueError(f"otam: temperature must be a finite number >= 0 (0 = exact minimum), got {temperature!r}")
        self.temperature = float(temperature)

    def _scores(self, support_feats: torch.Tensor, query_feats: torch.Tensor) -> torch.Tensor:
        distance = 1 - _frame_cosines(support_feats, query_feats)  # [M, C, K, T_query, T_support]
        query_to_support = _otam_cumulative_distance(distance, self.temperature)  # [M, C, K]
        support_to_query = _otam_cumulative_distance(distance.transpose(-1, -2), self.temperature)
        num_frames = query_feats.shape[1]
        aligned_distance = (query_to_support + support_to_query) / (2 * num_frames)
        return 1 - aligned_distance.mean(dim=-1)  # [M, C]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, temperature={self.temperature}"


class BiMHMMetric(VideoMetric):
    """Bi-MHM, the bidirectional mean Hausdorff metric of HyRSM (Wang et al., CVPR'22), as a similarity.

    HyRSM's distance takes, for each frame, the closest frame of the other video and averages, in
    both directions. With frame cosines S[i, j] = cos(q_i, s_j) in place of distances (max in place of min):

        P[q, c] = (1/K) Σ_k ½ ( mean_i max_j S[i, j] + mean_j max_i S[i, j] )   for s = s_ck

    Scale: HyRSM's two-direction sum halved, so P is in [-1, 1] and identical sequences give exactly 1.
    """

    name = "bimhm"

    def _scores(self, support_feats: torch.Tensor, query_feats: torch.Tensor) -> torch.Tensor:
        cosines = _frame_cosines(support_feats, query_feats)  # [M, C, K, T_query, T_support]
        query_to_support = cosines.amax(dim=-1).mean(dim=-1)  # [M, C, K]
        support_to_query = cosines.amax(dim=-2).mean(dim=-1)
        return (0.5 * (query_to_support + support_to_query)).mean(dim=-1)  # [M, C]


def _sinusoidal_encoding(num_positions: int, dim: int) -> torch.Tensor:
    """Transformer sinusoidal encoding [num_positions, dim]: sin on even channels, cos on odd ones."""
    position = torch.arange(num_positions, dtype=torch.float64)[:, None]
    inverse_frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64) * (-math.log(10000.0) / dim))
    angles = position * inverse_frequency  # [P, ceil(dim/2)]
    encoding = torch.zeros(num_positions, dim, dtype=torch.float64)
    encoding[:, 0::2] = torch.sin(angles)
    encoding[:, 1::2] = torch.cos(angles[:, : dim // 2])
    return encoding.float()


class _TupleCrossAttention(nn.Module):
    """TRX for one tuple cardinality ω: query tuples attend over all support tuples of a class."""

    def __init__(self, embed_dim: int, num_frames: int, cardinality: int, trx_dim: int) -> None:
        super().__init__()
        self.cardinality = cardinality
        tuples = list(itertools.combinations(range(num_frames), cardinality))
        self.register_buffer("tuple_frames", torch.tensor(tuples, dtype=torch.long), persistent=False)  # [N, ω]
        self.key_proj = nn.Linear(cardinality * embed_dim, trx_dim)
        self.value_proj = nn.Linear(cardinality * embed_dim, trx_dim)
        self.key_norm = nn.LayerNorm(trx_dim)

    def _tuples(self, feats: torch.Tensor) -> torch.Tensor:
        """[..., T, E] -> [..., N, ω·E]: every ordered ω-tuple of frames, features concatenated."""
        gathered = feats[..., self.tuple_frames, :]  # [..., N, ω, E]
        return gathered.flatten(-2)

    def forward(self, support_feats: torch.Tensor, query_feats: torch.Tensor) -> torch.Tensor:
        """support_feats [C, K, T, E], query_feats [M, T, E] (positions encoded) -> [M, C] similarity."""
        num_classes, num_shots = support_feats.shape[:2]
        support_tuples = self._tuples(support_feats).flatten(1, 2)  # [C, K·N, ω·E]: all tuples of a class
        query_tuples = self._tuples(query_feats)  # [M, N, ω·E]
        support_keys = self.key_norm(self.key_proj(support_tuples))  # [C, K·N, D]
        query_keys = self.key_norm(self.key_proj(query_tuples))  # [M, N, D]
        support_values = F.normalize(self.value_proj(support_tuples), dim=-1)  # [C, K·N, D]
        query_values = F.normalize(self.value_proj(query_tuples), dim=-1)  # [M, N, D]
        logits = torch.einsum("mnd,csd->mcns", query_keys, support_keys) / math.sqrt(query_keys.shape[-1])
        attention = logits.softmax(dim=-1)  # [M, C, N, K·N]
        prototypes = torch.einsum("mcns,csd->mcnd", attention, support_values)  # [M, C, N, D]
        squared_distance = (query_values[:, None] - prototypes).square().sum(dim=-1)  # [M, C, N]
        return 1 - 0.5 * squared_distance.mean(dim=-1)


class TRXMetric(VideoMetric):
    """TRX (Perrett et al., CVPR'21): temporal-relational cross-transformer over frame tuples.

    Frames get a fixed sinusoidal positional encoding (scaled by 0.1, as TRX does); for each
    cardinality ω every ordered ω-tuple of frames is the concatenation of its frames' features. Per ω:
    keys k = LayerNorm(W_k x), unit values v = normalize(W_v x); each query tuple attends, with
    softmax(k_q·k_s / √D), over all tuples of the K support videos of a class, giving a
    class-specific prototype p_c(τ) = Σ_σ α_τσ v_σ; d_ω = mean over query tuples τ of ‖v_q(τ) - p_c(τ)‖².

        P[q, c] = mean_ω ( 1 - d_ω(q, c) / 2 )

    Scale: with unit values ‖v_q - p‖² lies in [0, 4] and 1 - ‖v_q - p‖²/2 = (1 - ‖p‖²)/2 + v_q·p is a
    cosine-like score in [-1, 1], exactly cos(v_q, v_s) when a class has a single support tuple
    (T = ω, K = 1). Unit values are this project's change to TRX, whose unbounded negative distance
    would, multiplied with the positive text score, reward the text mismatch. TRX's positional
    dropout is left out so that the head is deterministic.

    Options: ``cardinalities`` (default (2, 3), TRX's pairs and triples), ``trx_dim`` = D, the
    key/value width (default 1152, TRX's value; smaller configs pass a smaller one). Needs
    num_frames ≥ max(cardinalities). Learnable: W_k, W_v (with biases) and the key LayerNorm per ω.
    """

    name = "trx"

    def __init__(
        self,
        embed_dim: int,
        num_frames: int,
        cardinalities: Sequence[int] = (2, 3),
        trx_dim: int = 1152,
    ) -> None:
        super().__init__(embed_dim, num_frames)
        cardinalities = tuple(cardinalities)
        if not cardinalities or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in cardinalities):
            raise ValueError(f"trx: cardinalities must be a non-empty sequence of ints >= 1, got {cardinalities!r}")
        if len(set(cardinalities)) != len(cardinalities):
            raise ValueError(f"trx: cardinalities must not repeat, got {cardinalities!r}")
        if max(cardinalities) > num_frames:
            raise ValueError(
                f"trx: tuples of {max(cardinalities)} frames need num_frames >= {max(cardinalities)}, "
                f"got num_frames={num_frames} (cardinalities={cardinalities})"
            )
        if isinstance(trx_dim, bool) or not isinstance(trx_dim, int) or trx_dim < 1:
            raise ValueError(f"trx: trx_dim must be a positive int, got {trx_dim!r}")
        self.cardinalities = cardinalities
        self.trx_dim = trx_dim
        self.register_buffer(
            "positional_encoding", _TRX_PE_SCALE * _sinusoidal_encoding(num_frames, embed_dim), persistent=False
        )  # [T, E]
        self.heads = nn.ModuleList(
            _TupleCrossAttention(embed_dim, num_frames, cardinality, trx_dim) for cardinality in cardinalities
        )

    def _scores(self, support_feats: torch.Tensor, query_feats: torch.Tensor) -> torch.Tensor:
        encoding = self.positional_encoding.to(query_feats.dtype)
        support_feats = support_feats + encoding
        query_feats = query_feats + encoding
        scores = [head(support_feats, query_feats) for head in self.heads]  # each [M, C]
        return torch.stack(scores).mean(dim=0)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, cardinalities={self.cardinalities}, trx_dim={self.trx_dim}"


_HEADS: dict[str, type[VideoMetric]] = {
    "proto_mean": ProtoMeanMetric,
    "proto_frame": ProtoFrameMetric,
    "otam": OTAMMetric,
    "trx": TRXMetric,
    "bimhm": BiMHMMetric,
}
_OPTIONS: dict[str, tuple[str, ...]] = {
    "proto_mean": (),
    "proto_frame": (),
    "otam": ("temperature",),
    "trx": ("cardinalities", "trx_dim"),
    "bimhm": (),
}

METRICS: tuple[str, ...] = tuple(_HEADS)
DEFAULT_METRIC = "proto_mean"


def build_metric(name: str, embed_dim: int, num_frames: int, **options) -> VideoMetric:
    """Build the video-metric head called ``name`` (one of METRICS).

    embed_dim: E, the width of the frame features; num_frames: T, frames per video.
    options: head-specific settings: ``otam``: temperature (λ, default 0.1, 0 = exact minimum);
        ``trx``: cardinalities (default (2, 3)), trx_dim (default 1152). The other heads take none.
    """
    if name not in _HEADS:
        raise ValueError(f"unknown metric {name!r}; known metrics: {', '.join(METRICS)}")
    unknown = sorted(set(options) - set(_OPTIONS[name]))
    if unknown:
        accepted = ", ".join(_OPTIONS[name]) or "none"
        raise ValueError(f"metric {name!r} got unknown option(s) {', '.join(unknown)}; it accepts: {accepted}")
    return _HEADS[name](embed_dim, num_frames, **options)
