"""Freezing schedules, discriminative learning rates and their Lightning adapter."""

from ftlab.finetuning.plan import HEAD, Phase, Plan, Unit, build_plan

__all__ = ["HEAD", "Phase", "Plan", "Unit", "build_plan"]
