"""OOD sets, named shifts, WiSE-FT and drift: unit checks on small tensors, then real runs."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from conftest import FAST, ROOT, read_metrics
from torch import nn

from ftlab.backbones.groups import LayerGroup
from ftlab.compose import model_and_data as build_model
from ftlab.data import DigitsDataModule, TextCSVDataModule
from ftlab.errors import FtlabError
from ftlab.evaluate import load_checkpoint
from ftlab.evaluation.drift import linear_cka, merged_state, weight_change
from ftlab.evaluation.loop import evaluate
from ftlab.evaluation.ood import build_ood_sets
from ftlab.evaluation.shifts import IMAGE_SHIFTS, TEXT_SHIFTS, ShiftedImages, shift_texts
from ftlab.evaluation.wise_ft import check_alphas, interpolate, snapshot
from ftlab.specs import ImageSpec, TextSpec
from ftlab.train import train

SPEC = ImageSpec(size=32, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


@pytest.fixture(scope="module")
def digits() -> DigitsDataModule:
    data = DigitsDataModule(SPEC, batch_size=16)
    data.setup()
    return data


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def pixels(image: torch.Tensor) -> torch.Tensor:
    """Undo the normalization of SPEC."""
    return image * torch.tensor(SPEC.std).view(-1, 1, 1) + torch.tensor(SPEC.mean).view(-1, 1, 1)


# -- WiSE-FT interpolation and drift on small modules -----------------------------------------


def test_interpolation_is_exact_at_the_ends_and_keeps_integer_buffers():
    torch.manual_seed(0)
    pretrained = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    tuned = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    tuned.train()(torch.randn(8, 4))  # moves the running stats and num_batches_tracked
    theta0, theta1 = snapshot(pretrained), snapshot(tuned)
    for key, value in interpolate(theta0, theta1, 0.0).items():
        expected = theta0[key] if value.is_floating_point() else theta1[key]
        assert torch.equal(value, expected), key
    assert all(torch.equal(v, theta1[k]) for k, v in interpolate(theta0, theta1, 1.0).items())
    half = interpolate(theta0, theta1, 0.5)
    mean = (theta0["1.running_mean"] + theta1["1.running_mean"]) / 2  # BN stats interpolate too
    assert torch.allclose(half["1.running_mean"], mean)
    assert half["1.num_batches_tracked"] == theta1["1.num_batches_tracked"] == 1


def test_lora_interpolation_is_linear_in_the_merged_weights():
    from peft import LoraConfig, inject_adapter_in_model

    torch.manual_seed(0)
    config = LoraConfig(r=2, lora_alpha=4, target_modules=["0"])
    model = inject_adapter_in_model(config, nn.Sequential(nn.Linear(4, 3)))
    theta0 = snapshot(model)  # peft starts B at zero
    with torch.no_grad():
        for param in model.parameters():  # "fine-tune" the base weights and both adapters
            param.add_(torch.randn_like(param))
    theta1 = snapshot(model)
    merged = {}
    for alpha in (0.0, 0.3, 1.0):
        model.load_state_dict(interpolate(theta0, theta1, alpha))
        merged[alpha] = merged_state(model)["0.base_layer.weight"]
    a, b = theta1["0.lora_A.default.weight"], theta1["0.lora_B.default.weight"]
    assert torch.allclose(merged[1.0], theta1["0.base_layer.weight"] + 2 * b @ a)  # scale 4/2
    assert torch.equal(merged[0.0], theta0["0.base_layer.weight"])
    assert torch.allclose(merged[0.3], torch.lerp(merged[0.0], merged[1.0], 0.3), atol=1e-6)
    assert not any("lora_" in key for key in merged_state(model))


def test_weight_change_per_group():
    before = {"a": torch.ones(4), "b": torch.full((2, 2), 2.0), "c": torch.zeros(3)}
    after = {"a": torch.ones(4), "b": torch.full((2, 2), 3.0), "c": torch.ones(3)}
    groups = [LayerGroup("g0", ("a",)), LayerGroup("g1", ("b",)), LayerGroup("g2", ("c",))]
    assert weight_change(before, after, groups) == {"g0": 0.0, "g1": 0.5, "g2": None}


def test_linear_cka():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 16, generator=gen)
    rotation, _ = torch.linalg.qr(torch.randn(16, 16, generator=gen))
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, 3 * x @ rotation + 1) == pytest.approx(1.0, abs=1e-9)
    assert linear_cka(x, torch.randn(256, 24, generator=gen)) < 0.3
    assert linear_cka(x, torch.ones(256, 4)) is None


# -- shifts -----------------------------------------------------------------------------------


def same(xs: list[torch.Tensor], ys: list[torch.Tensor]) -> bool:
    return all(torch.equal(a, b) for a, b in zip(xs, ys, strict=True))


def shifted_items(base, shift: str, severity: int, seed: int, order=None) -> list[torch.Tensor]:
    data = ShiftedImages(base, shift, severity, seed, SPEC.mean, SPEC.std)
    order = order if order is not None else range(8)
    return [data[i][0] for i in order]


@pytest.mark.parametrize("shift", ["gaussian_noise", "rotation"])
def test_image_shifts_are_deterministic_per_seed_and_sample(digits, shift):
    test = digits.test_dataloader().dataset
    first = shifted_items(test, shift, 3, seed=0)
    assert same(first, shifted_items(test, shift, 3, 0))
    backwards = shifted_items(test, shift, 3, 0, order=range(7, -1, -1))[::-1]
    assert same(first, backwards)  # independent of the order in which samples are read
    assert not same(first, shifted_items(test, shift, 3, seed=1))


@pytest.mark.parametrize("shift", list(IMAGE_SHIFTS))
def test_image_shift_changes_pixels_more_with_severity(digits, shift):
    test = digits.test_dataloader().dataset
    clean = [pixels(test[i][0]) for i in range(8)]
    change = {}
    for severity in (1, 5):
        shifted = [pixels(x) for x in shifted_items(test, shift, severity, seed=0)]
        assert all(x.min() >= -1e-5 and x.max() <= 1 + 1e-5 for x in shifted)  # real pixels
        change[severity] = float(
            torch.stack([(s - c).abs().mean() for s, c in zip(shifted, clean, strict=True)]).mean()
        )
    assert 0 < change[1] < change[5], change


TEXT = " ".join(f"word{i} alpha beta gamma" for i in range(50))


@pytest.mark.parametrize("shift", list(TEXT_SHIFTS))
def test_text_shifts_are_seeded_and_scale_with_severity(shift):
    assert shift_texts([TEXT] * 2, shift, 3, 0) == shift_texts([TEXT] * 2, shift, 3, 0)
    kept = {}
    for severity in (1, 5):
        out = shift_texts([TEXT], shift, severity, 0)[0]
        assert out != TEXT
        intact = sum(a == b for a, b in zip(out, TEXT, strict=False))  # letters left in place
        kept[severity] = intact if shift == "typos" else len(out)
    assert kept[5] < kept[1], kept
    if shift != "truncation":  # truncation draws nothing random
        assert shift_texts([TEXT], shift, 3, 0) != shift_texts([TEXT], shift, 3, 1)


class CharTokenizer:
    """A stand-in tokenizer: one id per character."""

    pad_token_id = 0
    name_or_path = "chars"

    def __call__(self, texts: list[str], truncation: bool, max_length: int) -> dict:
        ids = [[ord(c) % 997 + 1 for c in t[:max_length]] for t in texts]
        return {"input_ids": ids, "attention_mask": [[1] * len(i) for i in ids]}


def test_text_shift_is_applied_before_tokenization(tmp_path):
    path = tmp_path / "t.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(
            [(f"{'good' if i % 2 else 'bad'} film number {i}", i % 2) for i in range(40)]
        )
    data = TextCSVDataModule(TextSpec(CharTokenizer(), 64), path=str(path), batch_size=4)
    data.setup()
    (ood,) = build_ood_sets(["typos:5"], data, TextSpec(CharTokenizer(), 64), seed=0)
    clean, shifted = data.test_dataloader().dataset, ood.loader.dataset
    assert ood.name == "typos_5" and np.array_equal(clean.labels, shifted.labels)
    assert shifted.texts == shift_texts(clean.texts, "typos", 5, 0) != clean.texts
    assert shifted.encodings["input_ids"] != clean.encodings["input_ids"]
    inputs, _ = next(iter(ood.loader))
    assert inputs["input_ids"].shape[0] == 4  # batched and padded like the test loader


# -- building OOD sets from data.ood ----------------------------------------------------------


def test_ood_data_option_uses_its_test_split_at_the_training_size(digits):
    small = DigitsDataModule(SPEC, batch_size=8, image_size=24)
    (ood,) = build_ood_sets([{"config": "digits", "name": "again"}], small, SPEC, seed=0)
    images, _ = next(iter(ood.loader))
    assert ood.name == "again" and images.shape == (8, 3, 24, 24)  # image_size, batch_size followed
    assert len(ood.loader.dataset) == len(digits.test_dataloader().dataset)


def test_ood_classes_mismatch_is_a_one_line_error(digits, tmp_path):
    from PIL import Image

    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        for i in range(8):
            Image.new("RGB", (8, 8), (60 * i, 0, 0)).save(tmp_path / name / f"{i}.png")
    item = {
        "name": "pets",
        "data": {
            "_target_": "ftlab.data.ImageFolderDataModule",
            "root": str(tmp_path),
            "val_fraction": 0.25,
            "test_fraction": 0.25,
        },
    }
    with pytest.raises(
        FtlabError, match=r"data\.ood\[0\] \(pets\) has classes \['cat', 'dog'\]"
    ) as err:
        build_ood_sets([item], digits, SPEC, seed=0)
    assert "\n" not in str(err.value)


BAD_ITEMS = {
    "unknown shift": ({"shift": "fog"}, r"data\.ood\[0\]\.shift=fog is unknown"),
    "severity": ("blur:7", r"data\.ood\[0\]\.severity=7 must be an integer from 1 to 5"),
    "text shift on images": ("typos", r"typos is a text shift but the backbone takes image"),
    "unknown config": ("cifar", r"data\.ood\[0\]\.config=cifar is not a data option: .*mnist"),
    "unknown key": ({"shift": "blur", "sigma": 2}, r"data\.ood\[0\]\.sigma is not an OOD key"),
    "no target": ({"data": {"batch_size": 2}}, r"data\.ood\[0\]\.data needs a _target_"),
    "same name": (["blur", "blur:3"], r"data\.ood\[1\]: the name 'blur_3' is taken"),
}


@pytest.mark.parametrize("item,message", list(BAD_ITEMS.values()), ids=list(BAD_ITEMS))
def test_bad_ood_items_fail_with_one_line(digits, item, message):
    with pytest.raises(FtlabError, match=message):
        build_ood_sets(item if isinstance(item, list) else [item], digits, SPEC, seed=0)


# -- real runs --------------------------------------------------------------------------------


def direct_scores(module, data, ood_sets) -> dict:
    """Accuracies of ``module`` as it is, evaluated directly (limits as in FAST)."""
    return {
        "val_acc": evaluate(module, data.val_dataloader(), 10, limit=2)["acc"],
        "test_acc": evaluate(module, data.test_dataloader(), 10, limit=2)["acc"],
        "ood": {s.name: evaluate(module, s.loader, 10, limit=2)["acc"] for s in ood_sets},
    }


@pytest.mark.slow  # a run, then OOD sets, the WiSE-FT curve and drift
def test_fine_tuning_run_reports_ood_wise_ft_and_drift(make_cfg, tmp_path):
    cfg = make_cfg(
        *FAST,
        "freeze=none",
        "data.ood=[gaussian_noise:5,{config: mnist}]",
        "wise_ft.alphas=[0,1]",
        "wise_ft.save_best=true",
    )
    train(cfg)
    metrics = read_metrics(tmp_path)
    assert list(metrics["ood"]) == ["gaussian_noise_5", "mnist"]
    assert all(m.keys() == {"acc", "f1", "loss"} for m in metrics["ood"].values())

    # Rebuild θ₀ exactly as train() did, and take the trained weights from the best checkpoint.
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module, data = build_model(cfg)
    items, spec = ["gaussian_noise:5", {"config": "mnist"}], module.backbone.input_spec
    ood_sets = build_ood_sets(items, data, spec, cfg.seed)
    tuned = load_checkpoint(metrics["best_checkpoint"])["state_dict"]
    module.head.load_state_dict({k[5:]: v for k, v in tuned.items() if k.startswith("head.")})
    pretrained_row = {"alpha": 0.0, **direct_scores(module, data, ood_sets)}
    theta0 = snapshot(module)
    module.load_state_dict(tuned)
    tuned_row = {"alpha": 1.0, **direct_scores(module, data, ood_sets)}
    wise = metrics["wise_ft"]
    assert wise["rows"] == [pretrained_row, tuned_row]  # exactly
    assert (
        tuned_row["val_acc"] == metrics["val"]["acc"]
        and tuned_row["test_acc"] == metrics["test"]["acc"]
    )
    assert tuned_row["ood"] == {k: v["acc"] for k, v in metrics["ood"].items()}
    assert wise["best_alpha"] in (0.0, 1.0) and wise["head"] == "fine-tuned" and "note" not in wise

    saved = load_checkpoint(str(tmp_path / "wise_ft_best.ckpt"))["state_dict"]
    for key, value in saved.items():  # integer buffers (num_batches_tracked) are fine-tuned
        at_best = theta0 if wise["best_alpha"] == 0 and value.is_floating_point() else tuned
        assert torch.equal(value, at_best[key]), key
    rows = read_csv(tmp_path / "wise_ft.csv")
    assert [r["alpha"] for r in rows] == ["0.0", "1.0"] and "ood_mnist_acc" in rows[0]
    assert (tmp_path / "wise_ft.png").stat().st_size > 0 and (tmp_path / "drift.png").is_file()

    drift = metrics["drift"]
    assert list(drift["weight_change"]) == [g.name for g in module.backbone.layer_groups()]
    assert all(v > 0 for v in drift["weight_change"].values())
    assert 0 < drift["cka"] <= 1 + 1e-9 and drift["cka_samples"] == 32  # 2 val batches
    logged = read_csv(tmp_path / "csv" / "metrics.csv")[0]
    assert {"ood/mnist/acc", "ood/gaussian_noise_5/loss", "drift/cka", "wise_ft/best_alpha"} <= set(
        logged
    )


def test_linear_probe_run_has_no_drift(make_cfg, tmp_path):
    train(make_cfg(*FAST, "freeze=linear_probe", "wise_ft.alphas=[0,1]"))
    metrics = read_metrics(tmp_path)
    assert set(metrics["drift"]["weight_change"].values()) == {0.0}
    assert metrics["drift"]["cka"] == pytest.approx(1.0, abs=1e-9)
    first, last = metrics["wise_ft"]["rows"]
    assert {**first, "alpha": 1.0} == last  # the backbone never moved
    assert "fine-tuned head" in metrics["wise_ft"]["note"] and "ood" not in metrics
    assert len(read_csv(tmp_path / "wise_ft.csv")) == 2


# train.py with a progress line at every batch instead of every LOG_EVERY_S seconds.
TRAIN_EVERY_BATCH = (
    "import ftlab.progress; ftlab.progress.LOG_EVERY_S = 0.0; "
    "from ftlab.cli import train_main; train_main()"
)


@pytest.mark.slow
def test_evaluations_after_fit_log_their_progress_to_train_log(tmp_path):
    """Not in a terminal (stdout is a pipe here), the OOD sets, drift and the WiSE-FT sweep write
    their progress as log lines: a count every LOG_EVERY_S and one line per finished part."""
    run_dir = tmp_path / "run"
    overrides = [
        *FAST,
        "freeze=none",
        "data.ood=[gaussian_noise:5,contrast:2]",
        "wise_ft.alphas=[0,0.5,1]",
        f"hydra.run.dir={run_dir}",
    ]
    done = subprocess.run(
        [sys.executable, "-c", TRAIN_EVERY_BATCH, *overrides],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    log = (run_dir / "train.log").read_text()
    number, seconds = r"\d\.\d+", r"\(\d+\.\d s\)"
    # 2 OOD sets x 2 batches; drift: 2 val batches, twice; WiSE-FT: 3 α x (val, test, 2 OOD) x 2.
    expected = [
        r"OOD sets: 1/4 batches \(25%\), gaussian_noise_5, \d+ s, ~\d+ s left",
        rf"OOD set 1/2 gaussian_noise_5: acc {number}, f1 {number}, loss {number} {seconds}",
        rf"OOD set 2/2 contrast_2: acc {number}",
        r"drift: 1/4 batches \(25%\), fine-tuned features, ",
        r"drift: 3/4 batches \(75%\), pretrained features, ",
        rf"drift: CKA {number} over 32 val samples, weight change of 5 layer groups {seconds}",
        r"WiSE-FT: 1/24 batches \(4%\), α=0 val, ",
        r"WiSE-FT: 12/24 batches \(50%\), α=0.5 test, ",
        rf"WiSE-FT α=0 \(1/3\): val acc {number}, test acc {number}, gaussian_noise_5 acc "
        rf"{number}, contrast_2 acc {number} {seconds}",
        r"WiSE-FT α=0.5 \(2/3\): val acc ",
        r"WiSE-FT α=1 \(3/3\): val acc ",
    ]
    missing = [pattern for pattern in expected if not re.search(pattern, log)]
    assert not missing, f"{missing}\n{log[-4000:]}"


@pytest.mark.parametrize("alphas", [[0, 1.5], 0.5, ["x"]])
def test_bad_wise_ft_alphas_fail_with_one_line(alphas):
    with pytest.raises(
        FtlabError, match=r"wise_ft\.alphas=.* must be a list of numbers in \[0, 1\]"
    ):
        check_alphas(alphas)
