"""``export=timm``: timm's Hub layout, loaded by ``timm.create_model("local-dir:<dir>")``."""

from __future__ import annotations

from torch import nn

from ftlab.errors import FtlabError
from ftlab.exports.job import Export, one_linear


def write_timm(job: Export) -> None:
    """timm's Hub layout: ``config.json`` (num_classes, label_names, pretrained_cfg) and
    ``model.safetensors`` of the whole classifier, head included."""
    import timm
    from timm.models import save_for_hf

    linear = one_linear(job, "use export=onnx or export=merged")
    record = job.record.backbone
    full = timm.create_model(
        record.name, pretrained=False, num_classes=len(job.classes), **record.options
    )
    missing, unexpected = full.load_state_dict(job.backbone.model.state_dict(), strict=False)
    classifier = full.get_classifier()
    head_keys = {k for k in full.state_dict() if k not in job.backbone.model.state_dict()}
    if unexpected or set(missing) != head_keys or not isinstance(classifier, nn.Linear):
        raise FtlabError(
            f"export=timm: {record.name}'s classifier is not one linear layer on its pooled "
            "features; use export=onnx or export=merged"
        )
    classifier.load_state_dict(linear.state_dict())
    size = job.run.data("image_size")
    data_config = {"input_size": (3, int(size), int(size))} if size else None
    save_for_hf(
        full.eval(),
        str(job.out),
        model_config={"label_names": [str(c) for c in job.classes]},
        safe_serialization=True,
        data_config=data_config,
    )
    loaded = timm.create_model(f"local-dir:{job.out}", pretrained=True).eval()
    job.check(loaded(job.inputs), 'timm.create_model("local-dir:...", pretrained=True)')
    job.written, job.library = "timm Hub layout", "timm"
    job.usage = "\n".join(
        [
            "import timm",
            f'model = timm.create_model("local-dir:{job.shown}", pretrained=True).eval()',
            "config = timm.data.resolve_data_config({}, model=model)",
            "transform = timm.data.create_transform(**config)",
            "labels = model.pretrained_cfg['label_names']",
        ]
    )
