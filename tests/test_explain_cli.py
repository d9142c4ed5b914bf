"""`predict --explain DIR` on real H.264 files and `evaluate --explain DIR --explain-episodes K`: the reports
explain the very predictions the commands print."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest
import torch
from helpers import randomize_adapters, run_main, write_video

from taskadapter_fast import create_model
from taskadapter_fast.checkpoint import save_adapters
from taskadapter_fast.data.corpus import load_corpus
from taskadapter_fast.data.episodes import EpisodeLoader
from taskadapter_fast.data.splits import read_split
from taskadapter_fast.data.synthetic import make_synthetic_dataset
from taskadapter_fast.evaluate import main as evaluate_main
from taskadapter_fast.evaluation import evaluate
from taskadapter_fast.evaluation.explained import explain_episodes
from taskadapter_fast.inference import predict
from taskadapter_fast.predict import main as predict_main
from taskadapter_fast.runconfig import RunConfig

SYNTHETIC = {"videos_per_class": 3, "min_frames": 16, "max_frames": 21, "size": 32}
SEED, EVAL_SEED = 4, 7

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _to_h264(source, target) -> None:
    """Re-encode a video as H.264 (a real .mp4 PyAV writes)."""
    with av.open(str(source)) as container:
        frames = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])
    write_video(target, "h264", frames)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("explain")
    dataset = make_synthetic_dataset(root=folder / "synthetic", **SYNTHETIC)
    support, queries = folder / "support", []
    for class_dir in sorted(dataset.video_dirs["test"].iterdir())[:3]:
        videos = sorted(class_dir.glob("*.webm"))
        (support / class_dir.name).mkdir(parents=True)
        for video in videos[:2]:
            _to_h264(video, support / class_dir.name / f"{video.stem}.mp4")
        queries.append(folder / f"query {class_dir.name}.mp4")
        _to_h264(videos[2], queries[-1])
    run = RunConfig.from_dict(
        {
            "model": {"clip_model": "taf-tiny-ViT", "pretrained": None, "adapter_layers": 2, "text_adapter_layers": 1},
            "data": {"dataset": "synthetic", "root": str(dataset.root), "synthetic": SYNTHETIC, "decoder": "pyav"},
            "train": {"seed": SEED, "eval_seed": EVAL_SEED, "test_episodes": 3},
        }
    )
    torch.manual_seed(SEED)  # as the trainer builds its model: the random backbone follows train.seed
    model = randomize_adapters(create_model(run.model), seed=1, scale=0.2)  # as after some training
    checkpoint = save_adapters(model, folder / "best.safetensors", {"run_config": run.to_json()})
    return {"folder": folder, "dataset": dataset, "support": support, "queries": [str(q) for q in queries],
            "model": model, "checkpoint": checkpoint, "corpus": dataset.corpus}  # fmt: skip


def test_predict_explain_on_h264_files_explains_the_printed_predictions(setup, tmp_path):
    out = tmp_path / "report"
    queries = setup["queries"]
    done = run_main(predict_main, "--checkpoint", str(setup["checkpoint"]), "--support", str(setup["support"]),
                    "--corpus", str(setup["corpus"]), "--decoder", "pyav", "--json", "--no-progress",
                    "--explain", str(out), *queries)  # fmt: skip
    assert done.returncode == 0, done.stderr
    printed = [json.loads(line) for line in done.stdout.splitlines()]
    assert [row["query"] for row in printed] == queries and all("explanation" not in row for row in printed)
    plain = predict(setup["model"], setup["support"], queries, load_corpus(setup["corpus"]), decoder="pyav")
    assert [row["scores"] for row in printed] == [row["scores"] for row in plain]  # explaining changes nothing
    page = (out / "index.html").read_text()
    assert all(json.dumps(q)[1:-1].split("/")[-1] in page for q in queries)
    assert len(sorted(out.glob("*.png"))) == len(queries)
    assert f"wrote {out / 'index.html'}" in done.stderr


def test_predict_explanations_hold_the_scores_of_each_result(setup):
    corpus = load_corpus(setup["corpus"])
    model, support, queries = setup["model"], setup["support"], setup["queries"]
    alone = predict(model, support, queries, corpus, decoder="pyav", explain={"rollout": True})
    for row in alone:
        explanation = row["explanation"]
        assert explanation.num_queries == 1 and explanation.query_names == [row["query"]] and explanation.inductive
        assert explanation.rollout is not None and explanation.static_stage_similarity is None
        assert dict(zip(explanation.class_names, explanation.scores[0].tolist(), strict=True)) == row["scores"]
        assert explanation.class_names[int(explanation.predictions[0])] == row["predicted"]
    together = predict(model, support, queries, corpus, decoder="pyav", transductive=True, explain={})
    shared = together[0]["explanation"]
    assert all(row["explanation"] is shared for row in together) and shared.num_queries == len(queries)
    assert shared.task_attention.shape[-1] == len(queries) and not shared.inductive
    for q, row in enumerate(together):
        assert dict(zip(shared.class_names, shared.scores[q].tolist(), strict=True)) == row["scores"]


def test_explain_flags_are_checked_before_anything_loads(setup, tmp_path):
    common = ["--checkpoint", str(setup["checkpoint"]), "--support", str(setup["support"]), "--corpus",
              str(setup["corpus"]), setup["queries"][0]]  # fmt: skip
    done = run_main(predict_main, *common, "--rollout", "--static-prompt")
    assert done.returncode == 2 and "--rollout and --static-prompt only apply with --explain DIR" in done.stderr
    a_file = tmp_path / "taken"
    a_file.write_text("")
    done = run_main(predict_main, *common, "--explain", str(a_file))
    assert done.returncode == 2 and f"--explain {a_file}: not a folder" in done.stderr
    done = run_main(evaluate_main, "--checkpoint", str(setup["checkpoint"]), "--explain-episodes", "2")
    assert done.returncode == 2 and "--explain-episodes only apply with --explain DIR" in done.stderr


def test_evaluate_explain_reports_the_first_episodes_as_evaluated(setup, tmp_path):
    out, output = tmp_path / "report", tmp_path / "result.json"
    done = run_main(evaluate_main, "--checkpoint", str(setup["checkpoint"]), "--no-progress", "--output", str(output),
                    "--explain", str(out), "--explain-episodes", "2")  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(output.read_text())
    assert report["explain"]["episodes"] == [0, 1] and report["explain"]["queries"] == 10  # 5-way, 1 query a class
    # The explained predictions are the evaluated ones: as many wrong as the first two episodes' accuracies say.
    wrong = sum(round((100 - accuracy) / 100 * 5) for accuracy in report["per_episode"][:2])
    assert report["explain"]["wrong"] == wrong
    assert (out / "index.html").is_file() and len(sorted(out.glob("*.png"))) == 10
    assert f"{wrong} wrong" in done.stdout


def test_explained_episode_scores_equal_the_evaluation_scores(setup):
    dataset, model = setup["dataset"], setup["model"]
    loader = EpisodeLoader(read_split(dataset.split_files["test"]), 5, 1, 1, num_frames=8, image_size=32,
                           train=False, seed=EVAL_SEED, decoder="pyav")  # fmt: skip
    corpus = load_corpus(dataset.corpus)
    for inductive in (False, True):
        result = evaluate(model, loader, range(2), corpus, inductive=inductive, keep_scores=True, progress=False)
        explained = explain_episodes(model, loader, result.plans, corpus, inductive=inductive, progress=False)
        for scores, explanation, plan in zip(result.scores, explained, result.plans, strict=True):
            torch.testing.assert_close(explanation.scores.cpu(), scores, rtol=0, atol=1e-6)
            assert explanation.query_labels.tolist() == plan.query_labels.tolist()
            assert explanation.query_names[0].startswith(f"episode {plan.index}, query 1: ")
