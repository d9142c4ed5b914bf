"""The authors' own split lists as published: zero-frame lines and absolute paths of their disks.

Each test writes split files in the official format (`<frame folder> <num frames> <label id>`), as the
authors' HMDB51 `train.txt` / `test.txt` hold them: absolute `/mnt/<disk>/<user>/datasets/...` folders,
lines with a frame count of 0 for names with `[` `]`, and real frame folders (img_00001.jpg ...).
"""

from __future__ import annotations

import json
import logging
import os

import pytest
from helpers import make_frame_folder, run_prepare, write_lines

from taskadapter_fast.data import read_split
from taskadapter_fast.data.setup import read_splits
from taskadapter_fast.data.splits import SplitFormatError, read_split_with_notes
from taskadapter_fast.runconfig import DataConfig, resolve_run_config

# The authors' disk layout; a folder no test machine has.
FOREIGN = "/mnt/sdb_no_such_disk/someone/datasets/hmdb51/frames"

ZERO_LINES = [  # as in the published lists: names with brackets whose frame extraction failed
    f"{FOREIGN}/American_History_X_fall_[1]_f_cm_np1_ri_med_0 0 0",
    f"{FOREIGN}/Pouring [something] into [something]_v2 0 1",
    f"{FOREIGN}/Faith_Rewarded_[german]_kick_f_cm_np1_le_bad_2 0 1",
    f"{FOREIGN}/Prelinger_[HabitPat]_ride_horse_u_cm_np1_fr_med_3 0 0",
]


def split_records(caplog, path):
    return [record for record in caplog.records if record.getMessage().startswith(f"{path}:")]


def make_videos(root, layout):
    """Frame folders under `root` for (relative folder, frames) pairs."""
    for folder, frames in layout:
        make_frame_folder(root / folder, frames)


# ------------------------------------------------------------------------------------------ item 1


def test_zero_frame_lines_are_skipped_and_reported_once_per_file(tmp_path, caplog):
    make_videos(
        tmp_path, [("brush_hair/v1", 30), ("brush_hair/v2", 31), ("Pouring [something] into [something]/v3", 9)]
    )
    split = tmp_path / "train.txt"
    write_lines(
        split,
        [
            f"{tmp_path}/brush_hair/v1 30 0",
            ZERO_LINES[0],
            f"{tmp_path}/Pouring [something] into [something]/v3 9 1",
            *ZERO_LINES[1:],
            f"{tmp_path}/brush_hair/v2 31 0",
        ],
    )
    with caplog.at_level(logging.WARNING):
        rows = read_split(split)
    assert [(r.class_name, r.label, r.num_frames, r.line) for r in rows] == [
        ("brush_hair", 0, 30, 1),
        ("Pouring [something] into [something]", 1, 9, 3),
        ("brush_hair", 0, 31, 7),
    ]
    (record,) = split_records(caplog, split)
    message = record.getMessage()
    assert record.levelno == logging.WARNING
    assert "4 line(s) with a frame count of 0 skipped" in message
    assert f"line 2: {ZERO_LINES[0]!r}" in message and "line 4: " in message and "line 5: " in message
    assert "line 6: " not in message and "(4 in all)" in message  # the first few, then the count

    # At load time (a run's read_splits): one warning per split file, and the split is used.
    test = tmp_path / "test.txt"
    write_lines(test, [f"{tmp_path}/brush_hair/v1 30 41", ZERO_LINES[1].replace(" 0 1", " 0 42")])
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        data = read_splits(DataConfig(train_split=str(split), val_split=str(test), test_split=str(test)))
    assert len(data.rows["train"]) == 3 and len(data.rows["test"]) == 1
    zero_frames = [record for record in caplog.records if "frame count of 0" in record.getMessage()]
    assert [record.getMessage().split(":")[0] for record in zero_frames] == [str(split), str(test), str(test)]


def test_a_list_of_zero_frame_lines_only_is_refused_and_says_why(tmp_path):
    split = tmp_path / "test.txt"
    write_lines(split, ZERO_LINES[:2])
    with pytest.raises(
        SplitFormatError, match=r"test\.txt:1: the split file lists no videos \(2 line\(s\) with a frame"
    ):
        read_split(split)


# ------------------------------------------------------------------------------------------ item 2


def test_foreign_absolute_paths_are_found_under_the_root_by_their_trailing_components(tmp_path, caplog):
    classes = tmp_path / "hmdb51" / "frames"  # <class>/<video>, as the authors' tree below their frames/
    make_videos(classes, [("brush_hair/v1", 30), ("brush_hair/v2", 31), ("cartwheel/v3", 40)])
    split = tmp_path / "lists" / "train.txt"
    write_lines(
        split,
        [
            f"{FOREIGN}/brush_hair/v1 30 0",
            f"{FOREIGN}/brush_hair/v2 31 0",
            f"{FOREIGN}/cartwheel/v3 40 1",
            f"{FOREIGN}/cartwheel/lost 12 1",
            ZERO_LINES[0],
        ],
    )
    with caplog.at_level(logging.WARNING):
        rows, notes = read_split_with_notes(split, root=tmp_path / "hmdb51")  # the root one folder above
    assert [(r.path, r.class_name, r.label) for r in rows] == [
        (str(classes / "brush_hair" / "v1"), "brush_hair", 0),
        (str(classes / "brush_hair" / "v2"), "brush_hair", 0),
        (str(classes / "cartwheel" / "v3"), "cartwheel", 1),
        (f"{FOREIGN}/cartwheel/lost", "cartwheel", 1),  # still reported missing by prepare
    ]
    assert len(notes.remapped) == 3 and notes.not_found == [f"{FOREIGN}/cartwheel/lost"]
    assert len(notes.skipped) == 1

    with caplog.at_level(logging.WARNING):
        read_split(split, root=tmp_path / "hmdb51")
    messages = [record.getMessage() for record in split_records(caplog, split)]
    assert len(messages) == 3  # skipped, remapped (once, one example), not found
    (remapped,) = [text for text in messages if "found under the root" in text]
    assert "3 listed path(s) not found as listed" in remapped
    assert f"e.g. {FOREIGN}/brush_hair/v1 -> {classes / 'brush_hair' / 'v1'}" in remapped
    (lost,) = [text for text in messages if "not found as written" in text]
    assert f"1 listed absolute path(s) not found as written nor under {tmp_path / 'hmdb51'}" in lost
    assert "data.path_map=OLD:NEW" in lost

    # The name alone first: a flat folder of videos (`<root>/<video>`) is found too.
    flat = tmp_path / "flat"
    make_videos(flat, [("v1", 30), ("v2", 31), ("v3", 40)])
    assert [r.path for r in read_split(split, root=flat)][:3] == [str(flat / name) for name in ("v1", "v2", "v3")]
    # Without a root, the listed paths are kept as written (and said to be missing).
    assert [r.path for r in read_split(split)][0] == f"{FOREIGN}/brush_hair/v1"


def test_path_map_moves_a_listed_prefix_for_cases_no_rule_finds(tmp_path, caplog):
    # The videos lie outside the root the run gives (another disk): no rule finds them, a prefix map does.
    mine = tmp_path / "disk" / "hmdb51"
    make_videos(mine, [("brush_hair/v1", 30), ("cartwheel/v3", 40)])
    split = tmp_path / "test.txt"
    write_lines(split, [f"{FOREIGN}/brush_hair/v1 30 41", f"{FOREIGN}/cartwheel/v3 40 42"])
    root = tmp_path / "elsewhere"
    root.mkdir()
    assert not any(os.path.exists(r.path) for r in read_split(split, root=root))

    caplog.clear()
    with caplog.at_level(logging.INFO):
        rows = read_split(split, root=root, path_map=f"{FOREIGN}:{mine}")
    assert [(r.path, r.class_name, r.label) for r in rows] == [
        (str(mine / "brush_hair" / "v1"), "brush_hair", 0),
        (str(mine / "cartwheel" / "v3"), "cartwheel", 1),
    ]
    (said,) = split_records(caplog, split)
    assert f"2 listed path(s) moved by path_map, e.g. {FOREIGN}/brush_hair/v1 -> {mine}/brush_hair/v1" in (
        said.getMessage()
    )
    # Whole folder names only: a prefix that ends mid-name maps nothing.
    assert read_split(split, path_map=f"{FOREIGN[:-3]}:{mine}")[0].path == f"{FOREIGN}/brush_hair/v1"
    with pytest.raises(ValueError, match="path_map must be OLD:NEW"):
        read_split(split, path_map="no-colon")

    # The run-config key, from the command-line override through read_splits to read_split.
    config = resolve_run_config(
        overrides=[
            "data.dataset=splits",
            "model.score=video",
            f"data.train_split={split}",
            f"data.val_split={split}",
            f"data.test_split={split}",
            f"data.path_map={FOREIGN}:{mine}",
        ]
    )
    assert config.data.path_map == f"{FOREIGN}:{mine}"
    assert [r.path for r in read_splits(config.data, ["test"]).rows["test"]][0] == str(mine / "brush_hair" / "v1")
    with pytest.raises(ValueError, match="data.path_map must be OLD:NEW"):
        DataConfig(path_map="nowhere", dataset="synthetic").validate()


def test_prepare_reports_skipped_lines_remapping_and_what_is_still_not_found(tmp_path):
    root = tmp_path / "hmdb51"
    make_videos(root, [("brush_hair/v1", 30), ("brush_hair/v2", 30), ("cartwheel/v3", 40)])
    mine = tmp_path / "renamed"
    make_videos(mine, [("cartwheel/v9", 12)])
    train = tmp_path / "train.txt"
    write_lines(
        train,
        [
            f"{FOREIGN}/brush_hair/v1 30 0",
            *ZERO_LINES,
            f"{FOREIGN}/brush_hair/v2 30 0",
            f"{FOREIGN}/cartwheel/v3 40 1",
            f"{FOREIGN}/cartwheel/gone 40 1",
            "/mnt/other_disk_nowhere/frames/cartwheel/v9 12 1",
        ],
    )
    out = tmp_path / "manifest.jsonl"

    result = run_prepare(
        "--split", train, "--root", root, "--path-map", f"/mnt/other_disk_nowhere/frames:{mine}",
        "--out", out, "--no-progress", "--shot", "1",
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    report = result.stderr
    assert "5 videos listed, 4 written" in report and "1 missing, 0 unreadable; 4 line(s) skipped (frame count 0)" in (
        report
    )
    assert f"line 2: {ZERO_LINES[0]!r}" in report and "(4 in all)" in report
    assert "3 listed path(s) not found as listed; found under the root by their trailing components" in report
    assert (
        f"1 listed path(s) moved by path_map, e.g. /mnt/other_disk_nowhere/frames/cartwheel/v9 -> {mine}/cartwheel/v9"
        in (report)
    )
    assert f"1 listed absolute path(s) not found as written nor under {root}" in report
    assert f"{FOREIGN}/cartwheel/gone  [{train}:8]" in report  # listed with the missing videos
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(row["path"], row["class_name"]) for row in rows] == [
        (str(root / "brush_hair" / "v1"), "brush_hair"),
        (str(root / "brush_hair" / "v2"), "brush_hair"),
        (str(root / "cartwheel" / "v3"), "cartwheel"),
        (str(mine / "cartwheel" / "v9"), "cartwheel"),
    ]
