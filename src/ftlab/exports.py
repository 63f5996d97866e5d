"""``export=<layout>``: a trained checkpoint in the layout the next tool loads, without ftlab.

=========  =====================================================================================
layout     what the directory ``<output_dir>/<layout>/`` holds, and what loads it
=========  =====================================================================================
merged     ftlab's own: the library model's weights (``timm.create_model(name, num_classes=0)``
           or the Hugging Face model load them), ``head.safetensors``, ``ftlab.json`` (the record)
hf         Hugging Face backbones. Where a transformers head pools as ftlab did (ViT's [CLS]; a
           text model trained with ``model.pooling=cls``): ``AutoModelFor{Image,Sequence}
           Classification.from_pretrained(dir)`` and ``pipeline(...)``, with ``id2label`` and
           the tokenizer or image processor. Otherwise, for text (mean-pooled encoders such as
           MiniLM): the sentence-transformers layout, ``SentenceTransformer(dir)`` = Transformer
           + Pooling + the head as Dense modules (features as ``sentence_embedding``, logits as
           ``logits``)
timm       timm backbones: timm's Hub layout (``config.json`` with ``num_classes``,
           ``label_names``, ``pretrained_cfg``; ``model.safetensors``):
           ``timm.create_model("local-dir:<dir>", pretrained=True)`` builds it with the head
onnx       any backbone: ``model.onnx`` (``torch.onnx``, dynamic batch; dynamic sequence length
           for text), ``model.json`` (classes, inputs, preprocessing) and, for text, the tokenizer
=========  =====================================================================================

LoRA adapters are folded into their layers first: every layout holds merged weights. Each export
is loaded back by its tool before the command ends, and its logits on a batch are compared with
ftlab's, computed from the checkpoint before merging: the largest difference is logged and
written to the model card ``README.md`` (layout, data, classes, freezing schedule, metrics from
the run's ``metrics.json``, the command, the ftlab version). No layout needs
``trust_remote_code``: every class named in them belongs to the loading library.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import io
import json
import logging
import math
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import yaml
from omegaconf import DictConfig
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

import ftlab
from ftlab.adapters import merge_lora
from ftlab.adapters.lora import cpu_state
from ftlab.checkpoints import load_checkpoint, restore_module
from ftlab.errors import FtlabError
from ftlab.record import ModelRecord, restore_backbone

log = logging.getLogger("ftlab")

EXPORTS = {
    "merged": "ftlab's own layout (library model weights, head, record)",
    "hf": "Hugging Face: transformers classifier or sentence-transformers",
    "timm": "timm's Hub layout",
    "onnx": "ONNX, for onnxruntime and serving runtimes",
}
KIND_OF = {"hf": "hf", "timm": "timm"}  # layouts that need one backbone kind
# One .onnx file holds at most 2 GiB (protobuf); larger models keep weights in model.onnx.data.
ONNX_FILE_LIMIT = 1_900_000_000
TOLERANCE = 1e-4  # the largest |logit difference| an export may show against ftlab (float32)
SAMPLE_TEXTS = (
    "The central bank raised interest rates again this quarter.",
    "A late goal settled the cup final.",
    "The new phone ships with a faster chip and a larger battery, reviewers said.",
    "Parliament debated the budget until midnight.",
)
SAMPLE_BATCH = 4
# transformers classifiers whose head reproduces ftlab's [CLS] pooling + linear head, by
# model_type: how the ftlab head goes in (see _vit_head, _bert_head).
CLS_HEADS: dict[str, Callable[[nn.Module, nn.Linear], list[str]]] = {}
# BERT's classifier runs tanh(pooler(CLS)); a pooler of ε·I and a classifier of W/ε give
# W·CLS + b up to a relative (ε·|x|)²/3: below float32 rounding for |x| < 30.
BERT_EPSILON = 1e-4


@dataclass
class RunInfo:
    """What the run that wrote the checkpoint left beside it: metrics.json and Hydra's config.

    All plain data, read as JSON and with ``yaml.safe_load``: shown on the card, never run.
    """

    directory: Path | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)

    @classmethod
    def beside(cls, ckpt_path: Path) -> RunInfo:
        """The run of ``<run>/checkpoints/<file>.ckpt`` (or of a checkpoint in the run itself)."""
        parent = ckpt_path.resolve().parent
        run = parent.parent if parent.name == "checkpoints" else parent
        info = cls(directory=run)
        metrics = run / "metrics.json"
        if metrics.is_file():
            info.metrics = _mapping(json.loads(metrics.read_text()))
        hydra = run / ".hydra"
        if (hydra / "config.yaml").is_file():
            info.config = _mapping(yaml.safe_load((hydra / "config.yaml").read_text()))
        if (hydra / "overrides.yaml").is_file():
            overrides = yaml.safe_load((hydra / "overrides.yaml").read_text())
            info.overrides = [str(o) for o in overrides] if isinstance(overrides, list) else []
        return info

    def data(self, key: str) -> Any:
        data = self.config.get("data")
        return data.get(key) if isinstance(data, Mapping) else None


@dataclass
class Export:
    """One export in progress: the restored model and what the card needs."""

    layout: str
    ckpt_path: Path
    out: Path
    module: nn.Module
    backbone: nn.Module
    record: ModelRecord
    run: RunInfo
    inputs: Any = None  # the batch the export is checked on
    expected: Tensor | None = None  # ftlab's logits on it, before LoRA was merged
    # Filled by the writer:
    written: str = ""  # the layout's name on the card
    library: str = ""
    usage: str = ""  # how to load it, a code block for the card
    notes: list[str] = field(default_factory=list)
    max_diff: float = math.nan

    @property
    def classes(self) -> list[Any]:
        return list(self.record.classes)

    def check(self, logits: Tensor | Any, what: str) -> None:
        """Compare the loaded export's logits with ftlab's; refuse a mismatch."""
        got = torch.as_tensor(logits, dtype=torch.float32).reshape(self.expected.shape)
        self.max_diff = float((got - self.expected).abs().max())
        if not self.max_diff <= TOLERANCE:
            raise FtlabError(
                f"export={self.layout}: {what} gives logits {self.max_diff:.3g} away from ftlab's "
                f"(tolerance {TOLERANCE:g}); report it with ckpt_path={self.ckpt_path}"
            )


def export(cfg: DictConfig) -> Path:
    """The task behind ``export=<layout>`` (``eval.py``, ``ftlab-export``)."""
    layout = str(cfg.export)
    if layout not in EXPORTS:
        raise FtlabError(
            f"export={layout} is unknown: use one of {', '.join(f'export={k}' for k in EXPORTS)}"
        )
    ckpt_path = cfg.get("ckpt_path")
    out = Path(cfg.paths.output_dir) / layout
    return export_checkpoint(ckpt_path, layout, out, _command(layout, ckpt_path))


def _command(layout: str, ckpt_path: Any) -> str:
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return " ".join(["python eval.py", *HydraConfig.get().overrides.task])
    return f"python eval.py export={layout} ckpt_path={ckpt_path}"


def export_checkpoint(ckpt_path: str | None, layout: str, out: Path, command: str = "") -> Path:
    """Write ``ckpt_path`` to ``out`` in ``layout`` (see the module docstring); return ``out``."""
    ckpt = load_checkpoint(ckpt_path)
    record: ModelRecord = ckpt["ftlab"]
    _check_kind(layout, record, str(ckpt_path))
    module, backbone = restore_module(ckpt, str(ckpt_path))
    module.eval()
    job = Export(layout, Path(str(ckpt_path)), out, module, backbone, record, RunInfo())
    job.run = RunInfo.beside(job.ckpt_path)
    job.inputs = sample_inputs(backbone, job.run)
    with torch.no_grad():
        job.expected = predict(module, backbone, job.inputs)  # adapters not merged yet
    merge_lora(backbone.model)  # every layout holds the merged weights
    out.mkdir(parents=True, exist_ok=True)
    from ftlab.backbones.hf_backbone import _no_progress_bar  # transformers' bar per save/load

    with torch.no_grad(), _no_progress_bar():
        WRITERS[layout](job)
    (out / "README.md").write_text(model_card(job, command))
    log.info(
        "export=%s (%s) written to %s; max |logit - ftlab's| on a batch of %d: %.3g",
        layout, job.written, out, job.expected.shape[0], job.max_diff,
    )  # fmt: skip
    return out


def _check_kind(layout: str, record: ModelRecord, where: str) -> None:
    kind = record.backbone.kind
    needed = KIND_OF.get(layout)
    if needed and kind != needed:
        other = next(k for k, v in KIND_OF.items() if v == kind)
        raise FtlabError(
            f"export={layout} needs a {'Hugging Face' if needed == 'hf' else 'timm'} backbone, "
            f"but ckpt_path={where} holds the {kind} model {record.backbone.name}: use "
            f"export={other} (or export=onnx, export=merged)"
        )


def predict(module: nn.Module, backbone: nn.Module, inputs: Any) -> Tensor:
    """ftlab's logits: the head on the backbone's pooled features."""
    return module.head(backbone(inputs)).float()


def sample_inputs(backbone: nn.Module, run: RunInfo) -> Any:
    """A batch like the training data: images at the run's size, or tokenized sentences."""
    spec = backbone.input_spec
    if backbone.modality == "image":
        size = int(run.data("image_size") or spec.size)
        generator = torch.Generator().manual_seed(0)
        return torch.randn(SAMPLE_BATCH, spec.channels, size, size, generator=generator)
    return dict(
        spec.tokenizer(
            list(SAMPLE_TEXTS),
            padding=True,
            truncation=True,
            max_length=max_length(backbone, run),
            return_tensors="pt",
        )
    )


def max_length(backbone: nn.Module, run: RunInfo) -> int:
    """The token limit the run trained with (``data.max_length``), else the backbone's."""
    return int(run.data("max_length") or backbone.input_spec.max_length)


def head_layers(job: Export) -> list[nn.Linear]:
    """The head's linear layers, input first (dropout is off in an export)."""
    return [m for m in job.module.head.modules() if isinstance(m, nn.Linear)]


def _one_linear(job: Export, fix: str) -> nn.Linear:
    layers = head_layers(job)
    if len(layers) != 1:
        raise FtlabError(
            f"export={job.layout}: ckpt_path={job.ckpt_path} has a {len(layers)}-layer head "
            f"({job.record.head.get('kind', '?') if isinstance(job.record.head, Mapping) else '?'})"
            f" and this layout holds one linear layer: {fix}"
        )
    return layers[0]


# --- merged ------------------------------------------------------------------------------------


def write_merged(job: Export) -> None:
    """ftlab's own layout: library model weights, head, and the plain record."""
    model = job.backbone.model
    save_file(
        cpu_state(model.state_dict()), job.out / "model.safetensors", metadata={"format": "pt"}
    )
    save_file(cpu_state(job.module.head.state_dict()), job.out / "head.safetensors")
    record = replace(
        job.record,
        lora=None,
        lora_merged=job.record.lora,
        peft=None,
        peft_merged=job.record.peft,
    )
    (job.out / "ftlab.json").write_text(json.dumps(record.to_dict()))
    job.written, job.library = "ftlab merged", "ftlab"
    loader = (
        f'model = timm.create_model("{job.record.backbone.name}", num_classes=0)'
        if job.record.backbone.kind == "timm"
        else "model = AutoModel.from_config(AutoConfig.from_pretrained(<base>))"
    )
    job.usage = "\n".join(
        [
            loader,
            'model.load_state_dict(load_file("model.safetensors"))',
            'head = nn.Linear(...); head.load_state_dict(load_file("head.safetensors"))',
        ]
    )
    # The files, loaded into a fresh architecture without adapters, give ftlab's logits.
    fresh = restore_backbone(job.record.backbone).eval()
    fresh.model.load_state_dict(load_file(job.out / "model.safetensors"))
    head = copy.deepcopy(job.module.head)
    head.load_state_dict(load_file(job.out / "head.safetensors"))
    job.check(head(fresh(job.inputs)), "model.safetensors + head.safetensors")


# --- timm --------------------------------------------------------------------------------------


def write_timm(job: Export) -> None:
    """timm's Hub layout: ``config.json`` (num_classes, label_names, pretrained_cfg) and
    ``model.safetensors`` of the whole classifier, head included."""
    import timm
    from timm.models import save_for_hf

    linear = _one_linear(job, "use export=onnx or export=merged")
    record = job.record.backbone
    full = timm.create_model(
        record.name, pretrained=False, num_classes=len(job.classes), **record.options
    )
    missing, unexpected = full.load_state_dict(job.backbone.model.state_dict(), strict=False)
    classifier = full.get_classifier()
    head_keys = {k for k in full.state_dict() if k not in job.backbone.model.state_dict()}
    if unexpected or set(missing) != head_keys or not isinstance(classifier, nn.Linear):
        raise FtlabError(
            f"export=timm: {record.name}'s classifier is not one linear layer on its pooled "
            "features; use export=onnx or export=merged"
        )
    classifier.load_state_dict(linear.state_dict())
    size = job.run.data("image_size")
    data_config = {"input_size": (3, int(size), int(size))} if size else None
    save_for_hf(
        full.eval(),
        str(job.out),
        model_config={"label_names": [str(c) for c in job.classes]},
        safe_serialization=True,
        data_config=data_config,
    )
    loaded = timm.create_model(f"local-dir:{job.out}", pretrained=True).eval()
    job.check(loaded(job.inputs), 'timm.create_model("local-dir:...", pretrained=True)')
    job.written, job.library = "timm Hub layout", "timm"
    job.usage = "\n".join(
        [
            "import timm",
            f'model = timm.create_model("local-dir:{job.out}", pretrained=True).eval()',
            "config = timm.data.resolve_data_config({}, model=model)",
            "transform = timm.data.create_transform(**config)",
            "labels = model.pretrained_cfg['label_names']",
        ]
    )


# --- Hugging Face ------------------------------------------------------------------------------


def write_hf(job: Export) -> None:
    """transformers' classifier where its head pools as ftlab did, else sentence-transformers."""
    backbone = job.backbone
    fits = backbone.model_type in CLS_HEADS and len(head_layers(job)) == 1
    if backbone.modality == "text" and not (backbone.pooling == "cls" and fits):
        write_sentence_transformers(job)
        return
    if not fits:
        raise FtlabError(
            f"export=hf: transformers' {backbone.model_type} image classifier does not pool as "
            "ftlab did (or the head is not one linear layer); use export=onnx or export=merged"
        )
    write_transformers(job)


def write_transformers(job: Export) -> None:
    """``AutoModelFor{Image,Sequence}Classification`` with ftlab's head, id2label and the
    tokenizer or image processor."""
    from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification

    backbone = job.backbone
    image = backbone.modality == "image"
    auto = AutoModelForImageClassification if image else AutoModelForSequenceClassification
    config = backbone.model.config.__class__.from_dict(backbone.model.config.to_dict())
    config.id2label = {i: str(c) for i, c in enumerate(job.classes)}
    config.label2id = {str(c): i for i, c in enumerate(job.classes)}
    config.architectures = None
    model = auto.from_config(config).eval()
    missing, unexpected = model.base_model.load_state_dict(
        backbone.model.state_dict(), strict=False
    )
    filled = CLS_HEADS[backbone.model_type](model, _one_linear(job, "use export=onnx"))
    if unexpected or sorted(missing) != sorted(filled):
        raise FtlabError(
            f"export=hf: transformers' {type(model).__name__} does not hold ftlab's "
            f"{backbone.model_type} weights as they are (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}); use export=onnx or export=merged"
        )
    model.save_pretrained(str(job.out))
    preprocessor = backbone.preprocessor
    if not image:
        preprocessor.model_max_length = max_length(backbone, job.run)  # the training limit
    preprocessor.save_pretrained(str(job.out))
    loaded = auto.from_pretrained(str(job.out)).eval()
    job.check(loaded(**_accepted(loaded, job.inputs)).logits, f"{auto.__name__}.from_pretrained")
    task = "image-classification" if image else "text-classification"
    job.written, job.library = f"transformers {type(model).__name__}", "transformers"
    job.usage = "\n".join(
        [
            f"from transformers import {auto.__name__}, pipeline",
            f'model = {auto.__name__}.from_pretrained("{job.out}")',
            f'classify = pipeline("{task}", model="{job.out}")',
        ]
    )
    if backbone.model_type == "bert":
        job.notes.append(
            f"BERT's classifier applies tanh(pooler([CLS])); ftlab trained a linear head on "
            f"[CLS] itself, so the pooler is {BERT_EPSILON:g}·I and the classifier is scaled by "
            f"1/{BERT_EPSILON:g}: the same logits in float32 (fine-tune it further with care)."
        )


def _accepted(model: nn.Module, inputs: Any) -> dict[str, Tensor]:
    if isinstance(inputs, Tensor):
        return {"pixel_values": inputs}
    accepted = inspect.signature(model.forward).parameters
    return {k: v for k, v in inputs.items() if k in accepted}


def _vit_head(model: nn.Module, linear: nn.Linear) -> list[str]:
    """ViTForImageClassification: ``classifier(last_hidden_state[:, 0])``, ftlab's exactly."""
    model.classifier.load_state_dict(linear.state_dict())
    return []


def _bert_head(model: nn.Module, linear: nn.Linear) -> list[str]:
    """BertForSequenceClassification: ``classifier(tanh(pooler(CLS)))``, see BERT_EPSILON."""
    dense = model.base_model.pooler.dense
    width = dense.weight.shape[0]
    dense.weight.copy_(torch.eye(width) * BERT_EPSILON)
    dense.bias.zero_()
    model.classifier.weight.copy_(linear.weight / BERT_EPSILON)
    model.classifier.bias.copy_(linear.bias)
    return ["pooler.dense.bias", "pooler.dense.weight"]  # not in ftlab's backbone: set here


CLS_HEADS.update({"vit": _vit_head, "bert": _bert_head})


def write_sentence_transformers(job: Export) -> None:
    """sentence-transformers: the encoder (Transformer), ftlab's pooling (Pooling) and the head
    as Dense modules writing ``logits``; ``sentence_embedding`` stays the pooled features."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Pooling, Transformer

    backbone = job.backbone
    limit = max_length(backbone, job.run)
    with tempfile.TemporaryDirectory() as base, _quiet("sentence_transformers"):
        _save_encoder(backbone, Path(base))
        encoder = Transformer(base, max_seq_length=limit)
        pooling = Pooling(backbone.num_features, pooling_mode=backbone.pooling)
        modules = [encoder, pooling, *_dense_head(job, Dense)]
        SentenceTransformer(modules=modules, device="cpu").save(str(job.out))
        loaded = SentenceTransformer(str(job.out), device="cpu").eval()
        outputs = loaded(loaded.preprocess(list(SAMPLE_TEXTS)))
    features = backbone(job.inputs)
    got = float((outputs["sentence_embedding"] - features).abs().max())
    job.check(outputs["logits"], "SentenceTransformer(dir)")
    job.notes.append(
        f"sentence_embedding is ftlab's pooled features (max |difference| {got:.3g} on the "
        "same batch); logits is the head's output."
    )
    job.written, job.library = "sentence-transformers", "sentence-transformers"
    job.usage = "\n".join(
        [
            "from sentence_transformers import SentenceTransformer",
            f'model = SentenceTransformer("{job.out}")',
            "features = model.encode(texts)  # the pooled features the head reads",
            "out = model(model.preprocess(texts))  # out['logits']: class scores, a row a text",
        ]
    )


def _save_encoder(backbone: nn.Module, directory: Path) -> None:
    """The merged encoder with its tokenizer, as ``AutoModel`` loads it without warnings: a
    pooler ftlab dropped (it takes no part in ftlab's pooling) is written back as zeros."""
    from transformers import AutoModel

    config = backbone.model.config
    full = AutoModel.from_config(config)
    missing, _ = full.load_state_dict(backbone.model.state_dict(), strict=False)
    for name in missing:
        full.get_parameter(name).data.zero_()
    full.save_pretrained(str(directory))
    backbone.preprocessor.save_pretrained(str(directory))


def _dense_head(job: Export, dense: type) -> list[nn.Module]:
    """ftlab's head as sentence-transformers Dense modules (linear, or linear-GELU-linear)."""
    layers = head_layers(job)
    activations = [nn.GELU() for _ in layers[:-1]] + [nn.Identity()]
    names = ["sentence_embedding", *[f"hidden{i}" for i in range(len(layers) - 1)], "logits"]
    return [
        dense(
            layer.in_features,
            layer.out_features,
            activation_function=activation,
            init_weight=layer.weight.detach().clone(),
            init_bias=layer.bias.detach().clone(),
            module_input_name=names[i],
            module_output_name=names[i + 1],
        )
        for i, (layer, activation) in enumerate(zip(layers, activations, strict=True))
    ]


# --- ONNX --------------------------------------------------------------------------------------


class _Logits(nn.Module):
    """Backbone + head with positional tensor inputs, as ``torch.onnx.export`` traces them."""

    def __init__(self, module: nn.Module, backbone: nn.Module, names: list[str]) -> None:
        super().__init__()
        self.backbone, self.head, self.names = backbone, module.head, names

    def forward(self, *tensors: Tensor) -> Tensor:
        inputs = (
            tensors[0]
            if self.names == ["pixel_values"]
            else dict(zip(self.names, tensors, strict=True))
        )
        return self.head(self.backbone(inputs))


def write_onnx(job: Export) -> None:
    """``model.onnx`` (dynamic batch; dynamic sequence for text), checked with onnxruntime."""
    import onnxruntime

    backbone = job.backbone
    image = backbone.modality == "image"
    names = ["pixel_values"] if image else list(job.inputs)
    tensors = (job.inputs,) if image else tuple(job.inputs[n] for n in names)
    axes = {0: "batch"} if image else {0: "batch", 1: "sequence"}
    size = sum(p.numel() * p.element_size() for p in job.module.parameters())
    with _quiet("onnx_ir", "onnxscript"):  # INFO lines per optimization pass
        _export_onnx(job, names, tensors, axes, external=size > ONNX_FILE_LIMIT)
    session = onnxruntime.InferenceSession(
        str(job.out / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    feeds = {n: t.numpy() for n, t in zip(names, tensors, strict=True)}
    job.check(session.run(["logits"], feeds)[0], "onnxruntime")
    _onnx_config(job, names)
    job.written, job.library = "ONNX", "onnx"
    job.usage = "\n".join(
        [
            "import onnxruntime",
            f'session = onnxruntime.InferenceSession("{job.out}/model.onnx")',
            f"feeds = {{{', '.join(repr(n) + ': ...' for n in names)}}}  # numpy arrays",
            "logits = session.run(['logits'], feeds)[0]",
        ]
    )


def _export_onnx(
    job: Export, names: list[str], tensors: tuple[Tensor, ...], axes: dict, external: bool
) -> None:
    """torch.export's exporter (``dynamo=True``; TorchScript's is deprecated)."""
    torch.onnx.export(
        _Logits(job.module, job.backbone, names).eval(),
        tensors,
        str(job.out / "model.onnx"),
        input_names=names,
        output_names=["logits"],
        dynamic_shapes={"tensors": tuple(axes for _ in names)},  # forward(*tensors)
        dynamo=True,
        external_data=external,
        verbose=False,
    )


@contextmanager
def _quiet(*loggers: str) -> Iterator[None]:
    levels = {name: logging.getLogger(name).level for name in loggers}
    for name in loggers:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # torch.onnx prints its steps
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def _onnx_config(job: Export, names: list[str]) -> None:
    """``model.json``: classes, inputs and the preprocessing the model expects."""
    spec = job.backbone.input_spec
    config: dict[str, Any] = {"classes": job.classes, "inputs": names, "outputs": ["logits"]}
    if job.backbone.modality == "image":
        size = int(job.run.data("image_size") or spec.size)
        config["image"] = {
            "size": size, "mean": list(spec.mean), "std": list(spec.std),
            "interpolation": spec.interpolation, "crop_pct": spec.crop_pct,
        }  # fmt: skip
    else:
        config["text"] = {"max_length": max_length(job.backbone, job.run), "tokenizer": "."}
        spec.tokenizer.save_pretrained(str(job.out))
    (job.out / "model.json").write_text(json.dumps(config, indent=2) + "\n")


WRITERS: dict[str, Callable[[Export], None]] = {
    "merged": write_merged,
    "timm": write_timm,
    "hf": write_hf,
    "onnx": write_onnx,
}


# --- the model card ----------------------------------------------------------------------------


def model_card(job: Export, command: str) -> str:
    """``README.md``: layout, data, classes, schedule, metrics, commands and ftlab version."""
    record, run, backbone = job.record, job.run, job.record.backbone
    lines = [
        "---",
        f"library_name: {job.library}",
        "tags: [ftlab, fine-tuned]",
        "---",
        f"# {backbone.name} fine-tuned with ftlab",
        "",
        f"**Layout: {job.written}** (`export={job.layout}`).",
        "",
        "```python",
        job.usage,
        "```",
        "",
        "## Model",
        f"- base: {backbone.kind} `{backbone.name}`, {_weights(backbone)} "
        f"(`{backbone.weights_id}`)",
        f"- pooling: {getattr(job.backbone, 'pooling', None) or 'timm global pool'}; head: "
        + " → ".join(f"Linear({m.in_features}, {m.out_features})" for m in head_layers(job)),
        f"- checked: max |logit − ftlab's| = {job.max_diff:.3g} on a batch of "
        f"{job.expected.shape[0]} (tolerance {TOLERANCE:g})",
        *[f"- {note}" for note in job.notes],
    ]
    if record.lora:
        lora = record.lora
        lines.append(
            f"- LoRA r={lora['r']} alpha={lora['alpha']:g} on {len(lora['target_modules'])} "
            "modules, merged into the weights"
        )
    if record.peft:
        targets = record.peft["config"]["target_modules"]
        lines.append(f"- peft {record.peft['method']} on {len(targets)} modules, merged in")
    lines += ["", "## Data", *_data_lines(job), "", "## Freezing schedule", *_phase_lines(run)]
    lines += ["", "## Metrics", *_metric_lines(job), "", "## Reproduce", "```bash"]
    if run.overrides or run.config:
        lines.append(" ".join(["python train.py", *run.overrides]))
    lines += [command, "```", "", f"Written by ftlab {ftlab.__version__}.", ""]
    return "\n".join(lines)


def _weights(backbone: Any) -> str:
    if not backbone.pretrained:
        return "random init"
    return f"weights `{backbone.weights}`" if backbone.weights else "weights from the hub"


def _data_lines(job: Export) -> list[str]:
    data = job.run.metrics.get("data") or {}
    target = data.get("target") if isinstance(data, Mapping) else None
    target = target or (job.run.data("_target_") or "unknown (no metrics.json beside it)")
    shown = ", ".join(str(c) for c in job.classes[:50])
    more = f" … ({len(job.classes)} in all)" if len(job.classes) > 50 else ""
    lines = [f"- data: `{target}`", f"- classes ({len(job.classes)}): {shown}{more}"]
    for key in ("image_size", "max_length", "max_train_samples"):
        if job.run.data(key) is not None:
            lines.append(f"- data.{key}: {job.run.data(key)}")
    return lines


def _phase_lines(run: RunInfo) -> list[str]:
    phases = run.metrics.get("phases")
    if not isinstance(phases, list) or not phases:
        freeze = run.config.get("freeze")
        name = freeze.get("name") if isinstance(freeze, Mapping) else None
        return [f"- freeze={name}" if name else "- not recorded (no metrics.json beside it)"]
    lines = ["| epoch | unfrozen | trainable | lr |", "|---|---|---|---|"]
    for phase in phases:
        if not isinstance(phase, Mapping):
            continue
        lrs = phase.get("lr") or {}
        rates = sorted({f"{v:g}" for v in lrs.values()}) if isinstance(lrs, Mapping) else []
        unfrozen = ", ".join(str(g) for g in phase.get("unfrozen") or [])
        lines.append(
            f"| {phase.get('start_epoch', phase.get('epoch'))} | {unfrozen} | "
            f"{phase.get('trainable_params', '')} | {', '.join(rates)} |"
        )
    return lines


def _metric_lines(job: Export) -> list[str]:
    metrics = job.run.metrics
    if not metrics:
        return ["- not recorded (no metrics.json beside the checkpoint)"]
    lines = ["| set | acc | f1 | loss |", "|---|---|---|---|"]
    sets = [("val", metrics.get("val")), ("test", metrics.get("test"))]
    sets += [(f"OOD: {k}", v) for k, v in (metrics.get("ood") or {}).items()]
    for name, values in sets:
        if isinstance(values, Mapping) and values:
            cells = [_number(values.get(k)) for k in ("acc", "f1", "loss")]
            lines.append(f"| {name} | {' | '.join(cells)} |")
    best = metrics.get("best_checkpoint")
    if best and Path(str(best)).resolve() != job.ckpt_path.resolve():
        lines.append(
            f"\nThese are the run's metrics of its best checkpoint ({Path(str(best)).name}); "
            f"this export is of {job.ckpt_path.name}."
        )
    return lines


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else ""


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
