"""``export=merged``: ftlab's own layout (library model weights, head, the plain record)."""

from __future__ import annotations

import copy
import json
from dataclasses import replace

from safetensors.torch import load_file, save_file

from ftlab.adapters.lora import cpu_state
from ftlab.exports.job import Export
from ftlab.record import restore_backbone


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
