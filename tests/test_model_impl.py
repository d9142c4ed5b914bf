"""The whole model with the Triton kernels (Triton's interpreter on CPU) against the reference path."""

from __future__ import annotations

import pytest
import torch
from helpers import make_corpus, make_episode, randomize_adapters

import taskadapter_fast as taf

pytestmark = pytest.mark.triton


def _pair(**overrides):
    torch.manual_seed(0)
    reference = taf.create_model("tiny", impl="reference", **overrides)
    fast = taf.create_model("tiny", impl="triton", **overrides)
    fast.load_state_dict(reference.state_dict())
    return reference, fast


def test_triton_model_matches_reference_forward_and_training_losses():
    reference, fast = _pair()
    randomize_adapters(reference)
    fast.load_state_dict(reference.state_dict())
    support, labels, query, query_labels, names = make_episode(num_classes=2, shots=1, queries=1)
    corpus = make_corpus(2)
    losses = {"reference": [], "triton": []}
    for name, model in (("reference", reference), ("triton", fast)):
        model.train()
        optimizer = torch.optim.SGD(model.trainable_parameters(), lr=0.05)
        for _ in range(3):
            loss = model.loss(model(support, labels, query, names, corpus), query_labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses[name].append(loss.item())
    assert losses["reference"][-1] != losses["reference"][0]  # the steps did change the model
    torch.testing.assert_close(torch.tensor(losses["triton"]), torch.tensor(losses["reference"]), rtol=1e-4, atol=1e-5)
    for (name, a), b in zip(reference.state_dict().items(), fast.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)


def test_checkpoints_are_the_same_files_for_either_implementation(tmp_path):
    reference, fast = _pair()
    randomize_adapters(reference)
    path = taf.save_adapters(reference, tmp_path / "a.safetensors")
    loaded = taf.create_model(checkpoint=path, impl="triton")
    assert loaded.config.impl == "triton"
    for (name, a), b in zip(reference.state_dict().items(), loaded.state_dict().values(), strict=True):
        if not name.startswith("clip."):
            assert torch.equal(a, b), name


def test_forcing_triton_globally_leaves_long_spatial_axes_to_the_reference(monkeypatch):
    # The demo model's 65 tokens (64 patches + class) are longer than the short-axis kernel takes: TAF_IMPL=triton
    # must still run the whole model, Triton on the short axes and the reference on the spatial one.
    torch.manual_seed(0)
    reference = taf.create_model("demo", impl="reference")
    randomize_adapters(reference)
    videos = torch.randn(2, reference.config.num_frames, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference.encode_videos(videos)
        monkeypatch.setenv(taf.ops.ENV_IMPL, "triton")
        forced = taf.create_model("demo")  # impl="auto", which TAF_IMPL turns into "triton"
        forced.load_state_dict(reference.state_dict())
        got = forced.encode_videos(videos)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
