"""What a user reads: one line for each warning and refusal, no third-party noise (issue 12, items 7, 8, 11, 12).

The commands run as real subprocesses, so stderr is exactly what a user sees.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from taskadapter_fast import create_model
from taskadapter_fast.checkpoint import save_adapters
from taskadapter_fast.config import ModelConfig, load_config_file, parse_override, resolve_model_config
from taskadapter_fast.data.corpus import load_corpus, save_corpus
from taskadapter_fast.data.synthetic import make_synthetic_dataset
from taskadapter_fast.runconfig import RunConfig, resolve_run_config

SYNTHETIC = {"videos_per_class": 3, "min_frames": 16, "max_frames": 21, "size": 32}
REPO = Path(__file__).resolve().parents[1]
RANDOM_WEIGHTS = "has random weights"  # the one line saying the backbone was never given pretrained weights

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _run(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    # Offline: a command that tried to download CLIP weights fails at once instead of reaching the network.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, env=env, timeout=300)


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A synthetic dataset, a support folder of it, a corpus with a repeated key and a tiny trained-like checkpoint."""
    folder = tmp_path_factory.mktemp("messages")
    dataset = make_synthetic_dataset(root=folder / "synthetic", **SYNTHETIC)
    support, queries = folder / "support", []
    for class_dir in sorted(dataset.video_dirs["test"].iterdir()):
        videos = sorted(class_dir.glob("*.webm"))
        (support / class_dir.name).mkdir(parents=True)
        for video in videos[:2]:
            shutil.copy(video, support / class_dir.name / video.name)
        queries.append(videos[2])
    corpus = load_corpus(dataset.corpus)
    repeated = folder / "repeated.yml"  # every class once, the first one twice (as in the published UCF101 file)
    save_corpus(corpus, repeated)
    first = next(iter(corpus))
    save_corpus({first: corpus[first]}, folder / "one.yml")
    repeated.write_text(repeated.read_text() + "\n" + (folder / "one.yml").read_text())
    run = RunConfig.from_dict(
        {
            "model": {"clip_model": "taf-tiny-ViT", "pretrained": None, "adapter_layers": 2, "text_adapter_layers": 1},
            "data": {"dataset": "synthetic", "root": str(dataset.root), "synthetic": SYNTHETIC, "decoder": "pyav"},
            "train": {"seed": 3, "test_episodes": 1},
        }
    )
    model = create_model(run.model)
    checkpoint = save_adapters(model, folder / "best.safetensors", {"run_config": run.to_json()})
    return {"folder": folder, "support": support, "queries": queries, "repeated": repeated, "checkpoint": checkpoint}


# ------------------------------------------------------------------------- item 7: --preset beside our checkpoint
def test_a_preset_that_conflicts_with_our_checkpoint_is_refused_before_any_download(setup):
    result = _run("-m", "taskadapter_fast.evaluate", "--checkpoint", setup["checkpoint"], "--preset", "hmdb51")
    assert result.returncode != 0
    lines = _lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "preset 'hmdb51' conflicts with the model config stored in" in lines[0]
    assert "clip_model='ViT-B-16' (stored: 'taf-tiny-ViT')" in lines[0]
    assert "cannot load CLIP weights" not in result.stderr  # refused before the (offline) download was tried


def test_a_preset_that_agrees_with_our_checkpoint_changes_nothing(setup):
    stored = create_model(checkpoint=setup["checkpoint"])
    again = create_model("tiny", checkpoint=setup["checkpoint"])
    assert again.config == stored.config
    with pytest.raises(ValueError, match=r"preset 'demo' conflicts .*clip_model='taf-demo-ViT'"):
        create_model("demo", checkpoint=setup["checkpoint"])
    with pytest.raises(ValueError, match=r"the given config conflicts .*adapter_layers=4 \(stored: 2\)"):
        create_model({"adapter_layers": 4}, checkpoint=setup["checkpoint"])


# ------------------------------------------------------------------ items 8, 12a: one line about random weights
def test_evaluate_warns_once_in_one_line_about_a_random_backbone(setup):
    result = _run("-m", "taskadapter_fast.evaluate", "--checkpoint", setup["checkpoint"], "--episodes", "1",
                  "--no-progress")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "WARNING:root:" not in result.stderr and "initialized randomly" not in result.stderr
    lines = _lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith("warning: backbone taf-tiny-ViT has random weights"), lines


def test_predict_warns_once_and_a_repeated_corpus_key_is_one_line(setup):
    result = _run("-m", "taskadapter_fast.predict", "--checkpoint", setup["checkpoint"], "--support", setup["support"],
                  "--corpus", setup["repeated"], "--decoder", "pyav", "--json", "--no-progress",
                  setup["queries"][0])  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[0])["predicted"]  # JSON lines, one per query
    assert "WARNING:root:" not in result.stderr and "UserWarning" not in result.stderr
    lines = _lines(result.stderr)
    assert sum(RANDOM_WEIGHTS in line for line in lines) == 1, lines
    repeated = [line for line in lines if "repeated class keys" in line]
    assert len(repeated) == 1 and repeated[0].startswith(str(setup["repeated"])), lines
    assert len(lines) == 2, lines  # nothing else: no line of Python source under the corpus warning


def test_no_warning_when_the_backbone_has_pretrained_weights(tmp_path):
    code = (
        "import sys, torch, taskadapter_fast as taf; from taskadapter_fast.model.backbone import build_clip\n"
        "torch.save(build_clip('taf-tiny-ViT').state_dict(), sys.argv[1])\n"
        "taf.create_model('tiny', pretrained=sys.argv[1])\n"
    )
    result = _run("-c", code, tmp_path / "clip.pt")
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr  # build_clip alone says nothing; weights loaded: no warning


# --------------------------------------------------------------- item 11: random init of a preset, from anywhere
def test_pretrained_false_or_none_gives_a_random_backbone(tmp_path):
    assert resolve_model_config("ssv2_small").pretrained == "openai"
    assert resolve_model_config("ssv2_small", pretrained=False).pretrained is None
    for text in ("model.pretrained=none", "model.pretrained=None", "model.pretrained=false", "model.pretrained=null"):
        assert resolve_run_config("ssv2_small", overrides=[text, "data.dataset=synthetic"]).model.pretrained is None
        parts, value = parse_override(text)
        assert resolve_model_config("ssv2_small", **{parts[1]: value}).pretrained is None
    config_file = tmp_path / "random.yaml"
    config_file.write_text("model:\n  pretrained: none\ndata:\n  dataset: synthetic\n")
    assert RunConfig.from_dict(load_config_file(config_file)).model.pretrained is None
    assert ModelConfig(pretrained="none").pretrained is None
    assert resolve_model_config("ssv2_small", pretrained="/data/ViT-B-16.pt").pretrained == "/data/ViT-B-16.pt"
    # The preset's settings with a random backbone (tiny here, so that the test builds it in a second).
    model = create_model("ssv2_small", pretrained=False, clip_model="taf-tiny-ViT", adapter_layers=2)
    assert model.config.pretrained is None and model.config.text_adapter_layers == 2


# ------------------------------------------------------------------------- item 12b: --preset tiny runs as is
def test_the_tiny_preset_runs_without_more_settings(tmp_path):
    config = resolve_run_config("tiny")
    assert config.data.dataset == "synthetic"
    # The preset's own dataset (only its generation shrunk, to keep the test short), its own model and train settings.
    small = ["data.synthetic.videos_per_class=3", "data.synthetic.min_frames=8", "data.synthetic.max_frames=10",
             "data.synthetic.size=32", "data.synthetic.distractors=0", f"data.root={tmp_path / 'data'}",
             "train.episodes_per_epoch=4", "train.epochs=1", "train.val_episodes=1",
             "train.test_episodes=1"]  # fmt: skip
    result = _run("-m", "taskadapter_fast.train", "--preset", "tiny", "--output-dir", tmp_path / "run",
                  "--no-progress", *small)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "test accuracy (trained" in result.stdout + result.stderr
    assert sum(RANDOM_WEIGHTS in line for line in _lines(result.stderr)) == 1
    assert "WARNING:root:" not in result.stderr


# ------------------------------------------------------------------------- item 12c: the corpus layout, shown
def test_the_readme_shows_the_corpus_layout_and_it_loads(tmp_path):
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n(.*?)```", readme, flags=re.S)
    examples = [block for block in blocks if "sub_act_en_li:" in block and "label:" in block]
    assert examples, "the README shows no corpus YAML example"
    path = tmp_path / "example.yml"
    path.write_text(examples[0])
    corpus = load_corpus(path)
    assert corpus and all(len(stages) == 3 for stages in corpus.values())


# ---------------------------------------------------------------- item 12d: no document the user cannot open
def test_code_and_help_texts_cite_no_missing_document():
    cited = [
        f"{path.relative_to(REPO)}:{number}"
        for folder in ("taskadapter_fast", "kernels")  # kernels/ installs as taskadapter_fast.kernels
        for path in sorted((REPO / folder).rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if re.search(r"\bSPEC\b|DESIGN\.md", line)
    ]
    assert not cited, cited
    commands = [["train"], ["evaluate"], ["predict"], ["corpus", "generate"], ["corpus", "fetch"], ["data", "prepare"]]
    for command in commands:
        result = _run("-m", "taskadapter_fast.cli", *command, "--help")
        assert result.returncode == 0, result.stderr
        documents = set(re.findall(r"[\w./-]+\.md\b", result.stdout))
        assert documents <= {"docs/method.md"} and "§" not in result.stdout.replace("docs/method.md §", ""), command


# --------------------------------------------------------------- item 12f: not a torch file, in one line
def test_a_text_file_starting_with_pk_is_not_a_readable_torch_checkpoint(tmp_path):
    fake = tmp_path / "model.pth"
    fake.write_text("PK but only text, no zip archive\n")
    result = _run("-m", "taskadapter_fast.evaluate", "--checkpoint", fake, "--preset", "tiny")
    assert result.returncode != 0
    lines = _lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"error: {fake} is not a readable torch checkpoint"), lines
    assert "weights_only" not in result.stderr and "zip archive" in lines[0]


# --------------------------------------------------------------- item 12g: the validation plot a reader expects
def test_val_accuracy_plot_has_whole_epoch_ticks_and_a_chance_line(tmp_path):
    pytest.importorskip("matplotlib")
    from taskadapter_fast.training.runlog import chance_level, val_accuracy_figure, write_plots

    (tmp_path / "config.yaml").write_text(RunConfig.from_dict({"data": {"dataset": "synthetic", "n_way": 4}}).to_yaml())
    rows = [{"kind": "val", "episode": 10 * e, "epoch": e, "accuracy": 30.0 + e, "ci95": 2.0} for e in (1, 2, 3)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert chance_level(tmp_path) == 25.0
    assert chance_level(tmp_path / "nowhere") is None
    figure = val_accuracy_figure(rows, chance_level(tmp_path))
    ax = figure.axes[0]
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks
    chance = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert len(chance) == 1 and set(chance[0].get_ydata()) == {25.0}
    assert "chance (25 %)" in [text.get_text() for text in ax.get_legend().get_texts()]
    import matplotlib.pyplot as plt

    plt.close(figure)
    assert [path.name for path in write_plots(tmp_path)] == ["curves.png", "val_accuracy.png"]
    assert (tmp_path / "val_accuracy.png").stat().st_size > 0
