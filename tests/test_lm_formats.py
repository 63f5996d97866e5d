"""Token-level label masks of each format, and packing's equal per-example losses."""

from __future__ import annotations

import pytest
import torch

from ftlab.backbones.hf_causal import build_causal_backbone
from ftlab.errors import FtlabError
from ftlab.lm.formats import IGNORE, encode, encode_conversation, encode_pair, encode_text
from ftlab.lm.packing import model_inputs, pack, pad, padding_share, token_losses
from tests.lm_tiny import tiny_causal_dir, tiny_tokenizer

TOK = tiny_tokenizer()


def targets(example):
    """The text of the tokens the loss covers."""
    pairs = zip(example.input_ids, example.labels, strict=True)
    return TOK.decode([i for i, label in pairs if label != IGNORE])


def test_text_trains_on_every_token():
    e = encode_text(TOK, "The team won the match.", 64)
    assert list(e.labels) == list(e.input_ids)
    assert e.input_ids[-1] == TOK.eos_token_id
    with pytest.raises(FtlabError, match="plain text has no completion"):
        encode_text(TOK, "x", 64, "completion")


def test_prompt_completion_masks_the_prompt():
    e = encode_pair(TOK, "Article: shares rose.\nTopic:", " business", 64)
    assert targets(e) == " business<|im_end|>"
    head = len(TOK("Article: shares rose.\nTopic:", add_special_tokens=False)["input_ids"])
    assert set(e.labels[:head]) == {IGNORE}
    every = encode_pair(TOK, "Article: shares rose.\nTopic:", " business", 64, "all")
    assert list(every.labels) == list(every.input_ids)


def test_conversation_trains_on_assistant_turns_only():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi there"},
        {"role": "user", "content": "How are you?"},
        {"role": "assistant", "content": "Fine"},
    ]
    e = encode_conversation(TOK, messages, 256)
    # The assistant contents and each turn's closing tokens; no user, system or role header.
    assert targets(e) == "Hi there<|im_end|>\nFine<|im_end|>\n"
    assert TOK.decode(e.input_ids).count("<|im_start|>") == 5
    every = encode_conversation(TOK, messages, 256, "all")
    assert list(every.labels) == list(every.input_ids)
    chat = encode_pair(TOK, "Topic?", "sport", 64, chat=True)
    assert targets(chat) == "sport<|im_end|>\n"


def test_conversation_errors_name_the_fix():
    with pytest.raises(FtlabError, match="at least one assistant"):
        encode_conversation(TOK, [{"role": "user", "content": "hi"}], 64)
    with pytest.raises(FtlabError, match=r"messages\[0\]"):
        encode_conversation(TOK, [{"role": "bot", "content": "hi"}], 64)
    with pytest.raises(FtlabError, match="in no format"):
        encode(TOK, {"question": "?"}, 64, "auto", False)


def _example_losses(logits, labels, segments):
    """Mean loss per (row, segment), in order of appearance."""
    losses = token_losses(logits, labels)
    seg = segments[:, 1:]
    kept = labels[:, 1:] != IGNORE
    out = []
    for r in range(labels.shape[0]):
        for s in sorted(set(seg[r][kept[r]].tolist())):
            chosen = kept[r] & (seg[r] == s)
            out.append(losses[r][chosen].mean())
    return torch.stack(out)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_packed_losses_equal_unpacked(tmp_path, arch):
    backbone = build_causal_backbone(str(tiny_causal_dir(tmp_path, arch))).eval()
    texts = ["The market rose.", "Hello, how are you? I am fine.", "A new phone.", "The film won."]
    examples = [encode_pair(TOK, t, " tech", 64) for t in texts] + [encode_text(TOK, "Tea.", 64)]
    unpacked = pad(examples, TOK.pad_token_id)
    packed = pack(examples, 40, TOK.pad_token_id)
    assert packed["input_ids"].shape[0] < len(examples)  # several examples share a row
    with torch.no_grad():
        plain = backbone(model_inputs(unpacked, torch.float32, False))
        rows = backbone(model_inputs(packed, torch.float32, False))
    segments = torch.arange(len(examples))[:, None].expand_as(unpacked["input_ids"])
    a = _example_losses(plain, unpacked["labels"], segments)
    b = _example_losses(rows, packed["labels"], packed["segments"])
    assert torch.allclose(a, b, atol=1e-5), (a, b)
    # Without the block-diagonal mask the later examples see the earlier ones: losses differ.
    with torch.no_grad():
        leaky = backbone({"input_ids": packed["input_ids"]})
    assert not torch.allclose(a, _example_losses(leaky, packed["labels"], packed["segments"]))
    padded, total = padding_share(unpacked)
    packed_pad, packed_total = padding_share(packed)
    assert packed_pad / packed_total < padded / total
