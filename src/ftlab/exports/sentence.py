"""sentence-transformers layout (``export=hf`` of a text model whose pooling no transformers
classifier reproduces): Transformer + Pooling + the head as Dense modules.

The Transformer module is kept in ``0_Transformer/``, not in the folder's root where
sentence-transformers puts it by default. A root ``config.json`` lets transformers' auto classes
and ``pipeline("text-classification")`` load the folder as a BERT classifier with a *random*
head (``classifier.weight | MISSING``) that answers one label for every text: transformers has
no sequence classifier that mean-pools. Without it they refuse the folder (no ``config.json``),
and sentence-transformers, which reads each module from the path in ``modules.json``, loads it
as before."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from torch import nn

from ftlab.exports.job import SAMPLE_TEXTS, Export, head_layers, max_length, quiet


def write_sentence_transformers(job: Export) -> None:
    """sentence-transformers: the encoder (Transformer), ftlab's pooling (Pooling) and the head
    as Dense modules writing ``logits``; ``sentence_embedding`` stays the pooled features."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Pooling, Transformer

    backbone = job.backbone
    limit = max_length(backbone, job.run)
    with tempfile.TemporaryDirectory() as base, quiet("sentence_transformers"):
        _save_encoder(backbone, Path(base))
        encoder = Transformer(base, max_seq_length=limit)
        pooling = Pooling(backbone.num_features, pooling_mode=backbone.pooling)
        modules = [encoder, pooling, *_dense_head(job, Dense)]
        SentenceTransformer(modules=modules, device="cpu").save(str(job.out))
        _encoder_out_of_root(job.out)
        loaded = SentenceTransformer(str(job.out), device="cpu").eval()
        outputs = loaded(loaded.preprocess(list(SAMPLE_TEXTS)))
    features = backbone(job.inputs)
    got = float((outputs["sentence_embedding"] - features).abs().max())
    job.check(outputs["logits"], "SentenceTransformer(dir)")
    job.notes.append(
        f"sentence_embedding is ftlab's pooled features (max |difference| {got:.3g} on the "
        "same batch); logits is the head's output. transformers' auto classes and "
        "pipeline() refuse this folder (no config.json in its root): no transformers "
        "classifier pools as this model was trained, and they would load a random head."
    )
    job.written, job.library = "sentence-transformers", "sentence-transformers"
    job.usage = "\n".join(
        [
            "from sentence_transformers import SentenceTransformer",
            f'model = SentenceTransformer("{job.shown}")',
            "features = model.encode(texts)  # the pooled features the head reads",
            "out = model(model.preprocess(texts))  # out['logits']: class scores, a row a text",
        ]
    )


ENCODER_DIR = "0_Transformer"
# What SentenceTransformer.save writes in the root for the model as a whole; the rest of the
# root (config.json, weights, tokenizer, sentence_bert_config.json) is the Transformer's.
ROOT_FILES = {"modules.json", "config_sentence_transformers.json", "README.md"}


def _encoder_out_of_root(out: Path) -> None:
    """Move the Transformer module from the root into ``0_Transformer/`` (module docstring)."""
    modules = json.loads((out / "modules.json").read_text())
    first = modules[0]
    if first.get("path") or not first.get("type", "").endswith("Transformer"):
        raise ValueError(f"sentence-transformers saved an unexpected first module: {first}")
    encoder = out / ENCODER_DIR
    encoder.mkdir()
    for path in list(out.iterdir()):
        if path.is_file() and path.name not in ROOT_FILES:
            shutil.move(str(path), str(encoder / path.name))
    first["path"] = ENCODER_DIR
    (out / "modules.json").write_text(json.dumps(modules, indent=2) + "\n")


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
