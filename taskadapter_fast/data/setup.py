"""The data a training run or an evaluation reads, from its `data` config section: splits, corpus, loaders.

Training and evaluation set up their data here alike: `read_splits` gives the manifest rows of the
splits asked for (the built-in synthetic dataset is generated once into a cache), `load_corpus_for`
the sub-action corpus the model needs, and `make_loader` an `EpisodeLoader` over a split's rows.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from ..runconfig import DataConfig
    from .episodes import EpisodeLoader

SPLITS = ("train", "val", "test")


@dataclass
class SplitData:
    """The manifest rows of each split read, the corpus path, and where each split came from."""

    rows: dict[str, list]  # split -> ManifestRows
    corpus_path: str | None  # the configured corpus, else the synthetic dataset's own
    source: dict[str, str]  # split -> the file or folder it was read from
    synthetic: bool = False

    def describe(self, split: str) -> str:
        """A short name of a split for reports: its file, or ``synthetic:<split>``."""
        return f"synthetic:{split}" if self.synthetic else self.source[split]


def read_splits(data: DataConfig, splits: Sequence[str] = SPLITS) -> SplitData:
    """Read (and for the synthetic dataset, generate once) the given splits. Raises ValueError for an empty one."""
    from .splits import read_split, rows_of_split

    if data.dataset == "synthetic":
        from .synthetic import make_synthetic_dataset

        dataset = make_synthetic_dataset(root=data.root, **dataclasses.asdict(data.synthetic))
        source = {split: str(dataset.split_files[split]) for split in splits}
        rows = {split: read_split(source[split], format="official") for split in splits}
        result = SplitData(rows, data.corpus or str(dataset.corpus), source, synthetic=True)
    else:
        source = {split: str(getattr(data, f"{split}_split")) for split in splits}
        rows = {
            split: rows_of_split(
                read_split(
                    source[split],
                    format=data.format,
                    root=data.root,
                    class_names=data.val_class_names if split == "val" and data.val_class_names else data.class_names,
                    path_map=data.path_map,
                ),
                split,
                source[split],
            )
            for split in splits
        }
        result = SplitData(rows, data.corpus, source)
    for split in splits:
        if not rows[split]:
            raise ValueError(f"the {split} split {source[split]} holds no videos")
    return result


def load_corpus_for(
    needs_corpus: bool, corpus_path: str | os.PathLike | None, class_names: Sequence[Sequence[str]] = ()
) -> dict[str, list[str]] | None:
    """The sub-action corpus, checked to cover every list of `class_names` when the model needs one.

    needs_corpus: the model's prompts use sub-actions (`ModelConfig.needs_corpus`); without them a
    given corpus is still read (None when there is none).
    """
    from .corpus import load_corpus, validate_corpus

    if not needs_corpus:
        return load_corpus(corpus_path) if corpus_path else None
    if not corpus_path:
        raise ValueError(
            "this model's prompts need sub-actions: give the dataset's corpus (--corpus FILE or data.corpus=FILE)"
        )
    if not Path(corpus_path).is_file():
        raise FileNotFoundError(f"corpus file not found: {corpus_path}")
    corpus = load_corpus(corpus_path)
    for names in class_names:
        validate_corpus(corpus, names)
    return corpus


def make_loader(
    data: DataConfig,
    rows: list,
    *,
    num_frames: int,
    image_size: int,
    train: bool,
    seed: int,
    device: torch.device | None = None,
    shape: tuple[int, int, int] | None = None,
    split: str | None = None,
) -> EpisodeLoader:
    """An `EpisodeLoader` over `rows` with the decoder and prefetch of `data`.

    shape: (C, K, Q) when not `data`'s n_way, n_shot, n_query. split: named in its errors.
    """
    from .episodes import EpisodeLoader

    n_way, n_shot, n_query = shape or (data.n_way, data.n_shot, data.n_query)
    try:
        return EpisodeLoader(
            rows,
            n_way,
            n_shot,
            n_query,
            num_frames=num_frames,
            image_size=image_size,
            train=train,
            seed=seed,
            decoder=data.decoder,
            device=device,
            prefetch=data.prefetch,
        )
    except ValueError as error:
        if split is None:
            raise
        raise ValueError(f"{split} split: {error}") from None
