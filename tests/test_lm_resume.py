"""task=causal_lm resumes exactly after SIGKILL: train.py runs on a tiny random Llama are killed
mid-epoch and during validation, with a checkpoint after every step, and ``resume=true`` ends
with the uninterrupted run's validation loss and, bit for bit, its weights (as the classifier
kill tests in tests/test_kills.py)."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import read_metrics, run_cli
from tests.lm_tiny import tiny_causal_dir
from tests.test_faults import ENV, pause, start, wait_for
from tests.test_lm_train import TINY

# 24 examples in batches of 8: 3 steps an epoch, 3 epochs; gradual unfreezing (a new phase
# every epoch) or LoRA; dropout in the attention (and LoRA's) so that the RNG's state matters.
STEPS = 3
RUN = [
    *TINY, "data=bbc_topic", "data.max_chars=80", "trainer.max_epochs=3",
    "deterministic=true", "callbacks.last_checkpoint.every_n_train_steps=1",
    "+model.attention_dropout=0.2",
]  # fmt: skip
METHODS = {
    "gradual": ["freeze=gradual"],
    "lora": ["freeze=peft", "freeze.method=lora", "+freeze.peft.lora_dropout=0.2"],
}
# (stage, global step) of each SIGKILL, in turn, in one run directory.
# Mid-epoch 1, before step 5's save: step 4's. During the last epoch's validation: step 8's
# (step 9's waits for the epoch end).
KILLS = [("train", STEPS + 2), ("val", 3 * STEPS)]


def final_state(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)


@pytest.mark.slow
@pytest.mark.parametrize("method", list(METHODS))
def test_sigkill_mid_epoch_and_in_validation_resumes_to_the_same_weights(tmp_path, method):
    tiny = tiny_causal_dir(tmp_path)
    run = [*RUN, *METHODS[method], f"model.weights={tiny}"]
    reference = tmp_path / "reference"
    done = run_cli("train.py", *run, run_dir=reference, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = tmp_path / "run"
    for number, (stage, step) in enumerate(KILLS):
        marker = tmp_path / f"paused{number}"
        resume = ["resume=true"] if number else []
        proc = start(*run, *resume, *pause(step, marker, stage), run_dir=run_dir)
        wait_for(marker, proc, timeout=300)
        proc.kill()
        proc.communicate(timeout=60)
    resumed = run_cli("train.py", *run, "resume=true", run_dir=run_dir, env=ENV)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ours, theirs = read_metrics(run_dir), read_metrics(reference)
    assert ours["status"] == "completed"
    assert ours["val"]["loss"] == pytest.approx(theirs["val"]["loss"], rel=1e-6)
    assert [p["unfrozen"] for p in ours["phases"]] == [p["unfrozen"] for p in theirs["phases"]]
    final, expected = final_state(run_dir), final_state(reference)
    assert final["global_step"] == expected["global_step"] == 3 * STEPS
    differ = [k for k, v in expected["state_dict"].items()
              if not torch.equal(final["state_dict"][k], v)]  # fmt: skip
    assert not differ, f"{len(differ)} tensors differ from the uninterrupted run's: {differ[:3]}"
    log = (run_dir / "train.log").read_text()
    assert "resumed mid-epoch: epoch 1 continues after its first 1 batches" in log
    assert "resumed mid-epoch: epoch 2 continues after its first 2 batches" in log
