"""The checks a training run makes before it writes anything into its run directory, so that a setting that
cannot work here fails at once, in one line, and leaves the directory as it was (a rerun into it works).

`train` builds everything a run needs before its first write, and each piece checks itself as it is built:
the device (`resolve_device`), the split files, the corpus and its coverage of every class (`prepare_data`),
the split sizes against way/shot/query (each split's `EpisodeLoader`), the model and the schedule. What
only shows at the first episode is checked here: the decoder, and the videos the split files point at.
"""

from __future__ import annotations

import os

from ..data.setup import SPLITS
from ..runconfig import DataConfig
from .steps import RunData


def preflight(data_config: DataConfig, data: RunData) -> None:
    """Raise, in one line, what would otherwise fail at the first episode: the decoder, the videos' paths."""
    check_decoder(data_config.decoder, data.rows["train"][0].path)
    check_videos_exist(data_config, data)


def check_decoder(decoder: str, path: str) -> None:
    """A decoder named in `data.decoder` that cannot run on this machine (DALI without its package or a GPU)."""
    if decoder != "auto":  # auto picks, clip by clip, a decoder that runs here
        from ..data.decode import choose_decoder

        choose_decoder(path, decoder)  # raises DecoderUnavailableError, saying why


def check_videos_exist(data_config: DataConfig, data: RunData) -> None:
    """A split none of whose videos exists: its file's paths or `data.root` point elsewhere. (A few missing
    videos are skipped and counted during the run, as unreadable ones are.)"""
    for split in SPLITS:
        rows = data.rows[split]
        if not any(os.path.exists(row.path) for row in rows):
            raise FileNotFoundError(
                f"the {split} split {data.source[split]}: none of its {len(rows)} videos exists "
                f"(the first: {rows[0].path}); check data.root={data_config.root}"
            )
