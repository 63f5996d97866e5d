"""Tiny random causal LMs (Llama, GPT-2) and a byte-level BPE tokenizer with a ChatML template,
built in code for the language-model tests: nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, LlamaConfig, PreTrainedTokenizerFast

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = [
    "The market rose as shares of the bank gained.",
    "Hello, how are you? I am fine, thank you.",
    "The film won an award for best actor.",
    "Parliament voted on the new election law.",
    "The team won the match in the final minute.",
    "A new phone with a faster chip was released.",
    "business entertainment politics sport tech",
] * 4


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token="<|im_start|>",
    )
    fast.chat_template = CHATML
    return fast


def tiny_causal_dir(root: Path, arch: str = "llama", layers: int = 3) -> Path:
    """A save_pretrained folder of a random tiny causal LM and the tiny tokenizer."""
    from transformers import AutoModelForCausalLM

    tok = tiny_tokenizer()
    if arch == "llama":
        config = LlamaConfig(
            vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
            tie_word_embeddings=True, pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
        )  # fmt: skip
    else:
        config = GPT2Config(
            vocab_size=len(tok), n_embd=32, n_layer=layers, n_head=4, n_positions=256,
            pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
            bos_token_id=tok.bos_token_id,
        )  # fmt: skip
    model = AutoModelForCausalLM.from_config(config)
    out = root / f"tiny-{arch}"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
