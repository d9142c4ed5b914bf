"""Classify videos against a few examples of your own classes (the library side of `taf predict`).

`predict(model, support_dir, queries, corpus)` reads a folder per class of example videos (video
files or JPEG frame folders), samples and crops every video as evaluation does, and scores each
query against the classes: on its own by default (a query set of one, so a prediction does not
depend on the other videos passed), or all queries as one set (``transductive=True``).
`classify` streams: queries are decoded a batch at a time, the next batch in a background thread
while this one is encoded, and each result is yielded when it is ready; a query that cannot be
read gets a result with its ``error`` instead of stopping the others.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
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
    """The query paths as a list of strings (one path may be given alone), a folder of videos expanded to its videos.

    Raises if a path does not exist: most likely a typo, said before anything loads. A query that exists
    but cannot be read is reported on its own row when it is classified.
    """
    if isinstance(queries, str | os.PathLike):
        queries = [queries]
    queries = [str(query) for query in queries]
    if not queries:
        raise ValueError("no query video given")
    expanded = []
    for query in queries:
        if not Path(query).exists():
            raise FileNotFoundError(f"video not found: {query}")
        expanded.extend(folder_videos(query) if Path(query).is_dir() else [query])
    return expanded


def _holds_jpegs(folder: str | os.PathLike) -> bool:
    with os.scandir(folder) as entries:
        return any(entry.name.lower().endswith((".jpg", ".jpeg")) for entry in entries)


def folder_videos(folder: str | os.PathLike) -> list[str]:
    """The videos a query folder stands for: itself when it is a JPEG frame folder (it holds .jpg files), else
    the video files and frame folders in it, by name (not recursive; other entries are left out with a warning)."""
    from .data.decode import VIDEO_EXTENSIONS

    if _holds_jpegs(folder):
        return [str(folder)]
    videos, left_out = [], []
    for name in sorted(name for name in os.listdir(folder) if not name.startswith(".")):
        path = os.path.join(folder, name)
        is_video = _holds_jpegs(path) if os.path.isdir(path) else Path(name).suffix.lower() in VIDEO_EXTENSIONS
        (videos if is_video else left_out).append(path)
    if left_out:
        more = f" and {len(left_out) - 3} more" if len(left_out) > 3 else ""
        shown = ", ".join(Path(path).name for path in left_out[:3]) + more
        log.warning("%s: left out %s (neither a video file nor a frame folder)", folder, shown)
    if not videos:
        raise ValueError(
            f"{folder}: no videos in the folder; a query folder holds video files ({'/'.join(VIDEO_EXTENSIONS)}) "
            "or JPEG frame folders (img_00001.jpg, ...), or is a frame folder itself"
        )
    return videos


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


def load_readable(
    paths: Sequence[str], num_frames: int, image_size: int, decoder: str = "auto"
) -> tuple[torch.Tensor | None, dict[int, str]]:
    """`load_videos` that skips what cannot be read -> (clips of the readable videos, in order, or None when
    there is none; {position in `paths`: why} for the others: missing, corrupt or unsupported)."""
    from .data.decode import VideoDecodeError

    unreadable = (VideoDecodeError, OSError)  # OSError: a file deleted or made unreadable since it was listed
    if len(paths) > 1:
        try:
            return load_videos(paths, num_frames, image_size, decoder), {}
        except unreadable:
            pass  # one by one below, to tell which of them failed
    clips, errors = [], {}
    for position, path in enumerate(paths):
        try:
            clips.append(load_videos([path], num_frames, image_size, decoder))
        except unreadable as error:
            errors[position] = error.reason if isinstance(error, VideoDecodeError) else str(error)
    return (torch.cat(clips) if clips else None), errors


def predict(
    model: torch.nn.Module,
    support_dir: str | os.PathLike,
    queries: Sequence[str | os.PathLike] | str | os.PathLike,
    corpus: Mapping[str, Sequence[str]] | None,
    *,
    transductive: bool = False,
    decoder: str = "auto",
    batch_size: int = 8,
    explain: Mapping[str, bool] | None = None,
) -> list[dict[str, Any]]:
    """Classify `queries` (video files, frame folders or folders of them; one path or a list) among the classes
    of `support_dir`.

    Returns one dict per query video: ``query`` (path), ``predicted`` (class name), ``scores`` and
    ``probabilities`` ({class name: value}, in class order); for a video that cannot be read (corrupt,
    unsupported, gone), ``query`` and ``error`` (why) instead. Runs in eval mode without gradients.
    `classify` gives the same results one at a time, as they are ready.

    explain: {} (or {"rollout": True, "static_prompt": True}) to explain the predictions: each result then also
    holds ``explanation``, the `taskadapter_fast.Explanation` its scores come from (one per query, or one shared
    by all queries with ``transductive``); `taskadapter_fast.explanation.report` draws them.
    """
    support, queries = support_rows(support_dir), check_queries(queries)
    return list(classify(model, support, queries, corpus, transductive, decoder, batch_size, explain))


def classify(
    model,
    support,
    queries: list[str],
    corpus,
    transductive: bool = False,
    decoder: str = "auto",
    batch_size: int = 8,
    explain: Mapping[str, bool] | None = None,
) -> Iterator[dict[str, Any]]:
    """`predict`'s results, in query order, each as soon as it is ready, on support already read (`support_rows`)
    and checked query paths (`check_queries`).

    The support set is decoded and encoded once, here (a problem with it or the corpus raises at the call).
    Queries are decoded `batch_size` at a time, the next batch in a background thread while this one is encoded,
    so memory does not grow with the number of queries; each query is still encoded and scored alone, so its
    scores do not depend on the others. `transductive=True` scores all queries as one set: they are all decoded
    and held before the first is scored. The model is in eval mode while the iteration runs.
    """
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    with _eval_mode(model), torch.no_grad():
        score = _support_scorer(model, support, corpus, decoder)
    if explain is not None:
        score = _explaining(score, dict(explain), inductive=not transductive)
    num_frames, image_size = int(model.config.num_frames), int(model.visual.image_size)
    batches = [queries[start : start + int(batch_size)] for start in range(0, len(queries), int(batch_size))]
    from .data.episodes import map_ahead

    # the next batch decodes in a background thread while this one is encoded: at most two held at a time
    ahead = map_ahead(lambda paths: load_readable(paths, num_frames, image_size, decoder), batches, 1, "taf-predict")
    if transductive:  # the whole set, by definition
        return _results(model, score, support[0], [queries], _joined(ahead, batches), alone=False)
    return _results(model, score, support[0], batches, ahead, alone=True)


@contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _results(model, score, class_names: list[str], batches: list[list[str]], decoded: Iterable, alone: bool):
    """One result per query of `batches`, in order, from their decoded (clips, {position: error})."""
    try:
        with _eval_mode(model):
            for paths, (clips, errors) in zip(batches, decoded, strict=True):
                readable = [path for position, path in enumerate(paths) if position not in errors]
                rows = _score_rows(score, clips, alone, readable)
                for position, path in enumerate(paths):
                    if position in errors:
                        yield {"query": path, "error": errors[position]}
                        continue
                    row, explanation = next(rows)
                    result = _result(path, class_names, row, model.config.logit_scale)
                    yield result if explanation is None else {**result, "explanation": explanation}
    finally:
        if isinstance(decoded, Generator):
            decoded.close()  # stops the background decoding when the caller stops early


class _Scorer:
    """scores(query clips [M, T, 3, S, S]) -> [M, C] against a support set and class texts encoded once."""

    def __init__(self, model, class_names, corpus, support_feats, labels, text_feats):
        self.model, self.class_names, self.corpus = model, class_names, corpus
        self.support_feats, self.labels, self.text_feats = support_feats, labels, text_feats
        self.device, self.dtype = model.device, next(model.parameters()).dtype

    def __call__(self, query: torch.Tensor, names: Sequence[str] | None = None):
        query_feats = self.model.encode_videos(query.to(device=self.device, dtype=self.dtype))
        return self.model.scores_from_features(
            self.support_feats, self.labels, query_feats, self.text_feats, len(self.class_names)
        )


def _explaining(scorer: _Scorer, options: dict[str, bool], inductive: bool):
    """A scorer that explains: (query clips, their names) -> `Explanation` (its .scores are the scores)."""
    from .explanation import explain_queries

    def explained(query: torch.Tensor, names: Sequence[str]):
        return explain_queries(
            scorer.model, scorer.support_feats, scorer.labels, scorer.text_feats,
            query.to(device=scorer.device, dtype=scorer.dtype), scorer.class_names, scorer.corpus,
            query_names=[str(name) for name in names], inductive=inductive, **options,
        )  # fmt: skip

    return explained


def _support_scorer(model, support, corpus, decoder: str) -> _Scorer:
    """Decodes and encodes the support set (and the classes' text) once -> scores(query clips) -> [M, C]."""
    class_names, per_class = support
    device, dtype = model.device, next(model.parameters()).dtype
    paths = [row.path for rows in per_class for row in rows]
    clips = load_videos(paths, int(model.config.num_frames), int(model.visual.image_size), decoder)
    support_feats = model.encode_videos(clips.to(device=device, dtype=dtype))  # [C*K, T, E]
    text_feats = model.encode_classes(class_names, corpus) if model.config.score != "video" else None
    labels = torch.arange(len(class_names)).repeat_interleave(len(per_class[0])).to(device)
    return _Scorer(model, class_names, corpus, support_feats, labels, text_feats)


def _score_rows(score: Callable, clips: torch.Tensor | None, alone: bool, names: Sequence[str]) -> Iterator:
    """Each clip's (class scores [C], its Explanation or None), in order: each clip alone (a query set of one) or
    all of them as one set. `score` gives scores [M, C], or an Explanation (whose .scores they are)."""
    if clips is None:
        return
    sets = [(q, q + 1) for q in range(clips.shape[0])] if alone else [(0, clips.shape[0])]
    for start, stop in sets:
        with torch.no_grad():  # not around the yield: the caller's code would run without gradients
            out = score(clips[start:stop], names[start:stop])
        scores, explanation = (out, None) if isinstance(out, torch.Tensor) else (out.scores, out)
        for row in scores:
            yield row, explanation


def _joined(decoded: Iterable[tuple[torch.Tensor | None, dict[int, str]]], batches: list[list[str]]) -> Iterator:
    """The batches' (clips, errors) as those of one batch of all the queries, decoded when first asked for."""
    clips, errors, offset = [], {}, 0
    for (batch_clips, batch_errors), paths in zip(decoded, batches, strict=True):
        clips += [batch_clips] if batch_clips is not None else []
        errors.update({offset + position: why for position, why in batch_errors.items()})
        offset += len(paths)
    yield (torch.cat(clips) if clips else None), errors


def _result(path: str, class_names: list[str], scores: torch.Tensor, logit_scale: float) -> dict[str, Any]:
    """One query's result: the predicted class, and every class's score and probability (softmax(scale * score))."""
    scores = scores.float().cpu()  # one copy off the device; the rest is computed from it
    probabilities = torch.softmax(logit_scale * scores[None], dim=1)[0]
    return {
        "query": path,
        "predicted": class_names[int(scores.argmax())],
        "scores": dict(zip(class_names, scores.tolist(), strict=True)),
        "probabilities": dict(zip(class_names, probabilities.tolist(), strict=True)),
    }
