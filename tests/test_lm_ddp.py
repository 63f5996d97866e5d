"""task=causal_lm under DDP: train.py with trainer=ddp_cpu (two gloo ranks) on a tiny random
Llama keeps the ranks' trainable weights identical, at every phase and at the end."""

from __future__ import annotations

import pytest

from tests.conftest import read_metrics, run_cli
from tests.lm_tiny import tiny_causal_dir
from tests.test_lm_train import TINY

CASES = {
    # Gradual unfreezing from the top: blocks unfrozen in later epochs must be all-reduced too
    # (DDP registers every parameter; ftlab freezes by plan after wrapping). Packed rows: each
    # rank packs its own batch, and every rank still takes the same number of steps.
    "gradual_packed": ["data=chatterbot", "data.packing=true", "freeze=gradual"],
    "lora": ["data=bbc_topic", "data.max_chars=80", "freeze=peft", "freeze.method=lora"],
}


@pytest.mark.slow
@pytest.mark.ddp
@pytest.mark.parametrize("case", list(CASES))
def test_ddp_cpu_causal_lm_keeps_ranks_identical(tmp_path, case):
    tiny = tiny_causal_dir(tmp_path)
    run_dir = tmp_path / "run"
    done = run_cli(
        "train.py", *TINY, f"model.weights={tiny}", *CASES[case], "trainer=ddp_cpu",
        "trainer.max_epochs=2", run_dir=run_dir,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = read_metrics(run_dir)
    assert metrics["status"] == "completed" and metrics["task"] == "causal_lm"
    assert metrics["world_size"] == 2
    sums = metrics["rank_checksums"]
    assert len(sums) == 2 and len(set(sums)) == 1, sums
    assert len(metrics["phases"]) == (2 if case == "gradual_packed" else 1)
    for phase in metrics["phases"]:
        assert len(phase["rank_checksums"]) == 2 and len(set(phase["rank_checksums"])) == 1
    if case == "lora":  # rank 0 alone writes the adapter
        assert metrics["adapter"]["task_type"] == "CAUSAL_LM"
        assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
