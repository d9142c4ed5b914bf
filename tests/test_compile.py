"""torch.compile of the whole model gives the eager scores (the ops are torch.library custom ops, docs/method.md §9.1).

On CPU the tiny model is compiled with the "aot_eager" backend: Dynamo captures the graphs and AOTAutograd
traces them (functionalization, the custom-op registrations), the part that breaks when model code is not
traceable, while the captured graphs still run eagerly. Inductor would also generate and build C++ for them,
about 80 s for this model on a 2-core CPU against about 10 s for aot_eager, and is what the GPU case uses.
"""

from __future__ import annotations

import pytest
import torch
from helpers import make_corpus, make_episode, randomize_adapters

import taskadapter_fast as taf

HAS_CUDA = torch.cuda.is_available()


def _scores(model, episode, corpus, compile_backend: str | None = None) -> torch.Tensor:
    support, labels, query, _, names = episode
    run = model if compile_backend is None else torch.compile(model, backend=compile_backend)
    with torch.no_grad():
        return run(support, labels, query, names, corpus)


@pytest.mark.parametrize("impl", ["reference", "auto"])
def test_compiled_tiny_model_gives_the_eager_scores(impl):
    """impl="reference" is the literal formulation; "auto" on CPU the restructured one (model/visual.py)."""
    torch.compiler.reset()
    torch.manual_seed(0)
    model = randomize_adapters(taf.create_model("tiny", impl=impl)).eval()
    episode, corpus = make_episode(num_classes=3, shots=1, queries=1), make_corpus(3)
    eager = _scores(model, episode, corpus)
    compiled = _scores(model, episode, corpus, compile_backend="aot_eager")
    assert compiled.shape == eager.shape == (3, 3)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.triton
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU: inductor with the Triton kernels")
def test_compiled_triton_model_gives_the_eager_scores_under_inductor():
    torch.compiler.reset()
    torch.manual_seed(0)
    model = randomize_adapters(taf.create_model("tiny", impl="triton", device="cuda")).eval()
    support, labels, query, query_labels, names = make_episode(num_classes=3, shots=1, queries=1)
    episode = (support.cuda(), labels.cuda(), query.cuda(), query_labels.cuda(), names)
    corpus = make_corpus(3)
    eager = _scores(model, episode, corpus)
    compiled = _scores(model, episode, corpus, compile_backend="inductor")
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)
