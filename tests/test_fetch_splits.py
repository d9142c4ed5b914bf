"""`python -m taskadapter_fast.data fetch-splits`: the published split lists, fetched from a real HTTP server.

The server runs on 127.0.0.1 and serves copies this file writes in each repository's layout and line format.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import run_main

from taskadapter_fast.data import http_retry, splits_fetch
from taskadapter_fast.data.__main__ import main
from taskadapter_fast.data.splits_fetch import PUBLISHED_SPLITS
from taskadapter_fast.runconfig import resolve_run_config

# Lines in each published format (copies of the published layouts, a few lines per split).
_OFFICIAL = {  # `<frame folder> <num frames> <label id>`: absolute folders of the authors' disks, zero-frame lines
    "train": "/mnt/sdd/u/datasets/hmdb51/frames/Chanta!____THAT_IS_long_hair!_brush_hair_u_cm_np1_le_goo_0 405 0\n"
    "/mnt/sdd/u/datasets/hmdb51/frames/[HD]_Brushing_brush_hair_f_cm_np1_fr_med_0 0 0\n",
    "val": "/mnt/sdd/u/datasets/hmdb51/frames/Ein_guter_Radschlag_cartwheel_f_nm_np1_le_med_4 76 31\n",
    "test": "/mnt/sdd/u/datasets/hmdb51/frames/AHF_Rapier_fencing_f_cm_np2_le_bad_1 50 41\n",
}
_TRX = {  # `<class>/<id>`
    "train": "brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0\nbrush_hair/April_09_brush_hair_u_nm_np1_ba_goo_1\n",
    "val": "cartwheel/Ein_guter_Radschlag_cartwheel_f_nm_np1_le_med_4\n",
    "test": "fencing/AHF_Rapier_fencing_f_cm_np2_le_bad_1\n",
}
_CLIPFSAR_SSV2 = {"train": "train8/78687\ntrain50/42326\n", "val": "val3/1234\n", "test": "test0/88644\n"}  # index-only


def _serve(site: Path, source: str, dataset: str, lines: dict[str, str], skip: str | None = None) -> dict[str, str]:
    """Writes `lines` under `site` at the paths `source` publishes for `dataset`; returns split -> path."""
    paths = dict(zip(("train", "val", "test"), PUBLISHED_SPLITS[(source, dataset)], strict=True))
    for split, path in paths.items():
        if split != skip:
            (site / path).parent.mkdir(parents=True, exist_ok=True)
            (site / path).write_text(lines[split])
    return paths


def _one_line_error(result) -> str:
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def _train_words(stdout: str) -> list[str]:
    (line,) = [line for line in stdout.splitlines() if line.startswith("python -m taskadapter_fast.train ")]
    return shlex.split(line)


@pytest.mark.parametrize(
    ("source", "dataset", "lines"),
    [("official", "hmdb51", _OFFICIAL), ("trx", "hmdb51", _TRX), ("clipfsar", "ssv2_full", _CLIPFSAR_SSV2)],
)
def test_fetch_writes_the_lists_a_manifest_and_the_train_command(tmp_path, file_server, source, dataset, lines):
    site, base = file_server[0], file_server[1] + "/"
    published = _serve(site, source, dataset, lines)
    out = tmp_path / "splits" / f"{source}-{dataset}"
    before = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)

    result = run_main(
        main, "fetch-splits", "--dataset", dataset, "--source", source, "--out", str(out), "--base-url", base
    )
    assert result.returncode == 0, result.stderr

    manifest = json.loads((out / "sources.json").read_text())
    assert (manifest["source"], manifest["dataset"], manifest["base_url"]) == (source, dataset, base)
    written = {}
    for split, path in published.items():
        data = lines[split].encode()
        written[split] = out / Path(path).name  # the published file name
        assert written[split].read_bytes() == data  # the published bytes, unchanged
        entry = manifest["files"][split]
        assert entry["file"] == written[split].name
        assert entry["url"] == base + path
        assert (entry["sha256"], entry["bytes"]) == (hashlib.sha256(data).hexdigest(), len(data))
        assert (
            before <= datetime.datetime.fromisoformat(entry["fetched"]) <= datetime.datetime.now(datetime.timezone.utc)
        )
    assert sorted(p.name for p in out.iterdir()) == sorted([*(p.name for p in written.values()), "sources.json"])

    words = _train_words(result.stdout)  # its only paths: the video root and the folder
    assert words == ["python", "-m", "taskadapter_fast.train", "--preset", dataset, "data.root=VIDEO_ROOT"] + [
        f"data.split_dir={out}"
    ]
    corpus = out / splits_fetch.PUBLISHED_CORPORA[dataset]
    assert f"--out {corpus}" in result.stdout  # the printed corpus fetch writes the corpus the folder's runs read
    corpus.write_text("stand-in: resolving checks the file is there\n")
    config = resolve_run_config(dataset, None, words[5:])  # the command's settings are ones train takes
    assert {split: Path(getattr(config.data, f"{split}_split")) for split in written} == written
    assert (config.data.root, config.data.corpus) == ("VIDEO_ROOT", str(corpus))


def test_fetch_through_the_real_command_line(tmp_path, file_server):
    site, base = file_server[0], file_server[1] + "/"
    lists = {
        "train": "Pouring something into something/51958\n",
        "val": "Holding something/103723\n",
        "test": "Pushing something from left to right/2\n",
    }
    _serve(site, "trx", "ssv2_small", lists)
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    command = [sys.executable, "-m", "taskadapter_fast.data", "fetch-splits", "--dataset", "ssv2_small"]
    result = subprocess.run(
        [*command, "--source", "trx", "--out", "lists", "--base-url", base],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    words = _train_words(result.stdout)
    assert words[-2:] == ["data.root=VIDEO_ROOT", "data.split_dir=lists"]
    assert (tmp_path / "lists" / "trainlist03.txt").read_text() == lists["train"]


def test_a_missing_file_names_its_url_and_writes_nothing(tmp_path, file_server):
    site, base = file_server[0], file_server[1] + "/"
    published = _serve(site, "clipfsar", "hmdb51", _TRX, skip="test")
    out = tmp_path / "out"
    result = run_main(
        main, "fetch-splits", "--dataset", "hmdb51", "--source", "clipfsar", "--out", str(out), "--base-url", base
    )
    assert result.returncode == 1
    line = _one_line_error(result)
    assert f"could not download {base}{published['test']}: HTTP 404" in line
    assert "--base-url" in line
    assert not out.exists() or not any(out.iterdir())  # train and val were downloaded, but nothing is written
    assert result.stdout == ""


def test_a_server_out_of_reach_is_named_once(tmp_path, monkeypatch):
    monkeypatch.setattr(http_retry, "DOWNLOAD_BACKOFF_S", 0.0)
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        base = f"http://127.0.0.1:{sock.getsockname()[1]}/"
    result = run_main(
        main,
        "fetch-splits",
        "--dataset",
        "kinetics",
        "--source",
        "trx",
        "--out",
        str(tmp_path / "o"),
        "--base-url",
        base,
    )
    assert result.returncode == 1
    line = _one_line_error(result)
    url = f"{base}splits/kinetics_CMN/trainlist03.txt"
    assert line.startswith(f"error: could not download {url}: no answer after 4 attempts: connection error")
    assert line.count(url) == 1
    assert not (tmp_path / "o").exists()


def test_an_unpublished_pair_is_refused_in_one_line(tmp_path):
    result = run_main(main, "fetch-splits", "--dataset", "ucf101", "--source", "official", "--out", str(tmp_path / "o"))
    assert result.returncode == 2
    line = _one_line_error(result)
    assert "no split lists published for --source official --dataset ucf101" in line
    assert "official:hmdb51" in line and "trx:ucf101" in line and "clipfsar:ucf101" in line
    assert not (tmp_path / "o").exists()
