"""Writes tests/data/ckpt_a6b22b7_lora.ckpt with the code of commit a6b22b7 (run with its src)."""

import sys

import lightning as L
import torch

import ftlab
from ftlab.module import Classifier

L.seed_everything(0)
backbone = ftlab.build_backbone("test_vit", pretrained=False)
module = Classifier(backbone, 3, freeze={"name": "lora", "r": 2}, classes=["a", "b", "c"])
with torch.no_grad():
    for p in module.parameters():
        p.add_(torch.randn_like(p) * 0.01)  # adapters' B starts at zero: make them count
module.eval()
x = (
    torch.randn(2, 3, *backbone.input_spec.image_size)
    if hasattr(backbone.input_spec, "image_size")
    else None
)
print(backbone.input_spec)
ckpt = {
    "state_dict": module.state_dict(),
    "ftlab": module.record.to_dict(),
    "pytorch-lightning_version": L.__version__,
    "epoch": 0,
    "global_step": 0,
}
torch.save(ckpt, sys.argv[1])
print(ckpt["ftlab"])
print(sum(v.numel() for v in ckpt["state_dict"].values()))
torch.manual_seed(1)
x = torch.randn(2, 3, 160, 160)
with torch.no_grad():
    torch.save({"inputs_seed": 1, "logits": module(x)}, sys.argv[2])
