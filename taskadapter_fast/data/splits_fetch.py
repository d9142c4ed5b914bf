"""Fetching the few-shot split lists published with the benchmarks: the authors', TRX's and CLIP-FSAR's.

`fetch_splits` downloads the train / val / test lists of one (source, dataset) pair from the public
repository that published them (raw file URLs, or a copy of the same layout under `base_url`), writes them
under their published names with a manifest of where each came from (`sources.json`), and `train_command`
gives the `train` command that uses them.
"""

from __future__ import annotations

import datetime
import hashlib
import http.client
import json
import shlex
import threading
import urllib.error
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from .._atomic import atomic_write_bytes, atomic_write_text
from .corpus_fetch import PUBLISHED_FILES as PUBLISHED_CORPORA
from .corpus_fetch import FetchError
from .http_retry import (
    FATAL_STATUS,
    RETRY_STATUS,
    Fatal,
    RequestFailed,
    Retryable,
    opener_for,
    retry_after,
    with_retries,
)

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
VIDEO_ROOT_PLACEHOLDER = "VIDEO_ROOT"
_TIMEOUT_S = 60.0
_MAX_RETRIES = 3
_BACKOFF_S = 1.0


class UnpublishedSplits(ValueError):
    """No split lists were published for this (source, dataset) pair."""


@dataclass(frozen=True)
class FetchedSplits:
    """What `fetch_splits` wrote: the list per split ("train", "val", "test") and the manifest."""

    source: str
    dataset: str
    files: dict[str, Path]
    manifest: Path


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


def _get(url: str, answered: threading.Event) -> bytes:
    """One GET of `url`: its bytes, or Retryable / RequestFailed / Fatal as `http_retry` sorts them."""
    try:
        with opener_for(url).open(url, timeout=_TIMEOUT_S) as response:
            data = response.read()
    except urllib.error.HTTPError as exc:
        answered.set()
        message = f"HTTP {exc.code} {exc.reason}"
        if exc.code in RETRY_STATUS or exc.code >= 500:
            raise Retryable(message, retry_after(exc.headers.get("Retry-After"))) from None
        if exc.code in FATAL_STATUS:
            raise Fatal(message) from None
        raise RequestFailed(message) from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        raise Retryable(f"connection error: {getattr(exc, 'reason', None) or exc}", connection=True) from None
    answered.set()
    return data


def download(url: str) -> bytes:
    """The bytes at `url`, retrying what may pass on a second try; FetchError naming the URL otherwise."""
    if urllib.parse.urlsplit(url).scheme not in ("http", "https", "file"):
        raise FetchError(f"{url} is not an http(s) or file URL")
    answered = threading.Event()
    try:
        data = with_retries(lambda: _get(url, answered), _MAX_RETRIES, _BACKOFF_S, threading.Event(), url, answered)
    except (Fatal, RequestFailed) as exc:
        problem = str(exc).replace(f"cannot reach {url} ", "no answer ")  # the message names the URL once
        raise FetchError(f"could not download {url}: {problem}; pass --base-url with a reachable copy") from None
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FetchError(f"{url} is not UTF-8 text (byte {exc.start}); not a split list") from None
    if not data.strip():
        raise FetchError(f"{url} is empty; not a split list")
    return data


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


def train_command(fetched: FetchedSplits, video_root: str = VIDEO_ROOT_PLACEHOLDER) -> str:
    """The `train` command that runs the preset of the fetched dataset on the fetched lists.

    The corpus is the authors' file for the dataset, in the same folder (`corpus fetch` writes it).
    """
    folder = fetched.manifest.parent
    corpus = folder / PUBLISHED_CORPORA[fetched.dataset]
    words = ["python", "-m", "taskadapter_fast.train", "--preset", fetched.dataset]
    words += [f"data.{split}_split={fetched.files[split]}" for split in SPLITS]
    words += [f"data.root={video_root}", f"data.corpus={corpus}"]
    return " ".join(shlex.quote(word) for word in words)


def corpus_command(fetched: FetchedSplits) -> str:
    """The `corpus fetch` command that writes the corpus `train_command` names."""
    corpus = fetched.manifest.parent / PUBLISHED_CORPORA[fetched.dataset]
    words = ["python", "-m", "taskadapter_fast.corpus", "fetch", "--dataset", fetched.dataset, "--out", str(corpus)]
    return " ".join(shlex.quote(word) for word in words)
