"""Fetching the few-shot split lists published with the benchmarks: the authors', TRX's and CLIP-FSAR's.

`fetch_splits` downloads the train / val / test lists of one (source, dataset) pair from the public
repository that published them (raw file URLs, or a copy of the same layout under `base_url`), writes them
under their published names with a manifest of where each came from (`sources.json`), and `train_command`
gives the `train` command that uses them: `data.split_dir=FOLDER`, which `read_split_dir` turns into the
three lists, the shipped class order of index-only lists and the corpus file in the folder.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import shlex
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from .._atomic import atomic_write_bytes, atomic_write_text
from .corpus_fetch import PUBLISHED_FILES as PUBLISHED_CORPORA
from .http_retry import download_text
from .splits import INDEXED_LINE

SOURCES = ("official", "trx", "clipfsar")
DATASETS = ("hmdb51", "ucf101", "kinetics", "ssv2_small", "ssv2_full")  # the preset names
SPLITS = ("train", "val", "test")

# Where each source's repository serves its files raw (its default branch).
DEFAULT_BASE_URLS = {
    "official": "https://raw.githubusercontent.com/Jaulin-Bage/Task-Adapter-pp/main/",
    "trx": "https://raw.githubusercontent.com/tobyperrett/trx/main/",
    "clipfsar": "https://raw.githubusercontent.com/alibaba-mmai-research/CLIP-FSAR/master/",
}


def _lists(folder: str, pattern: str) -> tuple[str, str, str]:
    return tuple(folder + pattern.format(split) for split in SPLITS)  # type: ignore[return-value]


_CLIPFSAR = "configs/projects/CLIPFSAR/"
# (source, dataset) -> the train, val and test list paths inside the source's repository, as published.
PUBLISHED_SPLITS: dict[tuple[str, str], tuple[str, str, str]] = {
    ("official", "hmdb51"): _lists("", "{}.txt"),  # the authors published their HMDB51 lists only
    ("trx", "hmdb51"): _lists("splits/hmdb_ARN/", "{}list03.txt"),
    ("trx", "ucf101"): _lists("splits/ucf_ARN/", "{}list03.txt"),
    ("trx", "kinetics"): _lists("splits/kinetics_CMN/", "{}list03.txt"),
    ("trx", "ssv2_small"): _lists("splits/ssv2_CMN/", "{}list03.txt"),
    ("trx", "ssv2_full"): _lists("splits/ssv2_OTAM/", "{}list07.txt"),
    ("clipfsar", "hmdb51"): _lists(_CLIPFSAR + "hmdb51/", "{}_few_shot.txt"),
    ("clipfsar", "ucf101"): _lists(_CLIPFSAR + "ucf101/", "{}_few_shot.txt"),
    ("clipfsar", "kinetics"): _lists(_CLIPFSAR + "kinetics100/", "{}_few_shot.txt"),
    ("clipfsar", "ssv2_small"): _lists(_CLIPFSAR + "ssv2_small/", "{}_few_shot.txt"),
    ("clipfsar", "ssv2_full"): _lists(_CLIPFSAR + "ssv2_full/", "{}_few_shot.txt"),
}
MANIFEST_NAME = "sources.json"
# Names for the val classes of an index-only list no source names (SSv2-Full): a user's file, read from the folder.
VAL_NAMES_FILE = "val_class_names.txt"
VIDEO_ROOT_PLACEHOLDER = "VIDEO_ROOT"


class UnpublishedSplits(ValueError):
    """No split lists were published for this (source, dataset) pair."""


@dataclass(frozen=True)
class FetchedSplits:
    """What `fetch_splits` wrote: the list per split ("train", "val", "test") and the manifest."""

    source: str
    dataset: str
    files: dict[str, Path]
    manifest: Path

    @property
    def folder(self) -> Path:
        return self.manifest.parent

    @property
    def corpus(self) -> Path:
        """Where `corpus_command` writes the authors' corpus of the dataset: beside the lists."""
        return self.folder / PUBLISHED_CORPORA[self.dataset]

    @property
    def class_names(self) -> str | None:
        """The shipped class order (`<source>:<dataset>`) of lists that number their classes, else None.

        Official lines carry global label ids and CLIP-FSAR lines per-split class indices; TRX lines name
        their classes (`<class>/<id>`), except its SSv2-Full (OTAM) lists, CLIP-FSAR's files.
        """
        if self.source == "trx" and self.dataset != "ssv2_full":
            return None
        return f"{self.source}:{self.dataset}"

    @property
    def val_unnamed(self) -> bool:
        """Whether no public source names the val classes of these lists: SSv2-Full's lists (TRX's are
        CLIP-FSAR's) hold only class indices, and CLIP-FSAR's configs name its train and test classes only."""
        return self.dataset == "ssv2_full"

    @property
    def val_names_file(self) -> Path:
        """Where the user's names for unnamed val classes are looked for: `VAL_NAMES_FILE` beside the lists."""
        return self.folder / VAL_NAMES_FILE


def published_pairs() -> str:
    """The published pairs as `source:dataset`, for messages."""
    return ", ".join(f"{source}:{dataset}" for source, dataset in PUBLISHED_SPLITS)


def split_paths(source: str, dataset: str) -> tuple[str, str, str]:
    """The train, val and test list paths the `source` repository publishes for `dataset`."""
    try:
        return PUBLISHED_SPLITS[(source, dataset)]
    except KeyError:
        raise UnpublishedSplits(
            f"no split lists published for --source {source} --dataset {dataset}; published: {published_pairs()}"
        ) from None


def download(url: str) -> bytes:
    """The split list at `url`, retrying what may pass on a second try; FetchError naming the URL otherwise."""
    return download_text(url, "a split list", "pass --base-url with a reachable copy")


def fetch_splits(source: str, dataset: str, out: str | Path, base_url: str | None = None) -> FetchedSplits:
    """Downloads the published train / val / test lists of (source, dataset) into the folder `out`.

    base_url: the repository root the published paths start from (default: the source's raw GitHub URL).
    Each list keeps its published file name; `out/sources.json` records its URL, sha256, size and fetch
    time. All three are downloaded before anything is written, so a failed download writes nothing; each
    file is written atomically. Raises UnpublishedSplits (a ValueError) or FetchError naming the URL.
    """
    paths = split_paths(source, dataset)
    base = (base_url or DEFAULT_BASE_URLS[source]).rstrip("/") + "/"
    urls = [urllib.parse.urljoin(base, path) for path in paths]
    downloaded = [(url, download(url), datetime.datetime.now(datetime.timezone.utc)) for url in urls]
    out = Path(out)
    files: dict[str, Path] = {}
    entries: dict[str, dict] = {}
    for split, path, (url, data, when) in zip(SPLITS, paths, downloaded, strict=True):
        files[split] = atomic_write_bytes(out / Path(path).name, data, fsync=True)
        entries[split] = {
            "file": files[split].name,
            "url": url,
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data),
            "fetched": when.isoformat(timespec="seconds"),
        }
    manifest = {"source": source, "dataset": dataset, "base_url": base, "files": entries}
    manifest_path = atomic_write_text(out / MANIFEST_NAME, json.dumps(manifest, indent=2) + "\n", fsync=True)
    return FetchedSplits(source, dataset, files, manifest_path)


def read_split_dir(folder: str | Path) -> FetchedSplits:
    """The lists a `fetch_splits` folder holds, from its manifest. FileNotFoundError for a folder without one
    (a user's own lists: give them as split files) and ValueError for a manifest that is not fetch-splits'."""
    folder = Path(folder)
    manifest = folder / MANIFEST_NAME
    if not manifest.is_file():
        raise FileNotFoundError(
            f"data.split_dir {folder}: no {manifest} (the manifest `python -m taskadapter_fast.data fetch-splits "
            f"--dataset D --source S --out {folder}` writes beside the lists it fetches); fetch the lists with it, "
            "or give your own lists as data.train_split=FILE data.val_split=FILE data.test_split=FILE"
        )
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
        source, dataset = data["source"], data["dataset"]
        files = {split: folder / data["files"][split]["file"] for split in SPLITS}
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"{manifest}: not a manifest fetch-splits wrote ({type(error).__name__}: {error}); fetch the lists again "
            f"with `python -m taskadapter_fast.data fetch-splits --dataset D --source S --out {folder}`"
        ) from None
    if (source, dataset) not in PUBLISHED_SPLITS:
        raise ValueError(f"{manifest}: source {source!r} and dataset {dataset!r} are no published pair")
    return FetchedSplits(source, dataset, files, manifest)


def _command(words: list[str]) -> str:
    return " ".join(shlex.quote(word) for word in words)


def train_command(fetched: FetchedSplits, video_root: str = VIDEO_ROOT_PLACEHOLDER) -> str:
    """The `train` command that runs the preset of the fetched dataset on the fetched lists: the video root
    and the folder are its only paths (`read_split_dir` finds the lists, class order and corpus there)."""
    words = ["python", "-m", "taskadapter_fast.train", "--preset", fetched.dataset]
    return _command([*words, f"data.root={video_root}", f"data.split_dir={fetched.folder}"])


def corpus_command(fetched: FetchedSplits) -> str:
    """The `corpus fetch` command that writes the authors' corpus beside the lists, where `train_command` finds it."""
    return _command(
        ["python", "-m", "taskadapter_fast.corpus", "fetch", "--dataset", fetched.dataset, "--out", str(fetched.corpus)]
    )


def name_classes_command(fetched: FetchedSplits) -> str:
    """The `name-classes` command that names the val classes no source names (`val_unnamed`) from the SSv2
    annotations (`SSV2_LABELS`: the labels folder of the SSv2 download), where `read_split_dir` finds them."""
    words = ["python", "-m", "taskadapter_fast.data", "name-classes", "--split", str(fetched.files["val"])]
    words += ["--annotations", "SSV2_LABELS/train.json", "SSV2_LABELS/validation.json"]
    return _command([*words, "--out", str(fetched.val_names_file)])


def corpus_gaps_command(fetched: FetchedSplits) -> str | None:
    """The `corpus generate --into` command that adds the classes the authors' corpus lacks, for the datasets
    where it lacks some (SSv2-Full: most of its classes; Kinetics-100: one val class); None for the others."""
    if fetched.dataset not in ("ssv2_full", "kinetics"):
        return None
    labels = [fetched.files[split] for split in SPLITS]
    if fetched.val_unnamed:
        labels[1] = fetched.val_names_file
    words = ["python", "-m", "taskadapter_fast.corpus", "generate", "--labels", *map(str, labels)]
    if fetched.class_names is not None:
        words += ["--class-names", fetched.class_names]
    words += ["--into", str(fetched.corpus), "--base-url", "URL", "--model", "NAME", "--api-key-env", "VAR"]
    return _command(words)


def names_from_ssv2_annotations(split_file: str | Path, annotations: list[str | Path]) -> list[str]:
    """The class names of an index-only SSv2 list (`val3/<video id>` lines), in class-index order, from the SSv2
    download's own annotation files (`labels/train.json`, `labels/validation.json`: a list of {"id", "template",
    ...} per video): each class index is named by the template of its videos, brackets kept as CLIP-FSAR writes
    them (`Pouring [something] into [something]`). For the SSv2-Full val classes, which no public source names.
    """
    template_of: dict[str, str] = {}
    for path in annotations:
        try:
            entries = json.loads(Path(path).read_text(encoding="utf-8"))
            template_of.update({str(entry["id"]): entry["template"] for entry in entries})
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(
                f'{path}: not an SSv2 annotation file (a JSON list of {{"id", "template", ...}} per video, as '
                f"labels/train.json of the SSv2 download): {type(error).__name__}: {error}"
            ) from None
    found: dict[int, set[str]] = {}
    unknown: dict[int, str] = {}
    for number, raw in enumerate(Path(split_file).read_text(encoding="utf-8-sig").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = INDEXED_LINE.fullmatch(line)
        if match is None:
            raise ValueError(
                f"{split_file}:{number}: expected an index-only SSv2 line '<split><class index>/<id>', got {line!r}"
            )
        index, video = int(match.group(2)), Path(match.group(3)).stem
        if video in template_of:
            found.setdefault(index, set()).add(template_of[video].strip())
        else:
            unknown.setdefault(index, video)
    indices = sorted(found.keys() | unknown.keys())
    unnamed = [index for index in indices if index not in found]
    if unnamed:
        shown = ", ".join(f"{index} (e.g. video {unknown[index]})" for index in unnamed[:3])
        raise ValueError(
            f"{split_file}: no video of class index {shown} is in {', '.join(map(str, annotations))}; "
            "give SSv2's train and validation annotation files"
        )
    mixed = {index: sorted(names) for index, names in found.items() if len(names) > 1}
    if mixed:
        index, names = next(iter(mixed.items()))
        raise ValueError(f"{split_file}: the videos of class index {index} have different classes: {names}")
    if indices != list(range(len(indices))):
        raise ValueError(f"{split_file}: class indices {indices} are not 0..{len(indices) - 1}")
    return [next(iter(found[index])) for index in indices]
