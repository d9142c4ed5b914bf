"""The reference Task-Adapter++ model: structure, CLIP parity, invariances, gradients, errors."""

from __future__ import annotations

import pytest
import torch
from helpers import T, make_corpus, make_episode, randomize_adapters

import taskadapter_fast as taf
from taskadapter_fast.config import parse_override, resolve_model_config
from taskadapter_fast.model.alignment import CrossModalAlignment, semantic_score, stage_bounds
from taskadapter_fast.model.visual import adapted_block_forward


def tiny(seed=0, **overrides):
    torch.manual_seed(seed)
    return taf.create_model("tiny", **overrides).eval()


@pytest.fixture(scope="module")
def model():
    return randomize_adapters(tiny())


@pytest.fixture(scope="module")
def episode():
    return make_episode()


# --------------------------------------------------------------------------------- parameter counts
@pytest.fixture(scope="module")
def vit_b16_clip():
    from taskadapter_fast.model.backbone import build_clip

    return build_clip("ViT-B-16")


@pytest.mark.parametrize(
    "adapter_layers, text_layers, visual_count, text_count",
    [(6, 2, 7_107_072, 263_424), (2, 8, 2_373_120, 1_053_696), (12, 2, 14_208_000, 263_424)],
)
def test_vit_b16_tunable_parameter_counts(vit_b16_clip, adapter_layers, text_layers, visual_count, text_count):
    from taskadapter_fast.model.task_adapter import TaskAdapterPP

    config = taf.ModelConfig(adapter_layers=adapter_layers, text_adapter_layers=text_layers)
    model = TaskAdapterPP(config, clip=vit_b16_clip)
    report = model.parameter_report()
    assert report["visual_adapters"] + report["temporal_embedding"] == visual_count
    assert report["text_adapters"] == text_count
    assert report["backbone_trainable"] == 0
    assert model.num_trainable_parameters() == visual_count + text_count
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(n.startswith(("visual.adapters.", "visual.temporal_embedding", "text.adapters.")) for n in trainable)


def test_only_adapters_get_gradients(model, episode):
    support, labels, query, query_labels, names = episode
    model.zero_grad(set_to_none=True)
    model.loss(model(support, labels, query, names, make_corpus(3)), query_labels).backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


# --------------------------------------------------------------------------------- CLIP parity
def test_equals_clip_image_embedding_when_task_adapter_and_temporal_embedding_are_zero():
    model = randomize_adapters(tiny())
    videos = make_episode(num_classes=2, shots=2)[0]
    frames = videos.flatten(0, 1)
    with torch.no_grad():
        clip_feats = model.clip.encode_image(frames).view(videos.shape[0], T, -1)
        differs = model.encode_videos(videos)
        assert (differs - clip_feats).abs().max() > 1e-3  # adapters with values do change the features
        for adapters in model.visual.adapters.values():
            for adapter in (adapters.t_adapter, adapters.task_adapter, adapters.mlp_adapter):
                adapter.fc2.weight.zero_()
                adapter.fc2.bias.zero_()
            adapters.s_adapter.fc2.weight.zero_()
            adapters.s_adapter.fc2.bias.zero_()
        model.visual.temporal_embedding.zero_()
        ours = model.encode_videos(videos)
    torch.testing.assert_close(ours, clip_feats, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------- isolation, permutations
def test_support_and_query_sets_are_isolated(model, episode):
    support, labels, query, _, names = episode
    seen = []
    original = model.encode_videos

    def recording(videos):
        out = original(videos)
        seen.append(out.detach().clone())
        return out

    model.encode_videos = recording
    try:
        with torch.no_grad():
            model(support, labels, query, names, make_corpus(3))
            changed_query = query.clone()
            changed_query[0] += 1.0
            model(support, labels, changed_query, names, make_corpus(3))
            changed_support = support.clone()
            changed_support[-1] += 1.0
            model(changed_support, labels, query, names, make_corpus(3))
    finally:
        del model.encode_videos
    base_support, base_query, support_same, query_changed, support_changed, query_same = seen
    torch.testing.assert_close(support_same, base_support, rtol=0, atol=0)
    torch.testing.assert_close(query_same, base_query, rtol=0, atol=0)
    # within a set the Task-MSA does mix videos: another video of the changed set moves
    assert (query_changed[1] - base_query[1]).abs().max() > 1e-6
    assert (support_changed[0] - base_support[0]).abs().max() > 1e-6


def test_permuting_queries_permutes_scores(model, episode):
    support, labels, query, _, names = episode
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    with torch.no_grad():
        scores = model(support, labels, query, names, make_corpus(3))
        permuted = model(support, labels, query[perm], names, make_corpus(3))
    torch.testing.assert_close(permuted, scores[perm], rtol=1e-5, atol=1e-6)


def test_permuting_support_within_a_class_changes_nothing(model, episode):
    support, labels, query, _, names = episode
    perm = torch.tensor([1, 0, 3, 2, 5, 4])  # swaps the two shots of every class
    with torch.no_grad():
        scores = model(support, labels, query, names, make_corpus(3))
        swapped = model(support[perm], labels[perm], query, names, make_corpus(3))
        shuffled = torch.tensor([4, 0, 2, 5, 1, 3])  # any order, labels travel with the videos
        reordered = model(support[shuffled], labels[shuffled], query, names, make_corpus(3))
    torch.testing.assert_close(swapped, scores, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(reordered, scores, rtol=1e-5, atol=1e-6)


def test_official_compat_transposes_the_semantic_score_and_leaks_query_order():
    model = randomize_adapters(tiny())
    support, labels, query, _, names = make_episode(queries=1)
    with pytest.warns(UserWarning, match="query order leaks"):
        compat = randomize_adapters(tiny(official_compat=True))
    compat.load_state_dict(model.state_dict())
    with torch.no_grad():
        feats = [model.encode_videos(support), model.encode_videos(query), model.encode_classes(names, make_corpus(3))]
        video = model.metric(feats[0].view(3, 2, T, -1), feats[1])
        semantic = semantic_score(model.alignment(feats[1]), feats[2])
        ours = model(support, labels, query, names, make_corpus(3))
        theirs = compat(support, labels, query, names, make_corpus(3))
        perm = torch.tensor([2, 0, 1])
        theirs_permuted = compat(support, labels, query[perm], names, make_corpus(3))
    torch.testing.assert_close(ours, video * semantic, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(theirs, video * semantic.t(), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(theirs_permuted, theirs[perm], atol=1e-6)  # the documented leak


def test_official_compat_needs_one_query_per_class(episode):
    support, labels, query, _, names = episode
    with pytest.warns(UserWarning):
        compat = tiny(official_compat=True)
    with pytest.raises(ValueError, match="as many queries as classes"):
        compat(support, labels, query, names, make_corpus(3))


# --------------------------------------------------------------------------------- alignment maths
def test_stage_bounds_match_the_official_split():
    assert stage_bounds(7, 3) == [(0, 2), (2, 4), (4, 6)]
    assert stage_bounds(7, 1) == [(0, 6)]
    assert stage_bounds(6, 3) == [(0, 2), (2, 3), (3, 5)]


def test_cross_query_alignment_and_semantic_score_follow_the_spec_formula():
    gen = torch.Generator().manual_seed(3)
    feats = torch.randn(4, T, 16, generator=gen, dtype=torch.float64)
    text = torch.randn(5, 3, 16, generator=gen, dtype=torch.float64)
    aligned = CrossModalAlignment(16, "cross_attention").double()(feats)
    cos = torch.nn.functional.cosine_similarity
    for i in range(T - 1):
        f_i, f_next = feats[:, i], feats[:, i + 1]
        expect = torch.softmax(f_i @ f_next.T / 16**0.5, dim=-1) @ f_next + f_next
        torch.testing.assert_close(aligned[:, i], expect)
    score = semantic_score(aligned, text)
    stages = [(0, 1, 2), (2, 3, 4), (4, 5, 6)]
    for q in range(4):
        for c in range(5):
            total = sum(cos(aligned[q, i], text[c, s], dim=0) for s, idx in enumerate(stages) for i in idx)
            torch.testing.assert_close(score[q, c], total / 9)


def test_scores_stay_float32_under_bf16_autocast(model):
    # Under autocast the features arrive in bf16; the head must not round its cosines to bf16 too (spacing
    # 2^-9 near 0.4, 0.125 after the x64 logit scale): the same features give the fp32 scores exactly.
    gen = torch.Generator().manual_seed(4)
    embed = model.embed_dim
    support, query = (torch.randn(n, T, embed, generator=gen).bfloat16() for n in (5, 10))
    text = torch.randn(5, 3, embed, generator=gen).bfloat16()
    labels = torch.arange(5)
    with torch.no_grad():
        expected = model.scores_from_features(support.float(), labels, query.float(), text.float(), 5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = model.scores_from_features(support, labels, query, text, 5)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_per_video_alignment_never_mixes_queries():
    feats = torch.randn(3, T, 16)
    align = CrossModalAlignment(16, "cross_attention", mode="per_video")
    out = align(feats)
    changed = feats.clone()
    changed[0] += 1
    torch.testing.assert_close(align(changed)[1:], out[1:], rtol=0, atol=0)
    cross = CrossModalAlignment(16, "cross_attention")
    assert (cross(changed)[1:] - cross(feats)[1:]).abs().max() > 1e-6


def test_per_video_alignment_adds_the_query_frame():
    # eq. (15): F̄_i = softmax(F_i F_{i+1}^T) F_{i+1} + F_i; with a single key the softmax weight is 1, so
    # F̄_i = F_{i+1} + F_i within a video (the official residual F_{i+1} would give 2 F_{i+1}).
    gen = torch.Generator().manual_seed(5)
    feats = torch.randn(3, T, 16, generator=gen, dtype=torch.float64)
    aligned = CrossModalAlignment(16, "cross_attention", mode="per_video").double()(feats)
    torch.testing.assert_close(aligned, feats[:, 1:] + feats[:, :-1], rtol=0, atol=0)
    normed = CrossModalAlignment(16, "cross_attention", mode="per_video", layernorm=True).double()
    ln = normed.ln_1
    torch.testing.assert_close(normed(feats), ln(feats[:, 1:]) + feats[:, :-1])
    twice = CrossModalAlignment(16, "cross_attention", layers=2, mode="per_video").double()(feats)
    once = feats[:, 1:] + feats[:, :-1]
    torch.testing.assert_close(twice, once[:, 1:] + once[:, :-1])


# --------------------------------------------------------------------------------- gradients, training
def test_gradcheck_adapted_block_float64():
    model = randomize_adapters(tiny(), scale=0.2).double()
    block = model.clip.visual.transformer.resblocks[-1]
    adapters = model.visual.adapters[str(len(model.clip.visual.transformer.resblocks) - 1)]
    x = torch.randn(3, 2, 5, 64, dtype=torch.float64, requires_grad=True)  # V, T, N, D
    params = {
        n: p.detach().clone().requires_grad_(True)
        for n, p in adapters.named_parameters()
        if n.startswith(("task_adapter.", "t_adapter.fc2"))
    }
    names = list(params)

    def fn(x, *values):
        state = dict(zip(names, values, strict=True))
        return _with_params(adapters, state, lambda: adapted_block_forward(block, adapters, x, "reference"))

    assert torch.autograd.gradcheck(fn, (x, *params.values()), eps=1e-6, atol=1e-5, fast_mode=True)


def _with_params(module, state, call):
    """Run `call` with some of `module`'s parameters replaced by the given tensors (for gradcheck)."""
    saved = {}
    for name, value in state.items():
        owner_name, _, attr = name.rpartition(".")
        owner = module.get_submodule(owner_name)
        saved[name] = (owner, attr, owner._parameters[attr])
        del owner._parameters[attr]
        setattr(owner, attr, value)
    try:
        return call()
    finally:
        for owner, attr, param in saved.values():
            delattr(owner, attr)
            owner._parameters[attr] = param


def _scores_and_grads(model, episode):
    support, labels, query, query_labels, names = episode
    model.zero_grad(set_to_none=True)
    scores = model(support, labels, query, names, make_corpus(3))
    model.loss(scores, query_labels).backward()
    return scores.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_restructured_visual_path_equals_the_literal_one(episode):
    """impl="auto" on CPU runs the restructured visual formulation (explicit frozen attention, class token only
    past the last spatial MSA); impl="reference" runs CLIP's own blocks. Same function, same gradients."""
    literal = randomize_adapters(tiny(seed=4, impl="reference")).train()
    restructured = randomize_adapters(tiny(seed=4, impl="auto")).train()
    scores_ref, grads_ref = _scores_and_grads(literal, episode)
    scores, grads = _scores_and_grads(restructured, episode)
    torch.testing.assert_close(scores, scores_ref, rtol=1e-5, atol=1e-5)
    assert grads.keys() == grads_ref.keys() and len(grads) > 0
    for name, grad in grads_ref.items():
        scale = grad.abs().max().clamp_min(1e-12)
        assert (grads[name] - grad).abs().max() / scale < 1e-4, name


def test_sgd_steps_lower_the_loss(episode):
    model = tiny(seed=2).train()
    support, labels, query, query_labels, names = episode
    corpus = make_corpus(3)
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=0.05)
    losses = []
    for _ in range(8):
        loss = model.loss(model(support, labels, query, names, corpus), query_labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05, losses


# --------------------------------------------------------------------------------- checkpoints
def test_adapter_checkpoint_round_trip_is_bit_identical(tmp_path, model, episode):
    support, labels, query, _, names = episode
    path = taf.save_adapters(model, tmp_path / "adapters.safetensors")
    assert path.stat().st_size < 2_000_000  # adapters only, not the CLIP weights
    torch.manual_seed(123)  # the global RNG must not matter: the backbone's random init comes from init_seed
    restored = taf.create_model(checkpoint=path).eval()
    with torch.no_grad():
        a = model(support, labels, query, names, make_corpus(3))
        b = restored(support, labels, query, names, make_corpus(3))
    assert torch.equal(a, b)
    assert restored.config == model.config


def test_loading_a_checkpoint_reads_its_tensors_once(tmp_path, model, monkeypatch):
    # Its config and run config are metadata: reading them must not read every tensor too.
    import safetensors

    path = taf.save_adapters(model, tmp_path / "adapters.safetensors", {"run_config": "{}"})
    reads = []
    original = safetensors.safe_open

    class Counting:
        def __init__(self, *args, **kwargs):
            self.handle = original(*args, **kwargs)

        def __enter__(self):
            self.inner = self.handle.__enter__()
            return self

        def __exit__(self, *exc):
            return self.handle.__exit__(*exc)

        def get_tensor(self, key):
            reads.append(key)
            return self.inner.get_tensor(key)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    monkeypatch.setattr(safetensors, "safe_open", Counting)
    from taskadapter_fast.checkpoint import stored_run_config

    assert stored_run_config(path) == {} and reads == []
    taf.create_model(checkpoint=path)
    assert sorted(reads) == sorted(set(reads)) and len(reads) == len(model.trainable_parameters())


def _official_layout_state(model) -> dict[str, torch.Tensor]:
    """An official-implementation state dict, built from its published key list (not from our mapping)."""
    state = {}
    clip = model.clip
    for name, tensor in clip.visual.state_dict().items():
        state[f"feature.module.{name}"] = tensor.clone()
    state["feature.module.temporal_embedding"] = model.visual.temporal_embedding.detach().clone()[None]
    official_names = {
        "t_adapter": "t_adapter",
        "s_adapter": "s_adapter",
        "task_adapter": "task_adapter",
        "mlp_adapter": "MLP_adapter",
    }
    for idx, adapters in model.visual.adapters.items():
        for ours, theirs in official_names.items():
            adapter = getattr(adapters, ours)
            for fc in ("fc1", "fc2"):
                for kind in ("weight", "bias"):
                    key = f"feature.module.transformer.resblocks.{idx}.{theirs}.D_{fc}.{kind}"
                    state[key] = getattr(getattr(adapter, fc), kind).detach().clone()
    for name in (
        "token_embedding.weight",
        "positional_embedding",
        "ln_final.weight",
        "ln_final.bias",
        "text_projection",
        "logit_scale",
    ):
        state[f"text.{name}"] = clip.state_dict()[name].clone()
    for name, tensor in clip.transformer.state_dict().items():
        state[f"text.transformer.{name}"] = tensor.clone()
    for idx, adapter in model.text.adapters.items():
        for fc in ("fc1", "fc2"):
            for kind in ("weight", "bias"):
                state[f"text.transformer.resblocks.{idx}.sub3_adapter.D_{fc}.{kind}"] = (
                    getattr(getattr(adapter, fc), kind).detach().clone()
                )
    return state


def test_official_checkpoint_loads_and_gives_the_same_scores(tmp_path, episode):
    source = randomize_adapters(tiny(seed=5))
    support, labels, query, _, names = episode
    state = _official_layout_state(source)
    state["some_head.weight"] = torch.zeros(2)  # a key this model has no use for
    dropped = "text.ln_final.bias"
    kept = state.pop(dropped)
    path = tmp_path / "official.pth"
    torch.save({"epoch": 7, "state": state}, path)
    torch.manual_seed(99)
    loaded = taf.create_model("tiny", checkpoint=path, quick_gelu=False).eval()  # tiny source: GELU
    assert loaded.load_report.unused == ["some_head.weight"]
    assert loaded.load_report.missing == [dropped]
    with torch.no_grad():
        loaded.clip.ln_final.bias.copy_(kept)
        expected = source(support, labels, query, names, make_corpus(3))
        got = loaded(support, labels, query, names, make_corpus(3))
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_ssv2_full_layernorm_loads_from_official_key(tmp_path):
    source = tiny(alignment_layernorm=True)
    with torch.no_grad():
        source.alignment.ln_1.weight.uniform_()
    state = _official_layout_state(source)
    state["ca.ln_1.weight"] = source.alignment.ln_1.weight.detach().clone()
    state["ca.ln_1.bias"] = source.alignment.ln_1.bias.detach().clone()
    torch.save({"epoch": 0, "state": state}, tmp_path / "o.pth")
    loaded = taf.create_model("tiny", checkpoint=tmp_path / "o.pth", alignment_layernorm=True, quick_gelu=False)
    assert loaded.load_report.missing == []
    assert torch.equal(loaded.alignment.ln_1.weight, source.alignment.ln_1.weight)


# --------------------------------------------------------------------------------- pretrained weights
def test_pretrained_local_file_is_loaded(tmp_path):
    from taskadapter_fast.model.backbone import build_clip

    torch.manual_seed(11)
    reference = build_clip("taf-tiny-ViT")
    torch.save(reference.state_dict(), tmp_path / "tiny-clip.pt")
    torch.manual_seed(12)
    model = taf.create_model("tiny", pretrained=str(tmp_path / "tiny-clip.pt"))
    for (name, a), b in zip(reference.state_dict().items(), model.clip.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_missing_pretrained_file_or_tag_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        taf.create_model("tiny", pretrained=str(tmp_path / "nope.pt"))


def test_unreachable_pretrained_tag_says_where_it_looked_and_how_to_pass_a_file(tmp_path):
    import subprocess
    import sys

    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    code = "import taskadapter_fast as taf; taf.create_model('ssv2_small')"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "pretrained='openai'" in last and "ViT-B-16" in last
    assert "Looked in" in last and "local path" in last


# --------------------------------------------------------------------------------- bad input
def test_public_names_are_listed_though_imported_lazily():
    assert {"create_model", "load_corpus", "save_adapters", "load_adapters", "ops", "data"} <= set(dir(taf))


def test_bad_inputs_get_clear_errors(model, episode):
    support, labels, query, _, names = episode
    corpus = make_corpus(3)
    with pytest.raises(ValueError, match="7 frames.*num_frames=8"):
        model(support[:, :7], labels, query[:, :7], names, corpus)
    with pytest.raises(ValueError, match="16x16.*32x32"):
        model(support[..., :16, :16], labels, query[..., :16, :16], names, corpus)
    with pytest.raises(ValueError, match="5 support videos|support_labels"):
        model(support[:5], labels, query, names, corpus)
    small = {k: v for k, v in corpus.items() if k != "class 1"}
    with pytest.raises(ValueError, match="class 1"):
        model(support, labels, query, names, small)
    missing_two = {"class 0": corpus["class 0"]}
    with pytest.raises(ValueError) as err:
        model(support, labels, query, names, missing_two)
    assert "class 1" in str(err.value) and "class 2" in str(err.value)
    two_stages = dict(corpus, **{"class 2": ["only", "two"]})
    with pytest.raises(ValueError, match="class 2"):
        model(support, labels, query, names, two_stages)
    with pytest.raises(ValueError, match="query_labels"):
        model.loss(torch.zeros(6, 3), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="adapter_layers"):
        taf.create_model("tiny", adapter_layers=9)
    with pytest.raises(ValueError, match="unknown model config key"):
        taf.create_model("tiny", adapter_layer=2)
    with pytest.raises(ValueError, match="unknown preset"):
        taf.create_model("ssv3")


def test_model_config_values_are_converted_to_their_field_types():
    """ModelConfig.from_dict, create_model's overrides and model.KEY=VALUE overrides convert each value as the
    run config does: a convertible value of another type becomes the field's type, any other is refused."""
    config = taf.ModelConfig.from_dict({"adapter_layers": "4", "adapter_ratio": 1, "official_compat": "true"})
    assert config.adapter_layers == 4 and type(config.adapter_layers) is int
    assert config.adapter_ratio == 1.0 and type(config.adapter_ratio) is float
    assert config.official_compat is True
    parts, value = parse_override("model.logit_scale=10")
    config = resolve_model_config("tiny", text_adapter_layers="0", **{parts[1]: value})
    assert config.text_adapter_layers == 0 and type(config.text_adapter_layers) is int
    assert config.logit_scale == 10.0 and type(config.logit_scale) is float
    assert taf.create_model("tiny", alignment_layers="1").config.alignment_layers == 1
    with pytest.raises(ValueError, match="adapter_layers must be an integer, got 'four'"):
        taf.ModelConfig.from_dict({"adapter_layers": "four"})
    with pytest.raises(ValueError, match="adapter_ratio must be a number, got 'wide'"):
        resolve_model_config("tiny", adapter_ratio="wide")
    with pytest.raises(ValueError, match="temporal_embedding must be true or false, got 2"):
        taf.create_model("tiny", temporal_embedding=2)


# --------------------------------------------------------------------------------- ablation configs
ABLATIONS = [
    {"adapter_layers": 0, "temporal_embedding": False},  # Table 3: frozen backbone
    {"full_finetune": True, "adapter_layers": 0},  # Table 3: full fine-tuning
    {"task_adapter": False},  # AIM only
    {"aim_adapters": False},  # task adaptation only
    {"adapter_layers": 4},  # all-layer adapting (tiny depth is 4)
    {"sub_actions": "none", "text_adapter_layers": 0, "alignment": "none"},  # Task-Adapter baseline
    {"sub_actions": "average"},
    {"sub_actions": "concat"},
    {"alignment_layers": 2},
    {"alignment": "conv1d"},
    {"alignment_mode": "per_video"},
    {"alignment_layernorm": True},
    {"score": "video"},
    {"score": "text"},
    {"metric": "proto_frame"},
    {"metric": "otam"},
    {"metric": "bimhm"},
    {"metric": "trx"},
]


@pytest.mark.parametrize("overrides", ABLATIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_every_ablation_is_a_config(overrides, episode):
    model = tiny(**overrides).train()
    support, labels, query, query_labels, names = episode
    scores = model(support, labels, query, names, make_corpus(3))
    assert scores.shape == (6, 3) and torch.isfinite(scores).all()
    if model.num_trainable_parameters():
        model.loss(scores, query_labels).backward()
    if overrides.get("full_finetune"):
        assert model.parameter_report()["backbone_trainable"] > 0
    if overrides.get("adapter_layers") == 0 and not overrides.get("full_finetune"):
        assert model.parameter_report()["visual_adapters"] == 0
