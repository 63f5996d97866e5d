"""``averaging=ema|swa`` on real Lightning runs: the checkpoint holds torch's average computed by
hand from the weights recorded after every step, parameters frozen until a phase are averaged
from when they change, the average is what is validated, tested and kept as best, the raw
weights' scores sit beside it in metrics.json, and a resume continues the average exactly."""

from __future__ import annotations

import signal
from typing import Any, ClassVar

import lightning as L
import pytest
import torch
from conftest import FAST, read_metrics, run_cli
from test_faults import ENV, pause, start, wait_for

from ftlab import compose
from ftlab.checkpoints import load_checkpoint
from ftlab.errors import FtlabError
from ftlab.evaluation.loop import evaluate
from ftlab.module import Classifier
from ftlab.train import train

# Three epochs of three steps; freeze=gradual trains the head (epoch 0), + layer4.0 (epoch 1),
# + layer3.0 (epoch 2); everything below layer3 stays frozen. val/loss picks the best checkpoint,
# a continuous score that tells the average from the raw weights.
RUN = [
    *FAST,
    "trainer.max_epochs=3",
    "freeze=gradual",
    "optimizer.lr=1e-2",
    "optimized_metric=val/loss",
    "optimized_mode=min",
    "+callbacks.record._target_=test_averaging.Recorder",
]
LAYER4, FROZEN = "backbone.model.layer4.", ("backbone.model.layer1.", "backbone.model.conv1.")


class Recorder(L.Callback):
    """Test hook: the module's state before training and after every optimizer step."""

    start: ClassVar[dict[str, torch.Tensor]] = {}
    steps: ClassVar[list[dict[str, torch.Tensor]]] = []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        Recorder.start, Recorder.steps = _state(pl_module), []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        Recorder.steps.append(_state(pl_module))


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _floats(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if v.is_floating_point()}


def _scores(cfg: Any, ckpt: dict[str, Any], key: str) -> dict[str, dict[str, float]]:
    """val and test metrics of the checkpoint's ``key`` weights, outside Lightning."""
    module = Classifier.from_checkpoint(ckpt)
    module.load_state_dict(ckpt[key])
    data = compose.data(cfg, module.backbone.input_spec)
    data.prepare_data()
    data.setup("fit")
    loaders = {"val": data.val_dataloader(), "test": data.test_dataloader()}
    return {name: evaluate(module, loader, 10, limit=2) for name, loader in loaders.items()}


def test_ema_is_torchs_ema_of_the_steps_and_is_what_is_validated_and_tested(make_cfg, tmp_path):
    decay = 0.6
    cfg = make_cfg(*RUN, "averaging=ema", f"averaging.decay={decay}")
    train(cfg)
    metrics = read_metrics(tmp_path)
    assert metrics["averaging"]["kind"] == "ema" and metrics["averaging"]["updates"] == 9
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)

    # By hand: EMA_1 = w_1, EMA_t = lerp(EMA_{t-1}, w_t, 1 - decay), over all 9 steps.
    hand = _floats(Recorder.steps[0])
    for step in Recorder.steps[1:]:
        hand = {k: torch.lerp(v, step[k], 1 - decay) for k, v in hand.items()}
    for key, value in hand.items():
        torch.testing.assert_close(last["state_dict"][key], value, rtol=1e-6, atol=1e-7)
    raw = last["current_model_state"]
    assert all(torch.equal(raw[k], v) for k, v in Recorder.steps[-1].items())
    moved = max((raw[k] - v).abs().max().item() for k, v in hand.items())
    assert moved > 1e-3, "the average equals the raw weights: nothing was averaged"

    # layer4 is frozen for epoch 0 (steps 1-3): its EMA started at its pretrained value when it
    # began to change, i.e. an EMA over steps 4-9 from θ₀; what never trains stays θ₀ exactly.
    layer4 = [k for k in hand if k.startswith(LAYER4) and "running" not in k]
    assert layer4 and all(torch.equal(Recorder.steps[2][k], Recorder.start[k]) for k in layer4)
    for key in layer4:
        late = Recorder.start[key]
        for step in Recorder.steps[3:]:
            late = torch.lerp(late, step[key], 1 - decay)
        torch.testing.assert_close(last["state_dict"][key], late, rtol=1e-6, atol=1e-7)
        assert not torch.equal(late, Recorder.start[key])
    frozen = [k for k in hand if k.startswith(FROZEN)]
    assert frozen and all(torch.equal(last["state_dict"][k], Recorder.start[k]) for k in frozen)

    # The best checkpoint (by the average's val/loss) holds the average; its test is the run's
    # test, and the raw weights saved with it give metrics.json's averaging.raw.
    best = load_checkpoint(metrics["best_checkpoint"])
    averaged, raw_scores = (
        _scores(cfg, best, "state_dict"),
        _scores(cfg, best, "current_model_state"),
    )
    best_score = next(
        v["best_model_score"] for k, v in best["callbacks"].items() if "val/loss" in k
    )
    assert float(best_score) == pytest.approx(averaged["val"]["loss"], rel=1e-5)
    for stage in ("val", "test"):
        assert metrics[stage]["loss"] == pytest.approx(averaged[stage]["loss"], rel=1e-5)
        got = metrics["averaging"]["raw"][stage]["loss"]
        assert got == pytest.approx(raw_scores[stage]["loss"], rel=1e-5)
        assert abs(averaged[stage]["loss"] - raw_scores[stage]["loss"]) > 1e-5


def test_swa_averages_equally_from_the_last_phase(make_cfg, tmp_path):
    train(make_cfg(*RUN, "averaging=swa"))
    metrics = read_metrics(tmp_path)
    # The last phase starts at epoch 2: its 3 steps are averaged, none of a frozen layer3.
    assert metrics["averaging"] | {"raw": None} == {
        "kind": "swa",
        "start_epoch": 2,
        "updates": 3,
        "raw": None,
    }
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    steps = Recorder.steps[6:]
    for key in _floats(steps[0]):
        mean = sum(step[key] for step in steps) / len(steps)
        torch.testing.assert_close(last["state_dict"][key], mean, rtol=1e-5, atol=1e-6)
    frozen = [k for k in last["state_dict"] if k.startswith(FROZEN)]
    assert frozen and all(torch.equal(last["state_dict"][k], Recorder.start[k]) for k in frozen)


REFUSED = {
    "swa counting frozen steps": (
        ["averaging=swa", "averaging.start_epoch=1"],
        r"^averaging.start_epoch=1 is before epoch 2, where the last phase starts training",
    ),
    "never updated": (
        ["averaging=ema", "averaging.start_epoch=3"],
        r"^averaging.start_epoch=3 but trainer.max_epochs=3: no step would be averaged",
    ),
    "unknown key": (["averaging=ema", "+averaging.decya=0.9"], r"^averaging.decya is not an"),
}


@pytest.mark.parametrize("overrides, match", REFUSED.values(), ids=REFUSED)
def test_refused_before_training(make_cfg, tmp_path, overrides, match):
    with pytest.raises(FtlabError, match=match) as error:
        train(make_cfg(*RUN, *overrides))
    assert "\n" not in str(error.value)
    assert not (tmp_path / "checkpoints").exists()


COMMON = [*FAST, "trainer.limit_train_batches=4", "freeze=gradual", "deterministic=true"]
EMA = ["averaging=ema", "averaging.decay=0.7", "optimizer.lr=1e-2"]


@pytest.mark.slow
def test_resume_after_sigterm_continues_the_average_exactly(tmp_path):
    reference = tmp_path / "reference"
    done = run_cli("train.py", *COMMON, *EMA, run_dir=reference, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir, marker = tmp_path / "run", tmp_path / "paused"
    proc = start(*COMMON, *EMA, *pause(6, marker), run_dir=run_dir)  # epoch 1, step 2 of 4
    wait_for(marker, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143, proc.communicate()[1][-3000:]
    resumed = run_cli("train.py", *COMMON, *EMA, "resume=true", run_dir=run_dir, env=ENV)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    final, expected = (torch.load(d / "checkpoints" / "last.ckpt") for d in (run_dir, reference))
    for part in ("state_dict", "current_model_state", "averaging_state"):
        differ = [k for k, v in expected[part].items() if not torch.equal(final[part][k], v)]
        assert not differ, f"{part}: {len(differ)} tensors differ, e.g. {differ[:3]}"
    ours, theirs = read_metrics(run_dir), read_metrics(reference)
    assert ours["averaging"] == theirs["averaging"] and ours["averaging"]["updates"] == 8
    assert ours["test"] == theirs["test"]
