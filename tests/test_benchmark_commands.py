"""One `train` command per benchmark: `fetch-splits` from a loopback copy of the published files prints it, its
only paths are the video root and the split folder (`data.split_dir`), and it resolves to the folder's three
lists, the shipped class order of index-only lists and the corpus beside them. The README shows the same commands.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from helpers import run_main, small_overrides

from taskadapter_fast.class_orders import load
from taskadapter_fast.data.__main__ import main
from taskadapter_fast.data.setup import read_splits
from taskadapter_fast.data.splits import SplitFormatError
from taskadapter_fast.data.splits_fetch import PUBLISHED_CORPORA, PUBLISHED_SPLITS
from taskadapter_fast.runconfig import resolve_run_config

REPO = Path(__file__).resolve().parents[1]
SPLITS = ("train", "val", "test")
FULL = load("clipfsar:ssv2_full")
SMALL = load("clipfsar:ssv2_small")

# (source, dataset) -> per split: (lines in the source's published format, the class names they must read as)
PUBLISHED = {
    ("trx", "hmdb51"): {
        "train": (["brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0"], ["brush_hair"]),
        "val": (["cartwheel/Ein_guter_Radschlag_cartwheel_f_nm_np1_le_med_4"], ["cartwheel"]),
        "test": (["fencing/AHF_Rapier_fencing_f_cm_np2_le_bad_1"], ["fencing"]),
    },
    ("trx", "ucf101"): {
        "train": (["ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01"], ["ApplyEyeMakeup"]),
        "val": (["ApplyLipstick/v_ApplyLipstick_g01_c01"], ["ApplyLipstick"]),
        "test": (["BlowingCandles/v_BlowingCandles_g01_c01"], ["BlowingCandles"]),
    },
    ("trx", "kinetics"): {
        "train": (["air drumming/-VtLx-mcPds_000012_000022"], ["air drumming"]),
        "val": (["trimming or shaving beard/-0Tk8Y0yZ9U_000010_000020"], ["trimming or shaving beard"]),
        "test": (["blasting sand/-kYzxMKp514_000086_000096"], ["blasting sand"]),
    },
    ("trx", "ssv2_small"): {
        "train": (["Pouring something into something/51958"], ["Pouring something into something"]),
        "val": (["Lifting something up completely without letting it drop down/46768"], [SMALL["val"][0]]),
        "test": (
            ["Twisting (wringing) something wet until water comes out/88644"],
            ["Twisting (wringing) something wet until water comes out"],
        ),
    },
    ("trx", "ssv2_full"): {  # index-only (TRX's OTAM lists are CLIP-FSAR's files); val named by name-classes
        "train": (["train8/78687", "train50/42326"], [FULL["train"][8], FULL["train"][50]]),
        "val": (["val1/188509", "val0/154368"], ["Closing [something]", "Opening [something]"]),
        "test": (["test18/195025"], [FULL["test"][18]]),
    },
    ("official", "hmdb51"): {  # the authors' lists: another machine's folders, a zero-frame line, global label ids
        "train": (
            [
                "/mnt/sdd/u/datasets/hmdb51/frames/April_09_brush_hair_u_nm_np1_ba_goo_0 405 0",
                "/mnt/sdd/u/datasets/hmdb51/frames/[HD]_Brushing_brush_hair_f_cm_np1_fr_med_0 0 0",
            ],
            ["brush hair"],
        ),
        "val": (
            ["/mnt/sdd/u/datasets/hmdb51/frames/Ein_guter_Radschlag_cartwheel_f_nm_np1_le_med_4 76 31"],
            ["cartwheel"],
        ),
        "test": (["/mnt/sdd/u/datasets/hmdb51/frames/AHF_Rapier_fencing_f_cm_np2_le_bad_1 50 41"], ["fencing"]),
    },
    ("clipfsar", "ssv2_small"): {  # index-only; its val order is the derived one
        "train": (["train0/51958"], [SMALL["train"][0]]),
        "val": (["val0/46768", "val11/8330"], [SMALL["val"][0], SMALL["val"][11]]),
        "test": (["test0/88644"], [SMALL["test"][0]]),
    },
    ("clipfsar", "kinetics"): {  # class indices, and paths whose folders name the val classes
        "train": (
            ["train0//train_256/air_drumming/-VtLx-mcPds_000012_000022.mp4"],
            [load("clipfsar:kinetics")["train"][0]],
        ),
        "val": (
            ["val0//val_256/baking_cookies/-514AQUrSow.mp4", "val1//val_256/crossing_river/ZVdAl-yh9m0.mp4"],
            ["baking_cookies", "crossing_river"],
        ),
        "test": (
            ["test0//train_256/blasting_sand/-kYzxMKp514_000086_000096.mp4"],
            [load("clipfsar:kinetics")["test"][0]],
        ),
    },
}
# The SSv2 download's annotations (labels/train.json: a list of {"id", "label", "template", "placeholders"}).
SSV2_ANNOTATIONS = [
    {"id": "188509", "label": "closing a box", "template": "Closing [something]", "placeholders": ["a box"]},
    {"id": "154368", "label": "opening a jar", "template": "Opening [something]", "placeholders": ["a jar"]},
]


def _serve(site: Path, source: str, dataset: str) -> None:
    for split, path in zip(SPLITS, PUBLISHED_SPLITS[(source, dataset)], strict=True):
        (site / path).parent.mkdir(parents=True, exist_ok=True)
        (site / path).write_text("".join(f"{line}\n" for line in PUBLISHED[(source, dataset)][split][0]))


def _fetch(file_server, tmp_path: Path, source: str, dataset: str, out: Path):
    site, base = file_server
    _serve(site, source, dataset)
    result = run_main(
        main, "fetch-splits", "--dataset", dataset, "--source", source, "--out", str(out), "--base-url", base
    )
    assert result.returncode == 0, result.stderr
    return result


def _commands(stdout: str) -> list[list[str]]:
    return [shlex.split(line) for line in stdout.splitlines() if line.startswith("python -m ")]


@pytest.mark.parametrize(("source", "dataset"), list(PUBLISHED))
def test_the_printed_train_command_resolves_to_the_folders_lists_order_and_corpus(
    tmp_path, file_server, source, dataset
):
    out = tmp_path / "splits" / dataset
    result = _fetch(file_server, tmp_path, source, dataset, out)
    commands = _commands(result.stdout)
    train = commands[-1]
    assert train == [
        "python",
        "-m",
        "taskadapter_fast.train",
        "--preset",
        dataset,
        "data.root=VIDEO_ROOT",
        f"data.split_dir={out}",
    ]
    corpus = out / PUBLISHED_CORPORA[dataset]
    assert commands[0] == [
        "python",
        "-m",
        "taskadapter_fast.corpus",
        "fetch",
        "--dataset",
        dataset,
        "--out",
        str(corpus),
    ]
    corpus.write_text("stand-in: resolving only checks the file is there\n")
    if dataset == "ssv2_full":  # the printed name-classes step, run on annotations the test writes
        (name_classes,) = [words for words in commands if words[3:4] == ["name-classes"]]
        labels = tmp_path / "ssv2" / "labels"
        labels.mkdir(parents=True)
        (labels / "train.json").write_text(json.dumps(SSV2_ANNOTATIONS))
        (labels / "validation.json").write_text("[]")
        args = [word.replace("SSV2_LABELS", str(labels)) for word in name_classes[3:]]
        assert run_main(main, *args).returncode == 0
        assert (out / "val_class_names.txt").read_text() == "Opening [something]\nClosing [something]\n"
    if dataset in ("kinetics", "ssv2_full"):  # the authors' corpus lacks classes: the printed generate --into step
        (gaps,) = [words for words in commands if words[3:4] == ["generate"]]
        assert gaps[gaps.index("--into") + 1] == str(corpus)

    config = resolve_run_config(dataset, None, train[5:])
    paths = dict(zip(SPLITS, PUBLISHED_SPLITS[(source, dataset)], strict=True))
    for split in SPLITS:
        assert getattr(config.data, f"{split}_split") == str(out / Path(paths[split]).name)
    index_only = source != "trx" or dataset == "ssv2_full"
    assert config.data.class_names == (f"{source}:{dataset}" if index_only else None)
    assert config.data.corpus == str(corpus) and config.data.root == "VIDEO_ROOT"
    config.data.root = str(tmp_path / "videos")  # read_split resolves paths; nothing needs to be there
    data = read_splits(config.data)
    for split in SPLITS:
        names = [row.class_name for row in sorted(data.rows[split], key=lambda row: row.line)]
        assert names == PUBLISHED[(source, dataset)][split][1], split


def test_a_folder_without_sources_json_names_the_file_and_the_command(tmp_path):
    lists = tmp_path / "my_lists"
    lists.mkdir()
    with pytest.raises(FileNotFoundError) as error:
        resolve_run_config("hmdb51", None, [f"data.split_dir={lists}", "data.root=/videos"])
    message = str(error.value)
    assert str(lists / "sources.json") in message
    assert f"python -m taskadapter_fast.data fetch-splits --dataset D --source S --out {lists}" in message
    assert "data.train_split=FILE" in message


def test_a_preset_of_another_benchmark_is_refused(tmp_path, file_server):
    out = tmp_path / "ssv2_small"
    _fetch(file_server, tmp_path, "trx", "ssv2_small", out)
    with pytest.raises(ValueError, match=r"--preset hmdb51 .* holds the ssv2_small lists .* use --preset ssv2_small"):
        resolve_run_config("hmdb51", None, [f"data.split_dir={out}", "data.root=/videos"])


def test_a_missing_corpus_names_the_command_that_fetches_it(tmp_path, file_server):
    out = tmp_path / "hmdb51"
    _fetch(file_server, tmp_path, "trx", "hmdb51", out)
    fetch = f"python -m taskadapter_fast.corpus fetch --dataset hmdb51 --out {out / 'classes_hmdb51.yml'}"
    with pytest.raises(FileNotFoundError, match=re.escape(fetch)):
        resolve_run_config("hmdb51", None, [f"data.split_dir={out}", "data.root=/videos"])
    # a model without sub-action prompts runs without one; explicit settings win over the folder's
    config = resolve_run_config(
        "hmdb51", None, [f"data.split_dir={out}", "data.root=/videos", "model.score=video", "data.test_split=t.txt"]
    )
    assert config.data.corpus is None and config.data.test_split == "t.txt"
    assert config.data.train_split == str(out / "trainlist03.txt")


def test_ssv2_full_without_val_names_says_how_to_give_them(tmp_path, file_server):
    out = tmp_path / "ssv2_full"
    result = _fetch(file_server, tmp_path, "trx", "ssv2_full", out)
    assert "no public source names the ssv2_full val classes" in result.stdout
    (out / "classes_somethingotam.yml").write_text("stand-in\n")
    config = resolve_run_config("ssv2_full", None, [f"data.split_dir={out}", f"data.root={tmp_path}"])
    assert config.data.val_class_names is None
    with pytest.raises(SplitFormatError, match=r"'trx:ssv2_full' has no order for split 'val'.*data.val_class_names="):
        read_splits(config.data)
    # a names file given by hand does the same as the one name-classes writes into the folder
    names = tmp_path / "val_names.txt"
    names.write_text("\n".join(f"class {i}" for i in range(3)) + "\n")
    config = resolve_run_config(
        "ssv2_full", None, [f"data.split_dir={out}", f"data.root={tmp_path}", f"data.val_class_names={names}"]
    )
    assert [row.class_name for row in read_splits(config.data, ["val"]).rows["val"]] == ["class 1", "class 0"]


def test_name_classes_refuses_a_class_no_annotation_names(tmp_path):
    split = tmp_path / "vallist07.txt"
    split.write_text("val0/188509\nval1/999\n")
    annotations = tmp_path / "train.json"
    annotations.write_text(json.dumps(SSV2_ANNOTATIONS))
    result = run_main(
        main, "name-classes", "--split", str(split), "--annotations", str(annotations), "--out", str(tmp_path / "o.txt")
    )
    assert result.returncode == 2
    assert "class index 1 (e.g. video 999)" in result.stderr and not (tmp_path / "o.txt").exists()


def _readme_benchmarks() -> dict[str, list[list[str]]]:
    """The README's benchmark block: its commands, grouped by the dataset of their fetch-splits line."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = readme.split("<!-- benchmarks -->", 2)[1]
    commands: dict[str, list[list[str]]] = {}
    current = None
    for line in block.replace("\\\n", " ").splitlines():
        if line.startswith("python -m "):
            words = shlex.split(line.split("  #")[0])
            if words[3] == "fetch-splits":
                current = words[words.index("--dataset") + 1]
            commands.setdefault(current, []).append(words)
    return commands


def test_the_readme_shows_the_printed_commands_of_the_five_benchmarks(tmp_path, file_server, monkeypatch):
    readme = _readme_benchmarks()
    assert sorted(readme) == sorted(["hmdb51", "ucf101", "kinetics", "ssv2_small", "ssv2_full"])
    monkeypatch.chdir(tmp_path)
    for dataset, shown in readme.items():
        fetch = shown[0]
        source, out = fetch[fetch.index("--source") + 1], fetch[fetch.index("--out") + 1]
        assert source == "trx", dataset  # the README's choice: TRX's lists (see the README's reason)
        printed = _commands(_fetch(file_server, tmp_path, source, dataset, Path(out)).stdout)
        root = shown[-1][5].partition("=")[2]
        expected = [fetch, *printed[:-1], printed[-1][:5] + [f"data.root={root}", printed[-1][6]]]
        # the printed commands, with the README's SSv2 labels folder for the placeholder
        expected = [[word.replace("SSV2_LABELS", "/data/ssv2/labels") for word in words] for words in expected]
        assert shown == expected, dataset


def test_a_tiny_run_trains_from_a_split_folder(tmp_path, file_server):
    """End to end: lists fetched from the loopback server in TRX's format, over synthetic videos."""
    from taskadapter_fast.data.synthetic import make_synthetic_dataset
    from taskadapter_fast.train import main as train_main

    synthetic = make_synthetic_dataset(
        tmp_path / "synthetic", videos_per_class=3, min_frames=8, max_frames=10, size=32, distractors=0
    )
    videos = tmp_path / "videos"  # one folder of class folders, as a TRX list expects
    videos.mkdir()
    site, base = file_server
    for split, path in zip(SPLITS, PUBLISHED_SPLITS[("trx", "hmdb51")], strict=True):
        for name in synthetic.classes[split]:
            (videos / name).symlink_to(synthetic.video_dirs[split] / name)
        lines = [f"{video['class_name']}/{video['id']}" for video in synthetic.videos if video["split"] == split]
        (site / path).parent.mkdir(parents=True, exist_ok=True)
        (site / path).write_text("\n".join(lines) + "\n")
    out = tmp_path / "splits"
    result = run_main(
        main, "fetch-splits", "--dataset", "hmdb51", "--source", "trx", "--out", str(out), "--base-url", base
    )
    assert result.returncode == 0, result.stderr
    (out / "classes_hmdb51.yml").write_bytes(synthetic.corpus.read_bytes())  # what corpus fetch would write
    train = _commands(result.stdout)[-1]
    overrides = [word.replace("VIDEO_ROOT", str(videos)) for word in train[5:]]
    tiny = [o for o in small_overrides(videos) if not o.startswith(("data.synthetic", "data.root"))]
    run_dir = tmp_path / "run"
    code = train_main(
        ["--preset", "tiny", "--output-dir", str(run_dir), "--no-progress", "data.dataset=splits", *tiny, *overrides]
    )
    assert code == 0
    results = json.loads((run_dir / "results.json").read_text())
    assert 0.0 <= results["test_accuracy"] <= 100.0
    assert f"split_dir: {out}" in (run_dir / "config.yaml").read_text()
