"""Fetching the sub-action corpus files the Task-Adapter++ authors published, one per benchmark dataset."""

from __future__ import annotations

import shlex
import sys
import urllib.parse
from pathlib import Path

from .._atomic import atomic_write_bytes
from .corpus import Corpus, parse_corpus_text, save_corpus
from .http_retry import FetchError, download_text

DEFAULT_FETCH_URL = "https://raw.githubusercontent.com/Jaulin-Bage/Task-Adapter-pp/main/corpus/"
PUBLISHED_FILES = {
    "ssv2_small": "classes_somethingcmn.yml",
    "ssv2_full": "classes_somethingotam.yml",
    "kinetics": "classes_kinetics.yml",
    "hmdb51": "classes_hmdb51.yml",
    "ucf101": "classes_ucf101.yml",
}
SSV2_FULL_WARNING = (
    "warning: classes_somethingotam.yml does not cover the SSv2-Full (OTAM) split: the authors' file is a byte "
    "copy of their SSv2-Small (CMN) corpus, so the SSv2-Full classes that are not SSv2-Small classes have no "
    "entry; add them with `python -m taskadapter_fast.corpus generate --labels SPLIT_FILE --into {out}`"
)


def fetch_corpus(dataset: str, out: str | None = None, base_url: str = DEFAULT_FETCH_URL) -> tuple[Corpus, str, Path]:
    """Downloads the authors' corpus file for `dataset` (a PUBLISHED_FILES key) and writes it to `out`.

    out: default the published file name in the current folder. A YAML `out` gets the authors' bytes
    unchanged, a `.json` one the same corpus in JSON. The file is parsed first, so a broken download
    writes nothing. Warnings (the SSv2-Full file, repeated keys) go to stderr. Returns (corpus, the
    URL, the path written); raises FetchError or ValueError (unknown dataset, file not a corpus).
    """
    if dataset not in PUBLISHED_FILES:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(PUBLISHED_FILES)}")
    filename = PUBLISHED_FILES[dataset]
    out_path = Path(out) if out else Path(filename)
    if dataset == "ssv2_full":  # said on every fetch, before the download, so a failed one says it too
        print(SSV2_FULL_WARNING.format(out=shlex.quote(str(out_path))), file=sys.stderr)
    url = base_url.rstrip("/") + "/" + filename
    advice = (
        "pass --base-url with a reachable copy, or make the corpus with `python -m taskadapter_fast.corpus generate`"
    )
    if urllib.parse.urlsplit(url).scheme not in ("http", "https", "file"):
        raise FetchError(f"--base-url {base_url!r} is not an http(s) or file URL")
    data = download_text(url, "a corpus file", advice)
    text = data.decode("utf-8")
    corpus, labels, note = parse_corpus_text(text, url, json_format=url.lower().endswith(".json"))
    if note:
        print(f"note: {note}", file=sys.stderr)
    if out_path.suffix.lower() == ".json":
        save_corpus(corpus, out_path, labels)
    else:
        atomic_write_bytes(out_path, data, fsync=True)
    return corpus, url, out_path
