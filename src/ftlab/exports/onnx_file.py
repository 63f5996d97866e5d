"""``export=onnx``: ``model.onnx`` and ``model.json``, checked with onnxruntime."""

from __future__ import annotations

import json
from typing import Any

import torch
from torch import Tensor, nn

from ftlab.exports.job import Export, max_length, quiet

# One .onnx file holds at most 2 GiB (protobuf); larger models keep weights in model.onnx.data.
ONNX_FILE_LIMIT = 1_900_000_000


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
    with quiet("onnx_ir", "onnxscript"):  # INFO lines per optimization pass
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
            f'session = onnxruntime.InferenceSession("{job.shown}/model.onnx")',
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
