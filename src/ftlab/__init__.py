"""ftlab: compose, run and sweep fine-tuning experiments on pretrained backbones."""

__version__ = "0.1.0"
