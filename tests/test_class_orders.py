"""The published class orders shipped as package data, chosen by `class_names="<source>:<dataset>"`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from taskadapter_fast import class_orders
from taskadapter_fast.data import read_split
from taskadapter_fast.data.corpus import normalize_class_name
from taskadapter_fast.data.splits import SplitFormatError, load_class_names
from taskadapter_fast.runconfig import resolve_run_config

ROOT = Path(__file__).resolve().parents[1]
HMDB_TEST = ["fencing", "kick", "kick ball", "pick", "pour", "pushup", "run", "sit", "smoke", "talk"]


def write_official(path: Path, labels: list[int]) -> None:
    # the authors' lines: an absolute frame folder, its frame count, the global label id
    lines = [f"/mnt/disk/user/datasets/hmdb51/frames/video_{number} 40 {label}" for number, label in enumerate(labels)]
    path.write_text("\n".join(lines) + "\n")


def test_official_hmdb51_test_list_gets_the_real_class_names(tmp_path):
    split = tmp_path / "test.txt"
    write_official(split, [41, 41, 45, 50, 43])
    rows = read_split(split, root=tmp_path, class_names="official:hmdb51")
    assert [row.class_name for row in rows] == ["fencing", "fencing", "pour", "talk", "kick ball"]
    assert [row.label for row in rows] == [0, 0, 2, 3, 1]  # per-split labels, ordered by the global id
    assert {row.split for row in rows} == {"test"}


def test_official_orders_cover_the_published_ranges():
    hmdb = load_class_names("official:hmdb51")
    assert len(hmdb) == 51 and hmdb[0] == "brush hair" and hmdb[30] == "wave" and hmdb[31] == "cartwheel"
    assert hmdb[41:] == HMDB_TEST
    ucf, kinetics, ssv2 = (load_class_names(f"official:{name}") for name in ("ucf101", "kinetics", "ssv2_small"))
    assert (len(ucf), len(kinetics), len(ssv2)) == (101, 100, 100)
    assert kinetics[75] == "trimming or shaving beard"  # the val class the authors' corpus lacks
    # the official SSv2 order is CLIP-FSAR's SSv2-Small train, (val,) test order, as written by the official code
    small = load_class_names("clipfsar:ssv2_small")
    assert ssv2[0] == "pouring something into something" and small["train"][0] == "Pouring [something] into [something]"
    assert len(small["test"]) == 24 and ssv2[76] == "twisting (wringing) something wet until water comes out"


def test_clipfsar_ssv2_index_lists_get_each_splits_names_with_brackets(tmp_path):
    train, test = tmp_path / "train_few_shot.txt", tmp_path / "test_few_shot.txt"
    train.write_text("train8/78687\ntrain0/51958\ntrain8/42326\n")
    test.write_text("test18/195025\ntest0/88644\n")
    order = load_class_names("clipfsar:ssv2_full")
    assert sorted(order) == ["test", "train"] and (len(order["train"]), len(order["test"])) == (64, 24)
    rows = read_split(train, root=tmp_path, class_names="clipfsar:ssv2_full")
    assert [row.class_name for row in rows] == [order["train"][8], order["train"][0], order["train"][8]]
    assert [row.label for row in rows] == [1, 0, 1]
    assert any("[something]" in name for name in order["train"])  # the bracketed names as published
    tested = read_split(test, root=tmp_path, class_names="clipfsar:ssv2_full")
    assert [row.class_name for row in tested] == [order["test"][18], order["test"][0]]
    assert order["test"][0] == "Approaching [something] with your camera"
    # TRX's SSv2-Full (OTAM) lists are CLIP-FSAR's files: the same order
    assert load_class_names("trx:ssv2_full") == order
    small = read_split(test, root=tmp_path, class_names="clipfsar:ssv2_small")
    assert small[1].class_name == "Twisting (wringing) [something] wet until water comes out"


def test_the_derived_ssv2_small_val_order_is_the_official_val_range(tmp_path):
    # CLIP-FSAR names no val classes; the shipped order (derived: its val ids matched with TRX's named val list)
    # is the official order's val range 64-75, class for class
    official, small = load_class_names("official:ssv2_small"), load_class_names("clipfsar:ssv2_small")
    assert sorted(small) == ["test", "train", "val"] and len(small["val"]) == 12
    assert [normalize_class_name(name) for name in small["val"]] == official[64:76]
    val = tmp_path / "val_few_shot.txt"  # CLIP-FSAR's first val lines
    val.write_text("val0/46768\nval1/8330\nval0/58494\n")
    rows = read_split(val, root=tmp_path, class_names="clipfsar:ssv2_small")
    assert [row.class_name for row in rows] == [small["val"][0], small["val"][1], small["val"][0]]
    assert rows[0].class_name == "Lifting something up completely without letting it drop down"
    assert "DERIVED" in (Path(class_orders.__file__).parent / "clipfsar_ssv2_small_val.txt").read_text()


def test_a_split_the_source_publishes_no_order_for_is_refused_by_name(tmp_path):
    no_val = r"'clipfsar:ssv2_full' has no order for split 'val' \(it has train, test\).*data.val_class_names=FILE"
    val = tmp_path / "val_few_shot.txt"
    val.write_text("val2/188509\nval9/154368\n")
    with pytest.raises(SplitFormatError, match=no_val):
        read_split(val, root=tmp_path, class_names="clipfsar:ssv2_full")
    # a CLIP-FSAR val list whose paths name the classes needs no order: the folders name them
    paths = tmp_path / "hmdb_val.txt"
    paths.write_text("val0//videos/cartwheel/a.avi\nval1//videos/eat/b.avi\n")
    rows = read_split(paths, root=tmp_path, class_names="clipfsar:hmdb51")
    assert [row.class_name for row in rows] == ["cartwheel", "eat"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("official:hmdb", r"names no shipped class order; choose one of official:hmdb51, .*trx:ssv2_full"),
        ("offical:hmdb51", r"choose one of official:hmdb51"),
        ("trx:hmdb51", r"TRX lists name their classes in their paths"),
        ("official:ssv2_full", r"use 'clipfsar:ssv2_full'"),
    ],
)
def test_a_bad_choice_names_the_valid_ones(tmp_path, spec, message):
    split = tmp_path / "test.txt"
    write_official(split, [41])
    with pytest.raises(ValueError, match=message):
        read_split(split, root=tmp_path, class_names=spec)


def test_a_names_file_is_still_read_as_a_file(tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("a\nb\n")
    assert load_class_names(str(names)) == ["a", "b"]
    with pytest.raises(FileNotFoundError, match="class names file not found"):
        load_class_names(str(tmp_path / "missing.txt"))


def test_every_shipped_file_cites_its_source_and_every_choice_loads():
    folder = Path(class_orders.__file__).parent
    files = sorted(folder.glob("*.txt"))
    assert files
    for file in files:
        assert "# Source: github.com/" in file.read_text(encoding="utf-8"), file.name
    for spec in class_orders.choices():
        order = load_class_names(spec)
        lists = list(order.values()) if isinstance(order, dict) else [order]
        assert lists and all(names and len(set(names)) == len(names) for names in lists), spec


def test_the_command_line_string_reaches_the_config_unchanged():
    splits = [f"data.{split}_split=lists/{split}.txt" for split in ("train", "val", "test")]
    config = resolve_run_config(
        preset="hmdb51", overrides=[*splits, "data.corpus=c.yml", "data.class_names=official:hmdb51"]
    )
    assert config.data.class_names == "official:hmdb51"
    assert load_class_names(config.data.class_names)[41:] == HMDB_TEST


def test_a_benchmark_preset_picks_the_published_order_of_index_only_lists(tmp_path):
    def config(preset, train_lines, *extra):
        (tmp_path / "train.txt").write_text("\n".join(train_lines) + "\n")
        splits = [f"data.{split}_split={tmp_path / 'train.txt'}" for split in ("train", "val", "test")]
        return resolve_run_config(preset=preset, overrides=[*splits, "data.corpus=c.yml", *extra]).data

    official = [f"/mnt/disk/user/hmdb51/frames/video_{n} 40 {n % 31}" for n in range(4)]
    assert config("hmdb51", official).class_names == "official:hmdb51"
    assert config("ssv2_small", ["train3/51958", "train0/1"]).class_names == "clipfsar:ssv2_small"
    assert config("ssv2_full", ["train8/78687"]).class_names == "clipfsar:ssv2_full"  # TRX's = CLIP-FSAR's
    assert config("ucf101", ["train0//videos/ApplyEyeMakeup/v_1.avi"]).class_names == "clipfsar:ucf101"
    assert config("kinetics", ["air drumming/abc"]).class_names is None  # TRX lines name their classes
    assert config("hmdb51", official, "data.class_names=mine.txt").class_names == "mine.txt"  # a given one wins
    assert config("tiny", ["train3/51958"]).class_names is None  # no benchmark: no published order to choose
    assert config("ssv2_full", official).class_names is None  # no official SSv2-Full order is shipped


def test_the_sdist_carries_the_class_orders(tmp_path):
    checkout = tmp_path / "checkout"  # a copy: sdist writes its egg-info beside setup.py
    checkout.mkdir()
    for name in ("setup.py", "pyproject.toml", "MANIFEST.in", "README.md"):
        shutil.copy2(ROOT / name, checkout / name)
    for name in ("taskadapter_fast", "kernels"):
        shutil.copytree(ROOT / name, checkout / name, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    env = {key: value for key, value in os.environ.items() if key != "TAF_BUILD_EXT"}
    made = subprocess.run(
        [sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path / "dist")],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    (archive,) = (tmp_path / "dist").glob("*.tar.gz")
    with tarfile.open(archive) as tar:
        shipped = {Path(name).name for name in tar.getnames() if "/taskadapter_fast/class_orders/" in name}
    expected = {file.name for file in Path(class_orders.__file__).parent.glob("*.txt")} | {"__init__.py"}
    assert expected <= shipped


def test_prepare_takes_the_same_string_on_the_command_line(tmp_path):
    split = tmp_path / "lists" / "test.txt"
    split.parent.mkdir()
    lines = []
    for number, label in enumerate(range(41, 51)):
        folder = tmp_path / "frames" / f"video_{number}"
        folder.mkdir(parents=True)
        for frame in range(1, 9):
            (folder / f"img_{frame:05d}.jpg").write_bytes(b"")  # prepare counts frame files only
        lines.append(f"frames/video_{number} 8 {label}")
    split.write_text("\n".join(lines) + "\n")
    out = tmp_path / "manifest.jsonl"
    command = [sys.executable, "-m", "taskadapter_fast.data", "prepare", "--split", str(split), "--root", str(tmp_path)]
    command += ["--out", str(out), "--no-progress", "--shot", "1", "--query", "1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([*command, "--class-names", "official:hmdb51"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["class_name"] for row in rows] == HMDB_TEST
    bad = subprocess.run([*command, "--class-names", "official:hmdb"], env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "choose one of official:hmdb51" in bad.stderr


def test_an_order_is_refused_on_lists_it_does_not_number(tmp_path):
    index_list = tmp_path / "test_few_shot.txt"
    index_list.write_text("test0/88644\ntest3/1234\n")
    with pytest.raises(ValueError, match=r"'official:ssv2_small' does not number .* use 'clipfsar:<dataset>'"):
        read_split(index_list, root=tmp_path, class_names="official:ssv2_small")
    official = tmp_path / "test.txt"
    write_official(official, [41, 42])
    with pytest.raises(ValueError, match=r"'clipfsar:hmdb51' does not number .* use 'official:<dataset>'"):
        read_split(official, root=tmp_path, class_names="clipfsar:hmdb51")
    named = tmp_path / "testlist03.txt"  # TRX lists name their classes: an order given anyway is unused
    named.write_text("fencing/a\nkick/b\n")
    assert [row.class_name for row in read_split(named, root=tmp_path, class_names="official:hmdb51")] == [
        "fencing",
        "kick",
    ]
