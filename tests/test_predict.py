"""`python -m taskadapter_fast.predict` and `predict()`: a user's few-shot classifier on real video files."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import subprocess
import sys
import threading

import pytest
import torch
from helpers import randomize_adapters

from taskadapter_fast import create_model
from taskadapter_fast.checkpoint import save_adapters
from taskadapter_fast.data.corpus import load_corpus
from taskadapter_fast.data.synthetic import make_synthetic_dataset
from taskadapter_fast.inference import classify, predict, support_rows
from taskadapter_fast.predict import main
from taskadapter_fast.runconfig import RunConfig

SYNTHETIC = {"videos_per_class": 3, "min_frames": 16, "max_frames": 21, "size": 32}
TRAIN_SEED = 2


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("predict")
    dataset = make_synthetic_dataset(root=folder / "synthetic", **SYNTHETIC)
    support = folder / "support"
    queries = []
    for class_dir in sorted(dataset.video_dirs["test"].iterdir()):
        videos = sorted(class_dir.glob("*.webm"))
        (support / class_dir.name).mkdir(parents=True)
        for video in videos[:2]:
            shutil.copy(video, support / class_dir.name / video.name)
        queries.append(str(videos[2]))
    run = RunConfig.from_dict(
        {
            "model": {"clip_model": "taf-tiny-ViT", "pretrained": None, "adapter_layers": 2, "text_adapter_layers": 1},
            "data": {"dataset": "synthetic", "synthetic": SYNTHETIC},
            "train": {"seed": TRAIN_SEED},
        }
    )
    torch.manual_seed(TRAIN_SEED)
    model = randomize_adapters(create_model(run.model), seed=1, scale=0.2)  # as after some training
    checkpoint = save_adapters(model, folder / "best.safetensors", {"run_config": run.to_json()})
    classes = sorted(path.name for path in support.iterdir())
    return {"folder": folder, "dataset": dataset, "support": support, "queries": queries, "classes": classes,
            "model": model, "checkpoint": checkpoint}  # fmt: skip


def test_cli_json_matches_the_library_call(setup):
    corpus_path = setup["dataset"].corpus
    queries = setup["queries"][:2]
    process = subprocess.run(
        [sys.executable, "-m", "taskadapter_fast.predict", "--checkpoint", str(setup["checkpoint"]),
         "--support", str(setup["support"]), "--corpus", str(corpus_path), "--decoder", "pyav", "--json", *queries],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},  # see _one_torch_thread
    )  # fmt: skip
    assert process.returncode == 0, process.stderr
    printed = [json.loads(line) for line in process.stdout.splitlines()]  # JSON lines: an object per query
    expected = predict(setup["model"], setup["support"], queries, load_corpus(corpus_path), decoder="pyav")
    assert [r["query"] for r in printed] == queries
    for got, want in zip(printed, expected, strict=True):
        assert got["predicted"] == want["predicted"] and got["predicted"] in setup["classes"]
        assert list(got["scores"]) == setup["classes"]
        assert got["scores"] == pytest.approx(want["scores"], abs=1e-6)
        assert sum(got["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)


def test_each_query_is_classified_alone_unless_transductive(setup):
    corpus = load_corpus(setup["dataset"].corpus)
    model, support, queries = setup["model"], setup["support"], setup["queries"]
    together = predict(model, support, queries[:3], corpus, decoder="pyav")
    alone = predict(model, support, queries[1:2], corpus, decoder="pyav")
    assert alone[0]["scores"] == pytest.approx(together[1]["scores"], abs=1e-6)
    assert predict(model, support, queries[1], corpus, decoder="pyav") == alone  # one path alone, not its letters
    transductive = predict(model, support, queries[:3], corpus, decoder="pyav", transductive=True)
    assert transductive[1]["scores"] != pytest.approx(together[1]["scores"], abs=1e-6)
    was_training = model.training
    for expected in (together, transductive):
        stream = classify(model, support_rows(support), queries[:3], corpus, expected is transductive, "pyav", 2)
        first = next(stream)
        assert torch.is_grad_enabled() and not model.training  # the caller keeps its gradients while it streams
        assert [first, *stream] == expected  # exactly the same, whatever the batch size
        assert model.training == was_training


def test_table_output_and_uneven_shots(setup, tmp_path, capsys, caplog):
    support = tmp_path / "support"
    shutil.copytree(setup["support"], support)
    extra = next(iter(sorted(setup["dataset"].video_dirs["test"].iterdir())))
    shutil.copy(sorted(extra.glob("*.webm"))[2], support / extra.name / "extra.webm")
    (support / extra.name / "notes.txt").write_text("not a video")
    code = main(["--checkpoint", str(setup["checkpoint"]), "--support", str(support),
                 "--corpus", str(setup["dataset"].corpus), "--decoder", "pyav", setup["queries"][0]])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert f"{setup['queries'][0]}  ->  " in out and "prob" in out
    assert all(name in out for name in setup["classes"])
    assert caplog.text.count("using 2 example(s) per class") == 1  # said once, not once per reading
    assert "left out notes.txt (neither a video file nor a frame folder)" in caplog.text


def test_an_unreadable_query_gets_its_own_row(setup, tmp_path, capsys):
    corpus = load_corpus(setup["dataset"].corpus)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video, " * 100)
    queries = [setup["queries"][0], str(broken), setup["queries"][1]]
    base = ["--checkpoint", str(setup["checkpoint"]), "--support", str(setup["support"]),
            "--corpus", str(setup["dataset"].corpus), "--decoder", "pyav", "--no-progress"]  # fmt: skip
    assert main([*base, "--json", *queries]) == 1
    out, err = capsys.readouterr()
    printed = [json.loads(line) for line in out.splitlines()]
    assert [result["query"] for result in printed] == queries
    assert set(printed[1]) == {"query", "error"} and "cannot open the video container" in printed[1]["error"]
    readable = predict(setup["model"], setup["support"], queries[::2], corpus, decoder="pyav")
    for got, want in zip(printed[::2], readable, strict=True):
        assert got["predicted"] == want["predicted"] and got["scores"] == pytest.approx(want["scores"], abs=1e-6)
    assert err.strip().splitlines()[-1] == "error: 1 of 3 queries could not be read (see their rows)"

    assert main([*base, *queries]) == 1  # the table says it on the query's row
    out = capsys.readouterr().out
    assert f"{broken}  ->  error: " in out and f"{queries[2]}  ->  {readable[1]['predicted']}" in out
    library = predict(setup["model"], setup["support"], queries, corpus, decoder="pyav", transductive=True)
    assert library[1] == printed[1]
    together = predict(setup["model"], setup["support"], queries[::2], corpus, decoder="pyav", transductive=True)
    assert library[::2] == together  # the readable ones as one set


class _ChatHandler(http.server.BaseHTTPRequestHandler):
    """A stand-in OpenAI-compatible endpoint: three stages for whatever label it is asked about."""

    asked: list[str] = []

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        question = body["messages"][-1]["content"]
        self.asked.append(question)
        answer = {"choices": [{"message": {"content": "1. it starts\n2. it goes on\n3. it ends"}}]}
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_generate_corpus_through_a_chat_endpoint(setup, tmp_path, capsys):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ChatHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        out = tmp_path / "corpus.yaml"
        args = ["--checkpoint", str(setup["checkpoint"]), "--support", str(setup["support"]), "--generate-corpus",
                "--corpus", str(out), "--base-url", f"http://127.0.0.1:{server.server_port}/v1", "--decoder", "pyav",
                "--json", setup["queries"][0]]  # fmt: skip
        assert main(args) == 0
        assert len(_ChatHandler.asked) == len(setup["classes"])
        assert sorted(load_corpus(out)) == setup["classes"]
        assert json.loads(capsys.readouterr().out.splitlines()[0])["predicted"] in setup["classes"]
        assert main(args) == 0  # the corpus covers every class now: nothing is asked again
        assert len(_ChatHandler.asked) == len(setup["classes"])
    finally:
        server.shutdown()


def test_bad_input_fails_in_one_line(setup, tmp_path, capsys):
    base = ["--checkpoint", str(setup["checkpoint"]), "--support", str(setup["support"])]
    empty_classes = tmp_path / "empty"
    empty_classes.mkdir()
    notes_only = tmp_path / "notes_only"
    shutil.copytree(setup["support"], notes_only)
    (notes_only / "clapping").mkdir()
    (notes_only / "clapping" / "notes.txt").write_text("a class whose videos are missing")
    partial = tmp_path / "partial.yml"
    partial.write_text(f"{setup['classes'][0]!r}: [a., b., c.]\n")
    cases = [
        ([*base, "--corpus", str(setup["dataset"].corpus), str(tmp_path / "missing.mp4")], "video not found"),
        ([*base, setup["queries"][0]], "--corpus FILE or --generate-corpus"),
        (["--checkpoint", str(setup["checkpoint"]), "--support", str(tmp_path / "none"), "--corpus", "x", "q.mp4"],
         "video not found: q.mp4"),  # checked before the model loads
        ([*base[:3], str(empty_classes), "--corpus", "x", setup["queries"][0]], "at least two class folders"),
        ([*base[:3], str(notes_only), "--corpus", "x", setup["queries"][0]], "no example videos (found notes.txt)"),
        ([*base, "--corpus", str(partial), setup["queries"][0]], "class(es) missing: - '"),  # not "missing:; -"
    ]  # fmt: skip
    for args, reason in cases:
        assert main(args) != 0
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and reason in err and len(err.splitlines()) == 1, err
