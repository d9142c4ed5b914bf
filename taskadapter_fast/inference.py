"""Classify videos against a few examples of your own classes (the library side of `taf predict`).

`predict(model, support_dir, queries, corpus)` reads a folder per class of example videos (video
files or JPEG frame folders), samples and crops every video as evaluation does, and scores each
query against the classes: on its own by default (a query set of one, so a prediction does not
depend on the other videos passed), or all queries as one set (``transductive=True``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


def support_rows(support_dir: str | os.PathLike) -> tuple[list[str], list[list[Any]]]:
    """-> (class names in folder-name order, per class its example rows, K of each: the smallest count).

    Files that are neither videos nor frame folders are reported and left out; a class folder with no
    example at all is an error (it would silently drop the class).
    """
    from .data.decode import VIDEO_EXTENSIONS
    from .data.splits import read_split

    support_dir = Path(support_dir)
    if not support_dir.is_dir():
        raise FileNotFoundError(f"support folder not found: {support_dir}")
    class_dirs = sorted(entry for entry in support_dir.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    rows = read_split(support_dir, format="folder") if class_dirs else []
    by_class: dict[str, list[Any]] = {}
    for row in rows:
        by_class.setdefault(row.class_name, []).append(row)
    used = {Path(row.path).name for row in rows}
    for class_dir in class_dirs:
        ignored = sorted(e.name for e in class_dir.iterdir() if e.name not in used and not e.name.startswith("."))
        if class_dir.name not in by_class:
            found = f" (found {', '.join(ignored[:3])}{', ...' if len(ignored) > 3 else ''})" if ignored else ""
            raise ValueError(
                f"{class_dir}: no example videos{found}; a class folder holds video files "
                f"({'/'.join(VIDEO_EXTENSIONS)}) or JPEG frame folders (img_00001.jpg, ...)"
            )
        if ignored:
            log.warning("%s: left out %s (neither a video file nor a frame folder)", class_dir, ", ".join(ignored))
    class_names = sorted(by_class)
    if len(class_names) < 2:
        raise ValueError(f"{support_dir}: needs at least two class folders with example videos, found {class_names}")
    shots = min(len(by_class[name]) for name in class_names)
    trimmed = [name for name in class_names if len(by_class[name]) > shots]
    if trimmed:
        log.warning(
            "%s: using %d example(s) per class (the smallest class's count); left out extra examples of %s",
            support_dir,
            shots,
            ", ".join(trimmed),
        )
    return class_names, [sorted(by_class[name], key=lambda row: row.path)[:shots] for name in class_names]


def check_queries(queries: Sequence[str | os.PathLike] | str | os.PathLike) -> list[str]:
    """The query paths as a list of strings (one path may be given alone); raises if one does not exist."""
    if isinstance(queries, str | os.PathLike):
        queries = [queries]
    queries = [str(query) for query in queries]
    if not queries:
        raise ValueError("no query video given")
    for query in queries:
        if not Path(query).exists():
            raise FileNotFoundError(f"video not found: {query}")
    return queries


def load_videos(paths: Sequence[str], num_frames: int, image_size: int, decoder: str = "auto") -> torch.Tensor:
    """Centre-sampled, centre-cropped clips of the given videos -> [V, T, 3, S, S]."""
    from .data.decode import load_clips, video_kind
    from .data.episodes import probe_frame_count
    from .data.sampler import frame_indices

    for path in paths:
        if not Path(path).exists():
            raise FileNotFoundError(f"video not found: {path}")
    counts = [probe_frame_count(path, video_kind(path)) for path in paths]
    indices = frame_indices(counts, num_frames, train=False)
    return load_clips(list(paths), indices, image_size=image_size, train=False, decoder=decoder)


def predict(
    model: torch.nn.Module,
    support_dir: str | os.PathLike,
    queries: Sequence[str | os.PathLike] | str | os.PathLike,
    corpus: Mapping[str, Sequence[str]] | None,
    *,
    transductive: bool = False,
    decoder: str = "auto",
) -> list[dict[str, Any]]:
    """Classify `queries` (video files or frame folders; one path or a list) among the classes of `support_dir`.

    Returns one dict per query: ``query`` (path), ``predicted`` (class name), ``scores`` and
    ``probabilities`` ({class name: value}, in class order). Runs in eval mode without gradients.
    """
    queries = check_queries(queries)
    return classify(model, support_rows(support_dir), queries, corpus, transductive, decoder)


def classify(model, support, queries: list[str], corpus, transductive: bool, decoder: str) -> list[dict[str, Any]]:
    """`predict` on support already read (`support_rows`) and checked query paths (`check_queries`)."""
    class_names, per_class = support
    num_frames = int(model.config.num_frames)
    image_size = int(model.visual.image_size)
    support_paths = [row.path for rows in per_class for row in rows]
    support_labels = torch.arange(len(class_names)).repeat_interleave(len(per_class[0]))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            device = model.device
            dtype = next(model.parameters()).dtype
            support = load_videos(support_paths, num_frames, image_size, decoder).to(device=device, dtype=dtype)
            query = load_videos(queries, num_frames, image_size, decoder).to(device=device, dtype=dtype)
            support_feats = model.encode_videos(support)  # [C*K, T, E]
            text_feats = model.encode_classes(class_names, corpus) if model.config.score != "video" else None
            labels = support_labels.to(device)
            if transductive:
                scores = model.scores_from_features(
                    support_feats, labels, model.encode_videos(query), text_feats, len(class_names)
                )
            else:
                scores = torch.cat(
                    [
                        model.scores_from_features(
                            support_feats, labels, model.encode_videos(query[q : q + 1]), text_feats, len(class_names)
                        )
                        for q in range(query.shape[0])
                    ]
                )  # [M, C]
            probabilities = torch.softmax(model.config.logit_scale * scores.float(), dim=1)
    finally:
        model.train(was_training)
    results = []
    for q, path in enumerate(queries):
        row = scores[q].float().cpu().tolist()
        results.append(
            {
                "query": path,
                "predicted": class_names[int(scores[q].argmax())],
                "scores": dict(zip(class_names, row, strict=True)),
                "probabilities": dict(zip(class_names, probabilities[q].cpu().tolist(), strict=True)),
            }
        )
    return results
