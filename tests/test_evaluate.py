"""`python -m taskadapter_fast.evaluate`: real subprocesses on a tiny adapter checkpoint saved here."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from taskadapter_fast import create_model
from taskadapter_fast.checkpoint import save_adapters, save_official_state
from taskadapter_fast.data.corpus import load_corpus
from taskadapter_fast.data.episodes import EpisodeLoader
from taskadapter_fast.data.splits import read_split
from taskadapter_fast.data.synthetic import make_synthetic_dataset
from taskadapter_fast.evaluate import main
from taskadapter_fast.evaluation import evaluate
from taskadapter_fast.runconfig import RunConfig

SYNTHETIC = {"videos_per_class": 3, "min_frames": 16, "max_frames": 21, "size": 32}
TRAIN_SEED, EVAL_SEED = 3, 11


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _trained_like(model):
    """Adapters as after some training: non-zero everywhere, so predictions are not all ties."""
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for parameter in model.trainable_parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("evaluate")
    dataset = make_synthetic_dataset(root=folder / "synthetic", **SYNTHETIC)
    run = RunConfig.from_dict(
        {
            "model": {"clip_model": "taf-tiny-ViT", "pretrained": None, "adapter_layers": 2, "text_adapter_layers": 1},
            "data": {"dataset": "synthetic", "root": str(dataset.root), "synthetic": SYNTHETIC, "decoder": "pyav"},
            "train": {"seed": TRAIN_SEED, "eval_seed": EVAL_SEED, "test_episodes": 3},
        }
    )
    torch.manual_seed(TRAIN_SEED)  # as the trainer builds its model: the random backbone follows train.seed
    model = _trained_like(create_model(run.model))
    checkpoint = save_adapters(model, folder / "best.safetensors", {"run_config": run.to_json()})
    plain = save_adapters(model, folder / "plain.safetensors")  # no run config: data from flags
    return {"folder": folder, "dataset": dataset, "model": model, "checkpoint": checkpoint, "plain": plain, "run": run}


def _cli(*args, check=True):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # see _one_torch_thread
    process = subprocess.run(
        [sys.executable, "-m", "taskadapter_fast.evaluate", *map(str, args)], capture_output=True, text=True, env=env
    )
    if check:
        assert process.returncode == 0, process.stderr
    return process


def test_checkpoint_alone_retests_and_episodes_replay_identically(setup):
    folder = setup["folder"]
    first = _cli("--checkpoint", setup["checkpoint"], "--output", folder / "o1.json",
                 "--save-episodes", folder / "episodes.json", "--no-progress")  # fmt: skip
    assert "±" in first.stdout and "3 episodes" in first.stdout
    report = json.loads((folder / "o1.json").read_text())
    assert report["episodes"] == 3 and len(report["per_episode"]) == 3
    assert report["seed"] == EVAL_SEED and (report["n_way"], report["n_shot"], report["n_query"]) == (5, 1, 1)
    assert {"accuracy", "ci95", "per_episode"} <= set(report)

    # The same numbers in-process: the stored run config rebuilt the same backbone, data and episodes.
    dataset = setup["dataset"]
    loader = EpisodeLoader(read_split(dataset.split_files["test"]), 5, 1, 1, num_frames=8, image_size=32,
                           train=False, seed=EVAL_SEED, decoder="pyav")  # fmt: skip
    expected = evaluate(setup["model"], loader, range(3), load_corpus(dataset.corpus), progress=False)
    assert report["per_episode"] == expected.per_episode
    assert report["accuracy"] == pytest.approx(expected.accuracy) and report["ci95"] == pytest.approx(expected.ci95)

    _cli("--checkpoint", setup["checkpoint"], "--episodes-file", folder / "episodes.json",
         "--output", folder / "o2.json", "--no-progress")  # fmt: skip
    replay = json.loads((folder / "o2.json").read_text())
    assert replay["per_episode"] == report["per_episode"] and replay["episode_ids"] == report["episode_ids"]

    # The same videos listed in another order: the saved row numbers would name other videos.
    test_split = dataset.split_files["test"]
    reordered = folder / "test_reordered.txt"
    reordered.write_text("".join(reversed(test_split.read_text().splitlines(keepends=True))))
    refused = _cli("--checkpoint", setup["checkpoint"], "--episodes-file", folder / "episodes.json",
                   "--split", reordered, "--root", dataset.root, "--corpus", dataset.corpus, "--no-progress",
                   check=False)  # fmt: skip
    assert refused.returncode != 0 and "lists other files or another order" in refused.stderr, refused.stderr


def test_explicit_split_inductive_and_no_cache(setup, capsys):
    folder, dataset = setup["folder"], setup["dataset"]
    common = ["--checkpoint", setup["plain"], "--split", dataset.split_files["test"], "--corpus", dataset.corpus,
              "--way", 3, "--shot", 1, "--query", 2, "--episodes", 2, "--seed", 4, "--decoder", "pyav",
              "--no-progress"]  # fmt: skip
    assert main([*map(str, common), "--output", str(folder / "cached.json")]) == 0
    assert main([*map(str, common), "--no-cache", "--output", str(folder / "plain.json")]) == 0
    assert main([*map(str, common), "--inductive", "--output", str(folder / "inductive.json")]) == 0
    cached, plain, inductive = (
        json.loads((folder / f"{n}.json").read_text()) for n in ("cached", "plain", "inductive")
    )
    assert (cached["n_way"], cached["n_query"], cached["episodes"], cached["seed"]) == (3, 2, 2, 4)
    assert cached["per_episode"] == plain["per_episode"]
    assert cached["cache"] and not plain["cache"] and inductive["inductive"] and not cached["inductive"]
    assert "3-way 1-shot" in capsys.readouterr().out

    official = folder / "official.pth"  # the official implementation's layout: {'epoch', 'state'}, CLIP included
    torch.save({"epoch": 1, "state": save_official_state(setup["model"])}, official)
    args = ["--checkpoint", official, "--preset", "tiny", "--split", dataset.split_files["test"],
            "--corpus", dataset.corpus, "--episodes", 1, "--decoder", "pyav", "--no-progress",
            "--output", folder / "official.json"]  # fmt: skip
    assert main([str(arg) for arg in args]) == 0
    assert json.loads((folder / "official.json").read_text())["episodes"] == 1


def test_nway_curve_writes_a_plot(setup):
    folder = setup["folder"]
    plot = folder / "curve.png"
    code = main(["--checkpoint", str(setup["checkpoint"]), "--nway-curve", "2,3", "--episodes", "2",
                 "--plot", str(plot), "--output", str(folder / "curve.json"), "--no-progress"])  # fmt: skip
    assert code == 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    points = json.loads((folder / "curve.json").read_text())["nway_curve"]
    assert [p["n_way"] for p in points] == [2, 3] and all(p["episodes"] == 2 for p in points)


def test_a_run_that_tested_nothing_is_tested_with_the_default_count(setup, tmp_path, monkeypatch, capsys):
    import taskadapter_fast.evaluate as evaluate_module

    tree = setup["run"].to_dict()
    tree["train"]["test_episodes"] = 0  # trained with train.test_episodes=0, to be tested separately
    checkpoint = save_adapters(setup["model"], tmp_path / "untested.safetensors", {"run_config": json.dumps(tree)})
    monkeypatch.setattr(evaluate_module, "DEFAULT_EPISODES", 2)  # 10,000 in earnest
    assert main(["--checkpoint", str(checkpoint), "--no-progress", "--output", str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["episodes"] == 2


def test_official_compat_says_what_it_does_where_it_is_used(setup, tmp_path, capsys):
    out = tmp_path / "compat.json"
    args = ["--checkpoint", str(setup["checkpoint"]), "--episodes", "1", "--no-progress", "--output", str(out)]
    with pytest.warns(UserWarning, match="official_compat=True"):
        assert main([*args, "model.official_compat=true"]) == 0
    assert "note: official_compat=True" in capsys.readouterr().err
    assert "query order leaks the label" in json.loads(out.read_text())["official_compat_note"]


def test_bad_input_fails_in_one_line(setup, tmp_path, capsys):
    missing = _cli("--checkpoint", tmp_path / "nope.safetensors", check=False)
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
    assert missing.stderr.strip().startswith("error:") and len(missing.stderr.strip().splitlines()) == 1
    assert "nope.safetensors" in missing.stderr

    garbage = tmp_path / "episodes.json"
    garbage.write_text("{not json")
    cases = [
        (["--episodes-file", str(garbage)], "not an episodes file"),
        (["--episodes-file", str(garbage), "--shot", "5", "--seed", "3"], "drop --seed, --shot"),
        (["--way", "9", "--episodes", "1"], "n_way = 9"),
        (["data.no_such_key=1"], "unknown config key(s) data.no_such_key"),
        (["data.n_way=abc"], "data.n_way must be an integer"),
        (["data.n_shot=2.7"], "data.n_shot must be an integer"),
        (["data.dataset=xyz"], "data.dataset must be one of"),
        (["--cache-gb", "nan"], "--cache-gb must be > 0"),
    ]
    for extra, reason in cases:
        assert main(["--checkpoint", str(setup["checkpoint"]), "--no-progress", *extra]) != 0
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and reason in err and len(err.splitlines()) == 1, err
    with pytest.raises(SystemExit) as exit_info:  # argparse: exit status 2, one line
        main(["--checkpoint", str(setup["checkpoint"]), "--episodes", "0"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "--episodes must be >= 1" in err and len(err.splitlines()) == 1


def test_traceback_switch_lets_errors_propagate(setup, tmp_path, monkeypatch):
    monkeypatch.setenv("TAF_TRACEBACK", "1")
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        main(["--checkpoint", str(tmp_path / "nope.safetensors"), "--no-progress"])
