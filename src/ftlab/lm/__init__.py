"""Causal language models in ftlab: data formats and their loss masks, packing, the
LightningModule (loss, perplexity, generation metrics), AdaLoRA's rank allocation, generation
and exports. ``task=causal_lm`` (docs/language-models.md)."""
