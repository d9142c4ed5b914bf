"""taf.explain: the scores it explains are the model's own, its maps are distributions over what they attend to,
and the spatial map follows what the attention is made to look at."""

from __future__ import annotations

import pytest
import torch
from helpers import S, T, make_corpus, make_episode, randomize_adapters

import taskadapter_fast as taf
from taskadapter_fast.explanation.collect import AttentionRecorder


@pytest.fixture(scope="module")
def model():
    return randomize_adapters(taf.create_model("tiny"), scale=0.2).eval()


def _explain(model, episode, **kwargs):
    support, labels, query, query_labels, names = episode
    corpus = make_corpus(len(names))
    return taf.explain(model, support, labels, query, names, corpus, query_labels=query_labels, **kwargs)


def test_scores_equal_the_models_own_and_the_parts_add_up(model):
    episode = make_episode(num_classes=5, shots=1, queries=2)
    support, labels, query, _, names = episode
    with torch.no_grad():
        expected = model(support, labels, query, names, make_corpus(5))
    got = _explain(model, episode)
    assert torch.equal(got.scores, expected)
    assert torch.equal(got.predictions, expected.argmax(dim=1))
    torch.testing.assert_close(got.scores, got.visual_score * got.semantic_score, rtol=0, atol=0)
    torch.testing.assert_close(got.stage_similarity.mean(dim=1), got.semantic_score)
    assert got.stage_similarity.shape == (10, 3, 5) and got.visual_score.shape == (10, 5)
    grid = model.clip.visual.grid_size
    assert got.spatial_attention.shape == (10, T, *grid)
    assert got.task_attention.shape == (10, T, 10)  # the query set is the 10 queries
    classes = [names[label] for label in episode[3].tolist()]  # the set's videos, each with its true class
    assert got.task_videos[0] == [f"{n} ({c})" for n, c in zip(got.query_names, classes, strict=True)]
    assert got.task_self == list(range(10)) and got.frames.shape == (10, T, S, S, 3)
    assert got.stage_texts[2] == make_corpus(5)["class 2"]


@pytest.mark.parametrize("impl", ["auto", "reference", "triton"])
def test_scores_equal_the_models_own_under_bf16_autocast(impl):
    model = randomize_adapters(taf.create_model("tiny", impl=impl), scale=0.2).eval()
    episode = make_episode(num_classes=3, shots=2, queries=1, seed=1)
    support, labels, query, _, names = episode
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = model(support, labels, query, names, make_corpus(3))
        got = _explain(model, episode)
    assert torch.equal(got.scores, expected)


def test_inductive_scores_equal_each_query_scored_alone(model):
    support, labels, query, query_labels, names = make_episode(num_classes=3, shots=1, queries=2, seed=2)
    got = _explain(model, (support, labels, query, query_labels, names), inductive=True)
    with torch.no_grad():
        alone = torch.cat([model(support, labels, query[q : q + 1], names, make_corpus(3)) for q in range(6)])
    assert torch.equal(got.scores, alone)
    assert got.task_attention.shape == (6, T, 1) and bool((got.task_attention == 1).all())
    assert got.task_videos[4] == [f"{got.query_names[4]} ({names[query_labels[4]]})"] and got.task_self == [0] * 6


def test_attention_maps_are_distributions(model):
    got = _explain(model, make_episode(num_classes=3, shots=1, queries=2, seed=3), rollout=True)
    for maps in (got.spatial_attention, got.rollout):
        assert bool((maps >= 0).all())
        torch.testing.assert_close(maps.sum(dim=(-2, -1)), torch.ones(6, T))
    torch.testing.assert_close(got.task_attention.sum(dim=-1), torch.ones(6, T))


def test_recorded_attention_is_pytorchs_own_multihead_attention(model):
    # The recorder recomputes the probabilities from the MSA's input; nn.MultiheadAttention's own weights
    # (need_weights=True, mean over heads) on the same input must agree, for the spatial and the Task-MSA.
    inputs = {}

    class Keeping(AttentionRecorder):
        def __call__(self, index, kind, block, h):
            inputs[(index, kind)] = (block, h)
            super().__call__(index, kind, block, h)

    _, _, query, _, _ = make_episode(num_classes=3, shots=1, queries=1, seed=4)
    recorder = Keeping(model.visual.depth - 1)
    with torch.no_grad():
        model.encode_videos(query, record=recorder)
        block, h = inputs[(model.visual.depth - 1, "spatial")]
        flat = h.flatten(0, 1)
        _, weights = block.attn(flat, flat, flat, need_weights=True, average_attn_weights=True)
        torch.testing.assert_close(recorder.spatial.flatten(0, 1), weights[:, 0], rtol=1e-5, atol=1e-6)
        block, h = inputs[(model.visual.depth - 1, "task")]
        cls = h[:, :, 0].transpose(0, 1)  # [T, V, D]
        _, weights = block.attn(cls, cls, cls, need_weights=True, average_attn_weights=True)
        torch.testing.assert_close(recorder.task, weights.transpose(0, 1), rtol=1e-5, atol=1e-6)


def test_rollout_chains_the_adapted_blocks(model):
    # Rollout by hand from each adapted block's full attention (PyTorch's MHA weights): (0.5 A + 0.5 I) chained.
    inputs = []

    class Keeping(AttentionRecorder):
        def __call__(self, index, kind, block, h):
            if kind == "spatial":
                inputs.append((block, h.flatten(0, 1)))
            super().__call__(index, kind, block, h)

    _, _, query, _, _ = make_episode(num_classes=2, shots=1, queries=1, seed=5)
    recorder = Keeping(model.visual.depth - 1, rollout=True)
    with torch.no_grad():
        model.encode_videos(query, record=recorder)
        product = None
        for block, flat in inputs:
            weights = block.attn(flat, flat, flat, need_weights=True, average_attn_weights=True)[1]
            mixed = 0.5 * weights + 0.5 * torch.eye(weights.shape[-1])
            product = mixed if product is None else mixed @ product
    assert len(inputs) == model.visual.depth - model.visual.first_adapted >= 2
    torch.testing.assert_close(recorder.rollout.flatten(0, 1), product[:, 0], rtol=1e-5, atol=1e-6)


def _looking_at_brightness():
    """The tiny model made to attend, in its one adapted block, to the brightest patch of channel 0.

    The frozen blocks before it are made the identity (zero output projections), the class and positional
    embeddings give every token a 1 in channel 1, and the patch embedding puts a patch's mean of channel 0 in
    channel 0: a token is LN([b, 1, 0, ...]). The class token's query is constant and a key reads channel 0 minus
    channel 1, which grows with b, so the class token attends most to the brightest patch.
    """
    model = taf.create_model("tiny", adapter_layers=1).eval()
    visual = model.clip.visual
    with torch.no_grad():
        for block in visual.transformer.resblocks[: model.visual.first_adapted]:
            for layer in (block.attn.out_proj, block.mlp.c_proj):
                layer.weight.zero_()
                layer.bias.zero_()
        patch = visual.conv1.weight
        patch.zero_()
        patch[0, 0] = 1.0 / (patch.shape[-1] * patch.shape[-2])
        visual.class_embedding.zero_()
        visual.positional_embedding.zero_()
        visual.positional_embedding[:, 1] = 1.0
        attn = visual.transformer.resblocks[-1].attn
        dim = attn.embed_dim
        attn.in_proj_weight[:dim].zero_()
        attn.in_proj_bias[:dim].fill_(1.0)
        reads = torch.zeros(dim)
        reads[0], reads[1] = 10.0, -10.0
        attn.in_proj_weight[dim : 2 * dim].copy_(reads.expand(dim, dim))
        attn.in_proj_bias[dim : 2 * dim].zero_()
    return model


def test_the_spatial_map_follows_a_bright_patch_moved_across_frames():
    model = _looking_at_brightness()
    grid_h, grid_w = model.clip.visual.grid_size
    patch = S // grid_w
    cells = [(t % grid_h, (2 * t + 1) % grid_w) for t in range(T)]  # a different cell each frame
    query = torch.zeros(2, T, 3, S, S)
    for t, (row, col) in enumerate(cells):
        query[0, t, 0, row * patch : (row + 1) * patch, col * patch : (col + 1) * patch] = 2.0
        query[1, t, 0, (grid_h - 1 - row) * patch : (grid_h - row) * patch, col * patch : (col + 1) * patch] = 2.0
    support, labels = torch.zeros(2, T, 3, S, S), torch.arange(2)
    got = taf.explain(model, support, labels, query, ["class 0", "class 1"], make_corpus(2))
    flat = got.spatial_attention.flatten(-2).argmax(dim=-1)  # [Q, T]
    assert [divmod(int(i), grid_w) for i in flat[0]] == cells
    assert [divmod(int(i), grid_w) for i in flat[1]] == [(grid_h - 1 - row, col) for row, col in cells]
    assert float(got.spatial_attention[0, 0].max()) > 0.5  # it looks there, not merely a little more


def test_without_task_adapters_the_maps_remain_and_no_task_attention(model):
    aim = taf.create_model("tiny", task_adapter=False).eval()
    episode = make_episode(num_classes=3, shots=1, queries=1, seed=6)
    support, labels, query, _, names = episode
    got = _explain(aim, episode)
    assert got.task_attention is None
    assert got.spatial_attention.shape == (3, T, *aim.clip.visual.grid_size)
    with torch.no_grad():
        assert torch.equal(got.scores, aim(support, labels, query, names, make_corpus(3)))
    assert "task adapters off" in got.model_summary


def test_static_prompt_stage_table_uses_the_label_prompt(model):
    episode = make_episode(num_classes=3, shots=1, queries=1, seed=7)
    got = _explain(model, episode, static_prompt=True)
    assert got.static_stage_similarity.shape == got.stage_similarity.shape
    assert not torch.allclose(got.static_stage_similarity, got.stage_similarity)
    plain = _explain(model, episode)
    assert plain.static_stage_similarity is None and plain.rollout is None
    assert torch.equal(plain.scores, got.scores)  # asking for more changes nothing explained


def test_video_only_and_text_only_models_explain_what_they_have():
    episode = make_episode(num_classes=3, shots=1, queries=1, seed=8)
    support, labels, query, _, names = episode
    video = taf.create_model("tiny", score="video").eval()
    got = _explain(video, episode)
    assert got.stage_similarity is None and got.semantic_score is None
    with torch.no_grad():
        assert torch.equal(got.scores, video(support, labels, query, names, make_corpus(3)))
    text = taf.create_model("tiny", score="text").eval()
    got = _explain(text, episode)
    assert got.visual_score is None and torch.equal(got.scores, got.semantic_score)


def test_bad_arguments_are_refused_as_the_model_refuses_them(model):
    support, labels, query, _, names = make_episode(num_classes=3, shots=1, queries=1)
    with pytest.raises(ValueError, match="support_labels must lie in"):
        taf.explain(model, support, labels + 1, query, names, make_corpus(3))
    with pytest.raises(ValueError, match="query_names has 1 names for 3 queries"):
        taf.explain(model, support, labels, query, names, make_corpus(3), query_names=["one"])


@pytest.mark.gpu
@pytest.mark.triton
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: the Triton kernels under bf16 autocast")
def test_on_the_gpu_the_scores_are_the_models_own_with_the_triton_kernels():
    torch.manual_seed(0)
    model = randomize_adapters(taf.create_model("tiny", impl="triton", device="cuda"), scale=0.2).eval()
    support, labels, query, query_labels, names = make_episode(num_classes=5, shots=1, queries=2)
    support, labels, query = support.cuda(), labels.cuda(), query.cuda()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        expected = model(support, labels, query, names, make_corpus(5))
        got = taf.explain(model, support, labels, query, names, make_corpus(5), query_labels=query_labels, rollout=True)
    assert got.scores.device.type == "cuda" and torch.equal(got.scores, expected)
    torch.testing.assert_close(got.spatial_attention.sum(dim=(-2, -1)).cpu(), torch.ones(10, T))
    torch.testing.assert_close(got.task_attention.sum(dim=-1).cpu(), torch.ones(10, T))
