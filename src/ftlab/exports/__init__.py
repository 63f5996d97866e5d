"""``export=<layout>``: a trained checkpoint in the layout the next tool loads, without ftlab.

=========  =====================================================================================
layout     what ``<run>/<layout>/`` holds (the run that wrote the checkpoint), and what loads it
=========  =====================================================================================
merged     ftlab's own: the library model's weights (``timm.create_model(name, num_classes=0)``
           or the Hugging Face model load them), ``head.safetensors``, ``ftlab.json`` (the record)
hf         Hugging Face backbones. Where a transformers head pools as ftlab did (ViT's [CLS]; a
           text model trained with ``model.pooling=cls``): ``AutoModelFor{Image,Sequence}
           Classification.from_pretrained(dir)`` and ``pipeline(...)``, with ``id2label`` and
           the tokenizer or image processor. Otherwise, for text (mean-pooled encoders such as
           MiniLM): the sentence-transformers layout, ``SentenceTransformer(dir)`` = Transformer
           + Pooling + the head as Dense modules (features as ``sentence_embedding``, logits as
           ``logits``); the encoder sits in ``0_Transformer/``, so transformers' auto classes
           and ``pipeline`` refuse the folder instead of loading it with a random head
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

from ftlab.exports.job import TOLERANCE, Export, predict, sample_inputs
from ftlab.exports.task import EXPORTS, LAYOUTS, export, export_checkpoint
from ftlab.runinfo import RunInfo

__all__ = [
    "EXPORTS",
    "LAYOUTS",
    "TOLERANCE",
    "Export",
    "RunInfo",
    "export",
    "export_checkpoint",
    "predict",
    "sample_inputs",
]
