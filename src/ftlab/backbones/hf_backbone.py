"""Hugging Face backbones (``AutoModel``): text encoders pooled by masked mean, ViT by CLS token."""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from torch import Tensor, nn
from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoTokenizer
from transformers.image_utils import PILImageResampling
from transformers.utils import logging as hf_logging

from ftlab.backbones.base import MODEL_PREFIX, Backbone, random_weights_id
from ftlab.backbones.groups import LayerGroup, hf_layer_groups
from ftlab.backbones.hub import hub_access
from ftlab.backbones.names import COMMON_HF_IDS, did_you_mean, is_hf_dir
from ftlab.backbones.weights import resolve_weights
from ftlab.errors import FtlabError
from ftlab.specs import ImageSpec, TextSpec

MAX_TEXT_LENGTH = 512  # longer sequences are rarely worth their quadratic attention cost
# model.pooling for text: the masked mean of the tokens (sentence-transformers' encoders, as
# MiniLM was trained), or the first ([CLS]) token's final hidden state, which a linear
# classification head on [CLS] (ViT's, transformers' BERT head) reproduces on export.
POOLINGS = ("mean", "cls")


def _text_spec(tokenizer: Any, config: Any, label: str) -> TextSpec:
    limits = [tokenizer.model_max_length, MAX_TEXT_LENGTH]
    if getattr(config, "max_position_embeddings", None):
        limits.append(config.max_position_embeddings)
    return TextSpec(tokenizer=tokenizer, max_length=int(min(limits)), name=label)


def _image_spec(processor: Any) -> ImageSpec:
    size = processor.size
    side = size.get("height") or size.get("shortest_edge")
    crop_pct = getattr(processor, "crop_pct", None) or 1.0
    return ImageSpec(
        size=int(side),
        mean=tuple(float(m) for m in processor.image_mean),
        std=tuple(float(s) for s in processor.image_std),
        interpolation=PILImageResampling(processor.resample).name.lower(),
        crop_pct=float(crop_pct),
    )


class HFBackbone(Backbone):
    """A Hugging Face encoder. Text: ``forward({input_ids, attention_mask, ...})``, mean-pooled
    over real tokens (``pooling="cls"``: the first token); images:
    ``forward(pixel_values [B,3,H,W])``, CLS token (spatial mean for convolutional models)."""

    family = "hf"
    adapter_targets = ("query", "value", "q_lin", "v_lin")  # BERT-like; DistilBERT

    def __init__(
        self,
        model: nn.Module,
        preprocessor: Any,
        name: str,
        weights_id: str,
        label: str,
        pooling: str | None = None,
    ):
        # We pool last_hidden_state ourselves; a pooler left in would get no gradient, and DDP
        # fails on parameters that take no part in the loss.
        if getattr(model, "pooler", None) is not None:
            model.pooler = None
        config = model.config
        text = model.main_input_name != "pixel_values"
        spec = _text_spec(preprocessor, config, label) if text else _image_spec(preprocessor)
        super().__init__(
            model,
            name=name,
            modality="text" if text else "image",
            num_features=getattr(config, "hidden_size", None) or config.hidden_sizes[-1],
            weights_id=weights_id,
            input_spec=spec,
        )
        self.model_type: str = config.model_type
        self.preprocessor = preprocessor  # tokenizer or image processor: export=hf saves it
        self.pooling = _pooling(pooling, text, convolutional=hasattr(config, "hidden_sizes"))
        # DistilBERT takes no token_type_ids; pass only what forward accepts.
        self._accepted = frozenset(inspect.signature(model.forward).parameters)

    def forward(self, inputs: Tensor | Mapping[str, Tensor]) -> Tensor:
        if self.modality == "image":
            hidden = self.model(pixel_values=inputs).last_hidden_state
            return hidden[:, 0] if hidden.ndim == 3 else hidden.mean(dim=(2, 3))
        kwargs = {k: v for k, v in inputs.items() if k in self._accepted}
        hidden = self.model(**kwargs).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)

    def layer_groups(self) -> list[LayerGroup]:
        return hf_layer_groups(self.model, self.model_type, MODEL_PREFIX)

    def set_grad_checkpointing(self) -> None:
        if not self.model.supports_gradient_checkpointing:
            raise FtlabError(
                f"model.grad_checkpointing: transformers has no gradient checkpointing for "
                f"{self.model_type}: set model.grad_checkpointing=false"
            )
        # Non-reentrant: works when the inputs need no grad (a frozen embedding) and with DDP.
        enable = getattr(self.model, "activation_checkpointing_enable", None)  # transformers 5.x
        if enable is not None:
            enable({"use_reentrant": False})
        else:
            self.model.gradient_checkpointing_enable({"use_reentrant": False})


def _pooling(given: str | None, text: bool, convolutional: bool) -> str:
    """``model.pooling``: text models take mean (default) or cls; image models pool as their
    transformers classification head does (ViT: cls; convolutional: the spatial mean)."""
    own = "mean" if text or convolutional else "cls"
    if given is None or given == own:
        return own
    if text and given in POOLINGS:
        return given
    choices = ", ".join(POOLINGS) if text else f"{own} (this image model's own pooling)"
    raise FtlabError(f"model.pooling={given!r} must be one of {choices}, or null")


def _hub_message(name: str, reason: str) -> str:
    fix = (
        "set model.weights to a local copy (a save_pretrained directory); model.pretrained=false "
        "does not help, it still needs the hub for the config and tokenizer"
    )
    loading = f"could not load model.name={name!r} from the Hugging Face hub ({reason})"
    if name in COMMON_HF_IDS:
        return f"{loading}: {fix}"
    typo = did_you_mean(name) or "no similar timm or Hugging Face name found."
    return f"{loading}. If the name is a typo: {typo} If it is a hub id: {fix}"


def build_hf_backbone(
    name: str, pretrained: bool = True, weights: str | None = None, **extra: Any
) -> HFBackbone:
    """A Hugging Face backbone from the hub, a local directory or a weights package.

    ``model.pretrained=false`` keeps the architecture and tokenizer but initialises randomly.
    ``extra`` options override config attributes (e.g. ``hidden_dropout_prob``).
    """
    pooling = extra.pop("pooling", None)  # ftlab's own option, not a config attribute
    spec = weights if weights is not None else (name if is_hf_dir(name) else None)
    if spec is None:
        location, label = name, "hub"
    else:
        source = resolve_weights(spec, name)
        if not source.path.is_dir():
            raise FtlabError(
                f"model.weights={spec!r}: a Hugging Face model needs a directory with "
                "config.json (as written by save_pretrained), not a single file"
            )
        location, label = str(source.path), source.label

    def message(reason: str) -> str:
        if spec is None:
            return _hub_message(name, reason)
        return f"could not load {spec!r} as a Hugging Face model directory ({reason})"

    with hub_access(message, local=spec is not None):
        config, unused = AutoConfig.from_pretrained(location, return_unused_kwargs=True, **extra)
        if unused:
            raise FtlabError(f"model options {sorted(unused)} are not {config.model_type} settings")
        if pretrained:
            with _no_progress_bar():
                model = AutoModel.from_pretrained(location, config=config)
        else:
            model = AutoModel.from_config(config)
        loader = AutoImageProcessor if model.main_input_name == "pixel_values" else AutoTokenizer
        preprocessor = loader.from_pretrained(location)
    weights_id = f"{name}@{label}" if pretrained else random_weights_id(name)
    return HFBackbone(model, preprocessor, name, weights_id, label if spec else name, pooling)


@contextmanager
def _no_progress_bar() -> Iterator[None]:
    """transformers 5 draws a "Loading weights" tqdm bar on stderr for every load: noise in the
    run's log, and a failed run's stderr must be its one error line."""
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()
