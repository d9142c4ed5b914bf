"""Training: run config and CLI, a short real run and its artefacts, resume after SIGKILL, schedules,
gradient accumulation, gradient checkpointing and bf16 autocast."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import read_adapters, small_overrides

from taskadapter_fast.runconfig import RunConfig, resolve_run_config, run_config_from_json
from taskadapter_fast.train import main as train_main
from taskadapter_fast.training import (
    DistInfo,
    build_model,
    build_optimizer,
    build_scheduler,
    enable_grad_checkpointing,
    episode_indices,
    make_loader,
    prepare_data,
    schedule_at,
    train,
    train_step,
)

BENCHMARKS = ("ssv2_small", "ssv2_full", "kinetics", "hmdb51", "ucf101")
FAKE_SPLITS = ["data.train_split=a.txt", "data.val_split=b.txt", "data.test_split=c.txt", "data.corpus=d.yaml"]


# ------------------------------------------------------------------------------------------------ config
def test_embedded_default_resolves_to_demo():
    run = resolve_run_config()
    assert run.data.dataset == "synthetic"
    assert run.model.clip_model == "taf-demo-ViT" and run.model.pretrained is None


@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_presets_carry_the_paper_protocol(name):
    run = resolve_run_config(name, overrides=FAKE_SPLITS)
    t = run.train
    assert (t.epochs, t.episodes_per_epoch, t.val_episodes, t.test_episodes) == (10, 1000, 1000, 10000)
    assert (t.lr, t.momentum, t.weight_decay, t.schedule) == (1e-3, 0.0, 0.0, "constant")
    assert (run.data.n_way, run.data.n_shot, run.data.n_query) == (5, 1, 1)
    assert run.model.pretrained == "openai" and run.model.clip_model == "ViT-B-16"
    expected_layers = (6, 2) if name.startswith("ssv2") else (2, 8)
    assert (run.model.adapter_layers, run.model.text_adapter_layers) == expected_layers


def test_benchmark_preset_without_split_files_names_what_is_missing():
    with pytest.raises(ValueError, match="data.train_split"):
        resolve_run_config("hmdb51")


def test_dotted_overrides_are_typed():
    run = resolve_run_config(
        "ucf101",
        overrides=[*FAKE_SPLITS, "train.lr=1e-2", "data.n_way=10", "model.adapter_layers=4", "train.amp=bf16"],
    )
    assert run.train.lr == pytest.approx(0.01) and isinstance(run.train.lr, float)  # YAML reads 1e-2 as text
    assert run.data.n_way == 10 and run.model.adapter_layers == 4 and run.train.amp == "bf16"
    run = resolve_run_config(overrides=["train.milestones=[1, 2.5]", "train.schedule=step", "model.pretrained=null"])
    assert run.train.milestones == [1.0, 2.5] and run.model.pretrained is None


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.bogus=1", "unknown config key.*train.bogus"),
        ("model.adapter_layer=4", "unknown config key.*model.adapter_layer"),
        ("data.synthetic.colour=1", "unknown config key.*data.synthetic.colour"),
        ("optim.lr=1", "unknown section 'optim'"),
        ("train.lr=fast", "train.lr must be a number"),
        ("data.n_way=two", "data.n_way must be an integer"),
        ("train.schedule=linear", "train.schedule must be one of"),
        ("data.n_shot=0", "data.n_shot must be >= 1"),
        ("train.lr.x=1", "not a section"),
    ],
)
def test_bad_overrides_are_rejected(override, message):
    with pytest.raises(ValueError, match=message):
        resolve_run_config(overrides=[override])


def test_own_splits_need_a_corpus_only_where_the_model_reads_sub_actions():
    no_corpus = FAKE_SPLITS[:-1]
    with pytest.raises(ValueError, match="needs data.corpus"):
        resolve_run_config(overrides=["data.dataset=splits", *no_corpus])
    for switch in ("model.score=video", "model.sub_actions=none"):
        run = resolve_run_config(overrides=["data.dataset=splits", *no_corpus, switch])
        assert run.data.corpus is None


def test_config_file_and_round_trip(tmp_path):
    run = resolve_run_config(overrides=["train.lr=0.2", "data.n_shot=2"])
    file = tmp_path / "config.yaml"
    file.write_text(run.to_yaml())
    again = resolve_run_config(config_file=file)
    assert again == run
    assert run_config_from_json(run.to_json()) == run
    json_file = tmp_path / "c.json"
    json_file.write_text(json.dumps({"train": {"epochs": 1, "nope": 2}}))
    with pytest.raises(ValueError, match="train.nope"):
        resolve_run_config(config_file=json_file)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train.bogus=1"], "unknown config key"),
        (["--preset", "nope"], "unknown preset 'nope'"),
        (["--config", "/does/not/exist.yaml"], "config file not found"),
        (["--way", "0"], "--way must be >= 1, got 0"),
        (["--resume", "/does/not/exist"], "no config.yaml"),
        (["--resume", "x", "train.lr=1"], "--resume keeps the run's own config"),
        (["justaword"], "must look like key.sub=value"),
    ],
)
def test_cli_rejects_bad_input_in_one_line(argv, message, capsys):
    try:
        code = train_main(argv)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], err
    assert code not in (0, None)


def test_cli_flags_become_overrides(monkeypatch, tmp_path):
    seen = {}

    def fake_train(run_config, output_dir, resume=None, device=None, progress=True):
        seen.update(run=run_config, output_dir=output_dir, device=device)
        return {}

    monkeypatch.setattr("taskadapter_fast.training.train", fake_train)
    argv = ["--way", "3", "--shot", "2", "--query", "4", "--seed", "7", "--device", "cpu", "--output-dir", "x"]
    assert train_main([*argv, "train.lr=0.5"]) == 0
    run: RunConfig = seen["run"]
    assert (run.data.n_way, run.data.n_shot, run.data.n_query, run.train.seed) == (3, 2, 4, 7)
    assert run.train.lr == 0.5 and seen["device"] == "cpu" and seen["output_dir"] == "x"


# ------------------------------------------------------------------------------------------------ pieces
def test_episode_sharding_covers_every_episode_once():
    single = episode_indices(8, 16, accumulate=2, dist_info=DistInfo())
    assert single == list(range(8, 16))
    ranks = [episode_indices(8, 16, accumulate=2, dist_info=DistInfo(rank=r, world=2)) for r in range(2)]
    assert ranks[0] == [8, 10, 12, 14] and ranks[1] == [9, 11, 13, 15]  # rank r takes i * world + r
    # one step = accumulate x world episodes: step 0 is 8..11 for both layouts
    assert sorted(ranks[0][:2] + ranks[1][:2]) == single[:4]


@pytest.mark.parametrize("schedule", ["step", "cosine"])
def test_schedules_step_and_restore(schedule):
    run = resolve_run_config(
        overrides=[
            f"train.schedule={schedule}",
            "train.milestones=[1, 2]",
            "train.gamma=0.5",
            "train.lr=0.1",
            "train.epochs=3",
            "train.min_lr=0.01",
        ]
    )
    param = torch.nn.Parameter(torch.zeros(3))

    def make():
        optimizer = torch.optim.SGD([param], lr=run.train.lr)
        return optimizer, build_scheduler(optimizer, run.train, steps_per_epoch=4)

    def rates(optimizer, scheduler, steps: int) -> list[float]:
        """The lr of each of `steps` optimizer steps."""
        seen = []
        for _ in range(steps):
            seen.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return seen

    optimizer, scheduler = make()
    lrs = rates(optimizer, scheduler, 6)
    saved = (optimizer.state_dict(), scheduler.state_dict())
    lrs += rates(optimizer, scheduler, 6)
    if schedule == "step":
        assert lrs == pytest.approx([0.1] * 4 + [0.05] * 4 + [0.025] * 4)
    else:
        assert lrs[0] == pytest.approx(0.1) and all(a > b for a, b in zip(lrs, lrs[1:], strict=False))
        assert lrs[-1] > 0.01
    optimizer, scheduler = make()
    optimizer.load_state_dict(saved[0])
    scheduler.load_state_dict(saved[1])
    assert rates(optimizer, scheduler, 6) == pytest.approx(lrs[6:])

    # Resumed with another world size: a fresh schedule, put where 6 steps have brought it.
    optimizer, _ = make()
    optimizer.load_state_dict(saved[0])
    scheduler = build_scheduler(optimizer, run.train, steps_per_epoch=4)
    schedule_at(scheduler, 6)
    assert rates(optimizer, scheduler, 6) == pytest.approx(lrs[6:])


def test_constant_schedule_has_no_scheduler():
    run = resolve_run_config()
    param = torch.nn.Parameter(torch.zeros(1))
    assert build_scheduler(torch.optim.SGD([param], lr=1.0), run.train, 10) is None


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    return tmp_path_factory.mktemp("synthetic") / "data"


@pytest.fixture(scope="module")
def small_run(synthetic_root) -> RunConfig:
    return resolve_run_config(overrides=small_overrides(synthetic_root))


@pytest.fixture(scope="module")
def pieces(small_run):
    data = prepare_data(small_run)
    loader = make_loader(small_run, data.rows["train"], "train", 32, torch.device("cpu"))
    return data, loader


def _grads(model, episode, corpus, saved=None):
    """Gradients of one episode's loss; `saved` (a list) collects the sizes of the tensors autograd keeps."""
    model.zero_grad(set_to_none=True)

    def pack(t):
        if saved is not None:
            saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        scores = model(episode.support, episode.support_labels, episode.query, episode.class_names, corpus)
    model.loss(scores, episode.query_labels).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_gradient_checkpointing_gives_the_same_gradients(small_run, pieces):
    data, loader = pieces
    episode = loader.episode(0)
    model = build_model(small_run).train()
    with torch.no_grad():  # non-zero adapters, so every path carries gradient
        for p in model.trainable_parameters():
            p.add_(0.02 * torch.randn_like(p))
    kept_plain, kept_checkpointed = [], []
    plain = _grads(model, episode, data.corpus, kept_plain)
    enable_grad_checkpointing(model)
    checkpointed = _grads(model, episode, data.corpus, kept_checkpointed)
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-7, msg=name)
    # The adapted blocks' activations are recomputed, not kept: far fewer numbers held for the backward pass.
    assert sum(kept_checkpointed) < 0.5 * sum(kept_plain), (sum(kept_checkpointed), sum(kept_plain))


def test_bf16_autocast_step_runs(small_run, pieces):
    from taskadapter_fast.training import amp_context

    data, loader = pieces
    model = build_model(small_run).train()
    optimizer = build_optimizer(model, small_run.train)
    before = [p.detach().clone() for p in model.trainable_parameters()]
    bf16 = amp_context("bf16", torch.device("cpu"))
    loss, accuracy = train_step(model, model, [loader.episode(0)], data.corpus, optimizer, None, bf16, DistInfo())
    assert torch.isfinite(torch.tensor(loss)) and 0 <= accuracy <= 100
    assert any(not torch.equal(a, p) for a, p in zip(before, model.trainable_parameters(), strict=True))


def test_accumulation_equals_the_mean_gradient_step(small_run, pieces, tmp_path):
    """train() with accumulate=2 == a hand-written SGD loop on the mean loss of episodes (2s, 2s+1)."""
    data, loader = pieces
    tree = small_run.to_dict()
    tree["train"].update(
        epochs=1, episodes_per_epoch=4, accumulate=2, val_episodes=0, test_episodes=0, schedule="constant", lr=0.5
    )
    run = RunConfig.from_dict(tree)
    train(run, tmp_path / "acc", device="cpu", progress=False)
    trained = read_adapters(tmp_path / "acc" / "last.safetensors")

    model = build_model(run).train()
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=0.5)
    for step in range(2):
        optimizer.zero_grad()
        losses = []
        for episode in (loader.episode(2 * step), loader.episode(2 * step + 1)):
            scores = model(episode.support, episode.support_labels, episode.query, episode.class_names, data.corpus)
            losses.append(model.loss(scores, episode.query_labels))
        ((losses[0] + losses[1]) / 2).backward()
        optimizer.step()
    reference = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    assert set(trained) == set(reference)
    for name, tensor in reference.items():
        torch.testing.assert_close(trained[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    assert not torch.equal(trained["visual.temporal_embedding"], torch.zeros_like(trained["visual.temporal_embedding"]))


def test_compiled_training_equals_eager_training(small_run, tmp_path):
    """train.compile=true trains through torch.compile (aot_eager here: Dynamo + AOTAutograd, the tracing that
    breaks on untraceable model code, without inductor's minutes of C++ builds on a CPU) to the eager weights."""
    trained = {}
    for name, flags in (("eager", {}), ("compiled", {"compile": True, "compile_backend": "aot_eager"})):
        tree = small_run.to_dict()
        tree["train"].update(epochs=1, episodes_per_epoch=3, val_episodes=0, test_episodes=0, lr=0.5, **flags)
        train(RunConfig.from_dict(tree), tmp_path / name, device="cpu", progress=False)
        trained[name] = read_adapters(tmp_path / name / "last.safetensors")
    torch.compiler.reset()
    untrained = read_adapters(tmp_path / "eager" / "untrained.safetensors")
    for key, tensor in trained["eager"].items():
        torch.testing.assert_close(trained["compiled"][key], tensor, rtol=1e-4, atol=1e-6, msg=key)
    assert any(not torch.equal(t, untrained[k]) for k, t in trained["eager"].items())


def test_bad_compile_backend_is_rejected(small_run):
    tree = small_run.to_dict()
    tree["train"].update(compile=True, compile_backend="nope")
    with pytest.raises(ValueError, match="train.compile_backend must be one of .*got 'nope'"):
        RunConfig.from_dict(tree)


# ------------------------------------------------------------------------------------------------ real runs
@pytest.fixture(scope="module")
def reference_run(small_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "reference"
    results = train(small_run, out, device="cpu", progress=False)
    return out, results


def test_short_run_writes_every_artefact(reference_run, small_run):
    from taskadapter_fast import create_model
    from taskadapter_fast.checkpoint import read_adapter_checkpoint

    out, results = reference_run
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "best.safetensors",
        "last.safetensors",
        "untrained.safetensors",
        "state.pt",
        "state.json",
        "test_episodes.json",
        "curves.png",
        "val_accuracy.png",
        "results.json",
    ):
        assert (out / name).is_file(), name
    # Atomically written files get the mode open() would give them (not mkstemp's owner-only 0600).
    (out / "probe").write_text("")
    mode = (out / "probe").stat().st_mode
    (out / "probe").unlink()
    assert {name: oct((out / name).stat().st_mode) for name in ("best.safetensors", "results.json", "state.pt")} == {
        name: oct(mode) for name in ("best.safetensors", "results.json", "state.pt")
    }
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    for png in ("curves.png", "val_accuracy.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    saved = json.loads((out / "results.json").read_text())
    for key in ("test_accuracy", "test_ci95", "untrained_test_accuracy", "untrained_test_ci95"):
        assert 0.0 <= saved[key] <= 100.0, key
    assert saved["test_episodes"] == 3 and saved["device"] == "cpu" and saved["wall_seconds"] > 0
    assert saved["train_episodes"] == 16 and saved["best_epoch"] in (1, 2)
    assert saved == json.loads(json.dumps(results))

    episodes = json.loads((out / "test_episodes.json").read_text())
    assert len(episodes["episodes"]) == 3 and episodes["split"] == "test"

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    kinds = [r["kind"] for r in records]
    assert kinds.count("train") == 16 and kinds.count("val") == 2
    assert kinds[-2:] == ["test", "untrained_test"]
    lrs = [r["lr"] for r in records if r["kind"] == "train"]
    assert all(a > b for a, b in zip(lrs, lrs[1:], strict=False))  # the cosine schedule steps

    assert RunConfig.from_dict(__import__("yaml").safe_load((out / "config.yaml").read_text())) == small_run
    _, metadata = read_adapter_checkpoint(out / "best.safetensors")
    assert run_config_from_json(metadata["run_config"]) == small_run
    model = create_model(checkpoint=out / "best.safetensors")
    assert model.config == small_run.model


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "taskadapter_fast.train", "--no-progress", "--device", "cpu", *args]


def test_resume_after_sigkill_equals_the_uninterrupted_run(reference_run, synthetic_root, tmp_path):
    reference_dir, reference_results = reference_run
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        _cli("--output-dir", str(out), *small_overrides(synthetic_root)),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    killed_at = None
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            state_file = out / "state.json"
            if state_file.is_file():
                state = json.loads(state_file.read_text())
                if 0 < state["episode"] and state["epochs_done"] == 0:  # a mid-epoch save exists
                    proc.send_signal(signal.SIGKILL)
                    killed_at = state["episode"]
                    break
            time.sleep(0.01)
    finally:
        if proc.poll() is None and killed_at is None:
            proc.kill()
        _, stderr = proc.communicate(timeout=60)
    assert killed_at is not None, f"the run ended before it could be killed mid-epoch: {stderr.decode()[-2000:]}"
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "results.json").exists()

    resumed = subprocess.run(_cli("--resume", str(out)), env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stderr

    # Bit-identical on CPU: the same episodes (indexed by the sampler), the same arithmetic.
    for name in ("last.safetensors", "best.safetensors"):
        expected, got = read_adapters(reference_dir / name), read_adapters(out / name)
        assert set(expected) == set(got)
        for key in expected:
            assert torch.equal(expected[key], got[key]), f"{name}: {key} differs after resume"
    results = json.loads((out / "results.json").read_text())
    assert results["test_accuracy"] == reference_results["test_accuracy"]
    assert results["test_per_episode"] == reference_results["test_per_episode"]
    train_lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    episodes = [r["episode"] for r in train_lines if r["kind"] == "train"]
    assert episodes == sorted(set(episodes)) == list(range(1, 17))  # nothing logged twice, nothing lost


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: training with the Triton kernels")
def test_gpu_training_run_end_to_end(synthetic_root, tmp_path):
    # what a user gets on a GPU: impl="auto" runs the Triton kernels, decoder="auto" decodes on the GPU in the
    # loader's threads where DALI can (tests/test_decode.py checks dali_gpu itself), and bf16 autocast
    run = resolve_run_config(overrides=[*small_overrides(synthetic_root), "train.amp=bf16"])
    results = train(run, tmp_path / "gpu", device="cuda", progress=False)
    assert results["device"].startswith("cuda") and results["train_episodes"] == 16
    for key in ("test_accuracy", "untrained_test_accuracy"):
        assert 0.0 <= results[key] <= 100.0, key
    records = [json.loads(line) for line in (tmp_path / "gpu" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["kind"] == "train"]
    assert len(losses) == 16 and all(map(math.isfinite, losses))
