"""The embedded default's promise: training beats the untrained model on the novel test classes by a clear
margin (non-overlapping 95% CIs on the same test episodes).

This is `python -m taskadapter_fast.train` with no arguments (the demo preset: same model, dataset, seed and
training schedule) with fewer validation and test episodes, so it fits the suite's time budget; about three
minutes on one core of a 2-core CPU.
"""

from __future__ import annotations

import pytest

from taskadapter_fast.runconfig import resolve_run_config
from taskadapter_fast.training import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.slow
def test_embedded_default_training_beats_the_untrained_model(tmp_path):
    run = resolve_run_config(
        overrides=[f"data.root={tmp_path / 'synthetic'}", "train.val_episodes=20", "train.test_episodes=60"]
    )
    default = resolve_run_config()
    assert (run.model, run.train.epochs, run.train.episodes_per_epoch, run.train.lr, run.train.seed) == (
        default.model,
        default.train.epochs,
        default.train.episodes_per_epoch,
        default.train.lr,
        default.train.seed,
    )
    results = train(run, tmp_path / "run", device="cpu", progress=False)
    trained_low = results["test_accuracy"] - results["test_ci95"]
    untrained_high = results["untrained_test_accuracy"] + results["untrained_test_ci95"]
    assert results["test_episodes"] == 60
    assert trained_low > untrained_high, results
