"""read_split on every published few-shot split format, and `prepare` run as a real subprocess."""

from __future__ import annotations

import json
import os

import av
import numpy as np
import pytest
from helpers import make_frame_folder, run_prepare, write_lines

from taskadapter_fast.data import read_split
from taskadapter_fast.data.splits import (
    ManifestRow,
    SplitFormatError,
    detect_format,
    read_manifest,
    rows_of_split,
    write_manifest,
)


def write_webm(path, num_frames: int = 5) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libvpx-vp9", rate=12, options={"deadline": "realtime", "cpu-used": "8"})
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(np.full((16, 16, 3), 20 * i, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def summary(rows):
    return [(r.class_name, r.label, r.split, r.kind, r.num_frames) for r in rows]


# ------------------------------------------------------------------------------------------ formats


def test_official_lists_resolve_frame_folders_and_name_classes_by_folder(tmp_path):
    for cls, video, n in (("brush_hair", "v1", 30), ("brush_hair", "v2", 31), ("cartwheel", "v3", 40)):
        make_frame_folder(tmp_path / "frames" / cls / video, n)
    split = tmp_path / "lists" / "trainlist.txt"
    write_lines(
        split, ["frames/brush_hair/v1 30 3", "frames/brush_hair/v2 31 3", "", "# comment", "frames/cartwheel/v3 40 7"]
    )
    rows = read_split(split, root=tmp_path)
    assert summary(rows) == [
        ("brush_hair", 0, "train", "frames", 30),
        ("brush_hair", 0, "train", "frames", 31),
        ("cartwheel", 1, "train", "frames", 40),
    ]
    assert rows[0].path == str(tmp_path / "frames" / "brush_hair" / "v1")
    assert (rows[2].source, rows[2].line) == (str(split), 5)
    assert detect_format(split) == "official"
    assert read_split(split, format="official", root=tmp_path) == rows


def test_official_lists_with_flat_folders_take_class_names_from_a_names_file(tmp_path, caplog):
    for video in ("101", "102", "103"):
        make_frame_folder(tmp_path / video, 8)
    split = tmp_path / "test.txt"
    write_lines(split, ["101 8 0", "102 8 1", "103 8 1"])
    names = tmp_path / "names.txt"
    write_lines(names, ["pushing something", "pulling something"])
    rows = read_split(split, class_names=names)
    assert [(r.class_name, r.label, r.split) for r in rows] == [
        ("pushing something", 0, "test"),
        ("pulling something", 1, "test"),
        ("pulling something", 1, "test"),
    ]
    assert [r.class_name for r in read_split(split, class_names=["a", "b"])] == ["a", "b", "b"]
    with caplog.at_level("WARNING"):
        assert [r.class_name for r in read_split(split)] == ["0", "1", "1"]
    assert "no class names given" in caplog.text


def test_trx_lists_with_class_names_find_videos_and_frame_folders(tmp_path):
    write_webm(tmp_path / "air drumming" / "-abc_000010.mp4", 3)  # a webm stream named .mp4 is fine for resolving
    make_frame_folder(tmp_path / "air drumming" / "xyz", 4)
    write_webm(tmp_path / "juggling balls" / "q1.webm", 3)
    split = tmp_path / "splits" / "testlist01.txt"
    write_lines(split, ["juggling balls/q1", "air drumming/-abc_000010", "air drumming/xyz", "air drumming/gone"])
    rows = read_split(split, root=tmp_path)
    assert detect_format(split) == "trx"
    assert [(r.class_name, r.label, r.kind, r.split) for r in rows] == [
        ("juggling balls", 1, "video", "test"),
        ("air drumming", 0, "video", "test"),
        ("air drumming", 0, "frames", "test"),
        ("air drumming", 0, "frames", "test"),  # missing: reported by prepare, not here
    ]
    assert rows[0].path == str(tmp_path / "juggling balls" / "q1.webm")
    assert rows[1].path == str(tmp_path / "air drumming" / "-abc_000010.mp4")


def test_ssv2_trx_lists_find_flat_webm_files(tmp_path):
    write_webm(tmp_path / "videos" / "78687.webm", 3)
    split = tmp_path / "train.txt"
    write_lines(split, ["Pushing something from left to right/78687"])
    (row,) = read_split(split, root=tmp_path / "videos")
    assert (row.path, row.kind, row.class_name) == (
        str(tmp_path / "videos" / "78687.webm"),
        "video",
        "Pushing something from left to right",
    )


def test_otam_and_clip_fsar_index_lists_use_class_names_when_given(tmp_path):
    write_webm(tmp_path / "78687.webm", 3)
    split = tmp_path / "otam_test.txt"
    write_lines(split, ["test8/78687", "test2/11", "test8/12"])
    assert detect_format(split) == "trx"
    rows = read_split(split, root=tmp_path)
    assert [(r.class_name, r.label, r.split) for r in rows] == [
        ("test8", 1, "test"),
        ("test2", 0, "test"),
        ("test8", 1, "test"),
    ]
    assert rows[0].kind == "video" and rows[0].path == str(tmp_path / "78687.webm")
    names = [f"class {i}" for i in range(10)]
    assert [r.class_name for r in read_split(split, root=tmp_path, class_names=names)] == [
        "class 8",
        "class 2",
        "class 8",
    ]
    by_split = tmp_path / "names.json"
    by_split.write_text(json.dumps({"test": names}), encoding="utf-8")
    assert read_split(split, root=tmp_path, class_names=by_split)[1].class_name == "class 2"
    ssv2_labels = tmp_path / "labels.json"  # SSv2's own {name: "index"} file
    ssv2_labels.write_text(json.dumps({name: str(i) for i, name in enumerate(names)}), encoding="utf-8")
    assert read_split(split, root=tmp_path, class_names=ssv2_labels)[0].class_name == "class 8"
    assert read_split(split, format="clipfsar", root=tmp_path) == rows
    one_class = tmp_path / "sub" / "test_one.txt"  # flat ids: the shared folder is not a class name
    write_lines(one_class, ["test8/78687"])
    assert read_split(one_class, root=tmp_path)[0].class_name == "test8"


def test_clip_fsar_path_lists_take_class_names_from_the_path(tmp_path):
    write_webm(tmp_path / "videos" / "brush_hair" / "x.avi", 3)
    split = tmp_path / "hmdb_train.txt"
    write_lines(
        split, ["train0//videos/brush_hair/x.avi", "train0//videos/brush_hair/y.avi", "train5//videos/golf/z.avi"]
    )
    assert detect_format(split) == "clipfsar"
    rows = read_split(split, root=tmp_path)
    assert [(r.class_name, r.label, r.split, r.kind) for r in rows] == [
        ("brush_hair", 0, "train", "video"),
        ("brush_hair", 0, "train", "video"),
        ("golf", 1, "train", "video"),
    ]
    assert rows[2].path == str(tmp_path / "videos" / "golf" / "z.avi")


def test_folder_per_class_layout(tmp_path):
    for cls, video in (("waving", "a.mp4"), ("waving", "b.webm"), ("clapping", "c.avi"), ("clapping", "d.mkv")):
        path = tmp_path / "mine" / cls / video
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    (tmp_path / "mine" / "waving" / "notes.txt").write_text("ignored")
    (tmp_path / "mine" / "waving" / "._a.mp4").write_bytes(b"")  # a macOS resource fork: ignored
    make_frame_folder(tmp_path / "mine" / "clapping" / "e", 3)
    rows = read_split(tmp_path / "mine")
    assert detect_format(tmp_path / "mine") == "folder"
    assert [(r.class_name, r.label, r.split, r.kind, r.line) for r in rows] == [
        ("clapping", 0, "mine", "video", None),
        ("clapping", 0, "mine", "video", None),
        ("clapping", 0, "mine", "frames", None),
        ("waving", 1, "mine", "video", None),
        ("waving", 1, "mine", "video", None),
    ]


def test_folder_per_class_frame_folders_named_otherwise_are_reported_not_dropped(tmp_path):
    make_frame_folder(tmp_path / "mine" / "clapping" / "good", 8)
    (tmp_path / "mine" / "waving" / "odd").mkdir(parents=True)
    for number in range(1, 9):
        (tmp_path / "mine" / "waving" / "odd" / f"frame_{number}.jpg").write_bytes(b"")
    out = tmp_path / "m.jsonl"
    result = run_prepare("--split", tmp_path / "mine", "--out", out, "--no-progress")
    assert "2 videos listed, 1 written" in result.stderr and "1 unreadable" in result.stderr
    assert "odd" in result.stderr and "no img_*.jpg frames" in result.stderr


def test_a_repeated_line_reads_its_video_once_and_says_so(tmp_path, caplog):
    for name in ("a", "b"):
        make_frame_folder(tmp_path / name / "v", 9)
    write_lines(tmp_path / "train.txt", ["a/v 9 0", "b/v 9 1", "a/v 9 0"])
    with caplog.at_level("WARNING"):
        rows = read_split(tmp_path / "train.txt")
    assert [(r.class_name, r.line) for r in rows] == [("a", 1), ("b", 2)]
    assert "1 repeated video(s) read once: line 3 repeats line 1" in caplog.text


def test_label_ids_are_per_split(tmp_path):
    for name in ("a", "b", "c", "d", "e"):
        make_frame_folder(tmp_path / name / "v", 9)
    write_lines(tmp_path / "train.txt", ["a/v 9 0", "b/v 9 1", "c/v 9 2"])
    write_lines(tmp_path / "test.txt", ["d/v 9 64", "e/v 9 65"])
    train, test = read_split(tmp_path / "train.txt"), read_split(tmp_path / "test.txt")
    assert [r.label for r in train] == [0, 1, 2] and [r.label for r in test] == [0, 1]
    assert {r.split for r in train} == {"train"} and {r.split for r in test} == {"test"}
    assert {r.class_name for r in train}.isdisjoint({r.class_name for r in test})


def test_manifest_round_trip_and_auto_detection(tmp_path):
    rows = [ManifestRow(str(tmp_path / "x.webm"), "video", 12, "waving", "test", 0, "list.txt", 4)]
    path = write_manifest(rows, tmp_path / "manifest.jsonl")
    assert read_manifest(path) == rows
    assert read_split(path) == rows and detect_format(path) == "manifest"


# ------------------------------------------------------------------------------------------ errors


def test_errors_name_the_file_the_line_and_the_format(tmp_path):
    official = tmp_path / "train.txt"
    write_lines(official, ["a/v 9 0", "b/v 9 1", "c/v nine 2"])
    with pytest.raises(SplitFormatError, match=r"train\.txt:3: .*format 'official', auto-detected from line 1"):
        read_split(official)
    index = tmp_path / "val.txt"
    write_lines(index, ["val0/1", "val1/2", "val9/3"])
    with pytest.raises(SplitFormatError, match=r"val\.txt:3: class index 9 .* 2 names"):
        read_split(index, class_names=["x", "y"])
    with pytest.raises(SplitFormatError, match=r"val\.txt:1: .*format 'official', as requested"):
        read_split(index, format="official")
    with pytest.raises(SplitFormatError, match=r"val\.txt:1: .*format 'clipfsar'"):
        write_lines(tmp_path / "val.txt", ["brush_hair/x"])
        read_split(tmp_path / "val.txt", format="clipfsar")
    garbage = tmp_path / "odd.txt"
    write_lines(garbage, ["", "just words"])
    with pytest.raises(SplitFormatError, match=r"odd\.txt:2: cannot detect the split format"):
        read_split(garbage)
    empty = tmp_path / "empty.txt"
    write_lines(empty, ["# nothing"])
    with pytest.raises(SplitFormatError, match="lists no videos"):
        read_split(empty)
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        read_split(tmp_path / "nope.txt")
    with pytest.raises(ValueError, match="format must be one of"):
        read_split(official, format="csv")
    bad_manifest = tmp_path / "m.jsonl"
    bad_manifest.write_text('{"path": "x"}\n', encoding="utf-8")
    with pytest.raises(SplitFormatError, match=r"m\.jsonl:1: .*manifest"):
        read_split(bad_manifest)


# ------------------------------------------------------------------------------------------ prepare


def test_files_saved_with_a_byte_order_mark_read_like_plain_ones(tmp_path):
    """Windows editors start UTF-8 files with a BOM; it must not become part of the first name or path."""
    write_webm(tmp_path / "air drumming" / "a.webm", 3)
    write_webm(tmp_path / "bowling" / "b.webm", 3)
    split = tmp_path / "train.txt"
    split.write_text("\ufeffair drumming/a\r\nbowling/b\r\n", encoding="utf-8")
    rows = read_split(split, root=tmp_path)
    assert [(r.class_name, r.kind) for r in rows] == [("air drumming", "video"), ("bowling", "video")]
    make_frame_folder(tmp_path / "f1", 8)
    official = tmp_path / "test.txt"
    official.write_text("\ufefff1 8 0\n", encoding="utf-8")
    names = tmp_path / "names.txt"
    names.write_text("\ufeffpushing something\n", encoding="utf-8")
    (row,) = read_split(official, root=tmp_path, class_names=names)
    assert (row.path, row.class_name) == (str(tmp_path / "f1"), "pushing something")


def test_list_ids_find_videos_whose_extension_is_upper_case(tmp_path):
    write_webm(tmp_path / "clapping" / "a.WEBM", 3)
    write_webm(tmp_path / "waving" / "b.Mp4", 3)
    split = tmp_path / "train.txt"
    write_lines(split, ["clapping/a", "waving/b.mp4"])
    rows = read_split(split, root=tmp_path)
    assert [(r.path, r.kind) for r in rows] == [
        (str(tmp_path / "clapping" / "a.WEBM"), "video"),
        (str(tmp_path / "waving" / "b.Mp4"), "video"),
    ]


def test_frame_folders_named_like_videos_stay_frame_folders(tmp_path):
    make_frame_folder(tmp_path / "brush_hair" / "v_1.avi", 8)
    make_frame_folder(tmp_path / "clap" / "v_2.avi", 9)
    rows = read_split(tmp_path, format="folder")
    assert [(r.class_name, r.kind) for r in rows] == [("brush_hair", "frames"), ("clap", "frames")]


def test_prepare_probes_frame_counts_and_reports_every_missing_video(tmp_path):
    write_webm(tmp_path / "clapping" / "ok1.webm", 5)
    write_webm(tmp_path / "clapping" / "ok2.webm", 7)
    (tmp_path / "waving").mkdir()
    (tmp_path / "waving" / "broken.webm").write_bytes(b"\x1a\x45\xdf\xa3 not really a webm")
    train = tmp_path / "train.txt"
    write_lines(train, ["clapping/ok1", "clapping/gone1", "waving/broken", "clapping/ok2"])
    make_frame_folder(tmp_path / "jumping" / "f1", 11)
    test = tmp_path / "test.txt"
    (tmp_path / "jumping" / "f6").mkdir()
    for number in range(1, 9):
        (tmp_path / "jumping" / "f6" / f"img_{number:06d}.jpg").write_bytes(b"")  # not what the loader reads
    write_lines(test, ["jumping/f1", "jumping/gone2", "jumping/gone3", "jumping/f6"])
    out = tmp_path / "out" / "manifest.jsonl"

    result = run_prepare("--split", train, test, "--root", tmp_path, "--out", out, "--no-progress")

    assert result.returncode == 0, result.stderr
    assert "8 videos listed, 3 written" in result.stderr
    assert "3 missing, 2 unreadable" in result.stderr
    for name, line in (
        ("gone1", "train.txt:2"),
        ("gone2", "test.txt:2"),
        ("gone3", "test.txt:3"),
        ("broken", "train.txt:3"),
        ("f6", "test.txt:4"),
    ):
        assert name in result.stderr and line in result.stderr
    assert "no frame folder or video file" in result.stderr
    assert "not named img_00001.jpg ... img_00008.jpg" in result.stderr
    rows = read_split(out)
    assert [(r.class_name, r.split, r.label, r.num_frames) for r in rows] == [
        ("clapping", "train", 0, 5),
        ("clapping", "train", 0, 7),
        ("jumping", "test", 0, 11),
    ]
    # One manifest for several splits: each run config key (and evaluate's --subset) takes its own rows.
    from taskadapter_fast.data.setup import read_splits
    from taskadapter_fast.runconfig import DataConfig

    assert [r.class_name for r in rows_of_split(rows, "train", out)] == ["clapping", "clapping"]
    test_rows = read_splits(DataConfig(test_split=str(out)), ["test"]).rows["test"]
    assert [r.class_name for r in test_rows] == ["jumping"]
    with pytest.raises(ValueError, match=r"holds the splits \['test', 'train'\], none of them 'val'"):
        rows_of_split(rows, "val", out)


def test_prepare_exit_status_for_bad_split_files(tmp_path):
    bad = tmp_path / "bad.txt"
    write_lines(bad, ["x/v 9 0", "nonsense line here"])
    result = run_prepare("--split", bad, "--out", tmp_path / "m.jsonl", "--no-progress")
    assert result.returncode == 2 and "bad.txt:2:" in result.stderr
    gone = tmp_path / "gone.txt"
    write_lines(gone, ["x/v 9 0"])
    result = run_prepare("--split", gone, "--out", tmp_path / "m.jsonl", "--no-progress")
    assert result.returncode == 1 and "1 missing" in result.stderr


def test_prepare_warns_about_classes_with_fewer_videos_than_shot_plus_query(tmp_path):
    from taskadapter_fast.data.episodes import EpisodeLoader

    for number in range(6):
        make_frame_folder(tmp_path / "clapping" / f"c{number}", 4)
    for number in range(4):
        make_frame_folder(tmp_path / "waving" / f"w{number}", 4)
    (tmp_path / "waving" / "empty").mkdir()  # unreadable: no img_*.jpg
    make_frame_folder(tmp_path / "running" / "r0", 4)
    make_frame_folder(tmp_path / "running" / "r1", 4)
    train, test = tmp_path / "train.txt", tmp_path / "test.txt"
    clapping, waving = [f"clapping/c{n}" for n in range(6)], [f"waving/w{n}" for n in range(4)]
    write_lines(train, clapping + waving + ["waving/empty", "jumping/gone1", "jumping/gone2"])
    write_lines(test, ["running/r0", "running/r1"])
    out = tmp_path / "m.jsonl"

    result = run_prepare("--split", train, test, "--out", out, "--no-progress")

    assert result.returncode == 0, result.stderr
    assert "shot + query = 5 + 1 = 6" in result.stderr
    assert "  train: 'waving' has 4, 'jumping' has 0 (left out of the manifest)\n" in result.stderr
    assert "  test: 'running' has 2\n" in result.stderr
    assert "'clapping'" not in result.stderr
    # The bar is the episode loader's: the classes prepare names are the ones it refuses.
    with pytest.raises(ValueError, match=r"1 class\(es\) have fewer: 'waving' has 4"):
        EpisodeLoader(
            rows_of_split(read_split(out), "train", out), 2, 5, 1, num_frames=1, image_size=8, train=False, seed=0
        )

    result = run_prepare("--split", train, test, "--out", out, "--no-progress", "--shot", "1", "--query", "1")
    assert result.returncode == 0, result.stderr
    assert "shot + query = 1 + 1 = 2" in result.stderr
    assert "  train: 'jumping' has 0 (left out of the manifest)\n" in result.stderr
    assert "waving" not in result.stderr.split("shot + query")[1] and "running" not in result.stderr


def test_prepare_warns_about_classes_and_videos_that_two_splits_share(tmp_path):
    for cls, videos in (("ApplyEyeMakeup", ["a0", "a1"]), ("waving", ["w0", "w1"]), ("running", ["r0"])):
        for video in videos:
            make_frame_folder(tmp_path / cls / video, 4)
    make_frame_folder(tmp_path / "apply_eye_makeup" / "b0", 4)
    train, val, test = tmp_path / "train.txt", tmp_path / "val.txt", tmp_path / "test.txt"
    write_lines(train, ["ApplyEyeMakeup/a0", "ApplyEyeMakeup/a1", "waving/w0", "waving/w1"])
    write_lines(val, ["waving/w1", "running/r0"])  # w1: the same video in train and val
    write_lines(test, ["apply_eye_makeup/b0"])  # the same class as train's, written another way
    out = tmp_path / "m.jsonl"

    result = run_prepare("--split", train, val, test, "--out", out, "--no-progress")

    assert result.returncode == 0, result.stderr
    assert "warning: classes in more than one split" in result.stderr
    assert "  train and val share 1 class(es): 'waving'\n" in result.stderr
    assert "  train and test share 1 class(es): 'ApplyEyeMakeup' / 'apply_eye_makeup'\n" in result.stderr
    assert "val and test" not in result.stderr
    assert f"  train and val share 1 video(s): {os.path.realpath(tmp_path / 'waving' / 'w1')}" in result.stderr

    # Official lists without class names name classes by per-split label ids: those never count as shared.
    for split in ("train", "test"):
        make_frame_folder(tmp_path / "flat" / f"{split}_v", 4)
        write_lines(tmp_path / "flat" / f"{split}list.txt", [f"{split}_v 4 0"])
    lists = [tmp_path / "flat" / f"{split}list.txt" for split in ("train", "test")]
    result = run_prepare("--split", *lists, "--out", out, "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "more than one split" not in result.stderr
