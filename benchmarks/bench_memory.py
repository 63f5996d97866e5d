"""Memory: peak RSS and optimizer-state bytes of four ways to fine-tune the same ViT.

Each case is a real CLI run in its own process (``python train.py``, through
:func:`common.train_cli`), so that one case's peak cannot hide another's: vit_tiny_patch16_224
(random init, 5.7 M parameters) on MNIST at 224 px, batch 32, AdamW, a few optimizer steps,
no validation, checkpoints, logger, test or post-fit evaluations (the process exits when
training ends). The :class:`common.Probe` callback reads, at the end of training, the
process's peak resident set size (``VmHWM``: Linux's ``ru_maxrss`` without its thread-exit
record, see :func:`common.peak_rss_bytes`) and the bytes of every
tensor AdamW holds (``exp_avg``, ``exp_avg_sq``, ``step``: state exists only for parameters
that received a gradient). The data setup before training has a transient peak higher than
full fine-tuning's (MNIST resized to 224 px), which would hide every case, so the probe resets
the peak at ``on_train_start`` (``/proc/self/clear_refs``; ``peak_reset`` says it did): the
value is the peak RSS during training, which includes what the process already held then
(``rss_at_train_start``: imports, model, data, cached features); ``added_by_training`` is the
difference, and ``setup_peak_rss`` the peak before training.

Cases: full fine-tuning (``freeze=none``); linear probe (``freeze=linear_probe``, ftlab's
default cached features: the backbone runs once over the train split without autograd, then the
head trains on the features; gradual phase 0 is the same run, since it caches the same way);
gradual phase 0 with the cache off (``freeze.cache_features=false``: the frozen backbone runs
forward in every step, without an autograd graph); LoRA r=8 on timm's default targets
(qkv, proj, fc1, fc2); full fine-tuning with ``model.grad_checkpointing=true`` (timm's
``set_grad_checkpointing``: block activations are recomputed in the backward pass). Targets:
LoRA's optimizer state <= 5% of full fine-tuning's; gradient checkpointing's added training
peak <= 80% of full fine-tuning's.
"""

from __future__ import annotations

import argparse

from common import report, train_cli

MIB = 2**20
RUN = [
    "model=vit",
    "model.name=vit_tiny_patch16_224",
    "model.pretrained=false",
    "data=mnist",
    "data.batch_size=32",
    "trainer.max_epochs=1",
    "trainer.limit_val_batches=0",
    "test=false",
    "seed=0",
    "logger=none",
    "callbacks=none",
    "trainer.enable_checkpointing=false",
    "+callbacks.bench.exit_at_end=true",  # skip the post-fit validate and evaluations
]
CASES = {
    "full fine-tuning": ["freeze=none"],
    "linear probe (cached)": ["freeze=linear_probe"],
    "gradual phase 0 (no cache)": ["freeze=gradual", "freeze.cache_features=false"],
    "lora r=8": ["freeze=lora", "freeze.r=8"],
    "full fine-tuning, grad checkpointing": ["freeze=none", "model.grad_checkpointing=true"],
}
LORA_TARGET = 0.05
CHECKPOINTING_TARGET = 0.8  # of the memory full fine-tuning's training adds


def measure(name: str, overrides: list[str], samples: int) -> dict:
    run = train_cli([*RUN, f"data.max_train_samples={samples}", *overrides])
    probe = run["probe"]
    steps = len(probe["step_s"])
    if not steps:
        raise RuntimeError(f"{name}: no training step ran")
    return {
        "case": name,
        "overrides": overrides,
        "peak_rss_bytes": probe["peak_rss_bytes"],
        "rss_at_train_start_bytes": probe["rss_at_train_start_bytes"],
        "setup_peak_rss_bytes": probe["peak_rss_at_train_start_bytes"],
        "peak_reset": probe["peak_rss_reset"],
        "optimizer_state_bytes": probe["optimizer_state_bytes"],
        "trainable_params": probe["trainable_params"],
        "total_params": probe["total_params"],
        "steps": steps,
        "feature_cache": bool(probe["feature_cache"] and probe["feature_cache"]["used"]),
    }


def run(quick: bool = False) -> list[dict]:
    # Peak RSS is set by the first step (activations, gradients, the optimizer state appearing);
    # three steps confirm it holds. quick: one step.
    samples = 32 if quick else 96
    measured = {name: measure(name, overrides, samples) for name, overrides in CASES.items()}
    full_state = measured["full fine-tuning"]["optimizer_state_bytes"]
    records = []
    for name, m in measured.items():
        records.append(
            report(
                "memory",
                f"{name} peak RSS",
                m["peak_rss_bytes"] / MIB,
                "MiB",
                "report only",
                None,
                rss_at_train_start_mib=round(m["rss_at_train_start_bytes"] / MIB, 1),
                setup_peak_rss_mib=round(m["setup_peak_rss_bytes"] / MIB, 1),
                added_by_training_mib=round(
                    (m["peak_rss_bytes"] - m["rss_at_train_start_bytes"]) / MIB, 1
                ),
                **{k: v for k, v in m.items() if k != "case"},
            )
        )
    for name, m in measured.items():
        state = m["optimizer_state_bytes"]
        records.append(
            report(
                "memory",
                f"{name} optimizer state",
                state / MIB,
                "MiB",
                "report only",
                None,
                share_of_full=round(state / full_state, 5),
                trainable_params=m["trainable_params"],
                total_params=m["total_params"],
            )
        )
    full, saving = measured["full fine-tuning"], measured["full fine-tuning, grad checkpointing"]
    added = {k: m["peak_rss_bytes"] - m["rss_at_train_start_bytes"] for k, m in measured.items()}
    ratio = added["full fine-tuning, grad checkpointing"] / added["full fine-tuning"]
    records.append(
        report(
            "memory",
            "grad checkpointing / none: training's added peak",
            ratio,
            "ratio",
            f"<= {CHECKPOINTING_TARGET:g}",
            ratio <= CHECKPOINTING_TARGET,
            peak_rss_ratio=round(saving["peak_rss_bytes"] / full["peak_rss_bytes"], 4),
        )
    )
    share = measured["lora r=8"]["optimizer_state_bytes"] / full_state
    records.append(
        report(
            "memory",
            "lora r=8 optimizer state / full",
            share,
            "ratio",
            f"<= {LORA_TARGET:g}",
            share <= LORA_TARGET,
            lora_trainable_params=measured["lora r=8"]["trainable_params"],
            full_trainable_params=measured["full fine-tuning"]["trainable_params"],
        )
    )
    return records


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one step per case")
    run(parser.parse_args().quick)
