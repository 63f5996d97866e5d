"""The freezing plan: schedules, discriminative lrs, weight decay, and schedule validation."""

from __future__ import annotations

import pytest
import yaml
from torch import nn

from ftlab.errors import FtlabError
from ftlab.finetuning import build_plan
from ftlab.finetuning.freezing import bn_params

LR = 1e-2


@pytest.fixture
def toy():
    """A 3-group backbone with BatchNorm in the stem, plus a head, named like FinetuneModule."""
    module = nn.ModuleDict(
        {
            "backbone": nn.Sequential(
                nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 4), nn.Linear(4, 4)
            ),
            "head": nn.Linear(4, 2),
        }
    )
    groups = [
        ("stem", ("backbone.0.weight", "backbone.0.bias", "backbone.1.weight", "backbone.1.bias")),
        ("blocks.0", ("backbone.2.weight", "backbone.2.bias")),
        ("blocks.1", ("backbone.3.weight", "backbone.3.bias")),
        ("head", ("head.weight", "head.bias")),
    ]
    return module, groups


def plan_for(toy, freeze, **optimizer):
    module, groups = toy
    opt = {"lr": LR, "weight_decay": 0.1, **optimizer}
    return build_plan(freeze, groups, dict(module.named_parameters()), opt, (), bn_params(module))


def unfrozen_by_phase(plan):
    return [row["unfrozen"] for row in plan.summary()]


def test_none_trains_everything_from_the_start(toy):
    plan = plan_for(toy, {"name": "none"})
    assert unfrozen_by_phase(plan) == [["stem", "blocks.0", "blocks.1", "head"]]
    assert plan.trainable_numel(0) == sum(p.numel() for p in toy[0].parameters())


def test_linear_probe_trains_only_the_head(toy):
    plan = plan_for(toy, {"name": "linear_probe"})
    assert plan.trainable(0) == {"head.weight", "head.bias"}
    assert len(plan.frozen_forever) == 8


def test_gradual_unfreezes_top_down(toy):
    plan = plan_for(toy, {"name": "gradual", "every": 2, "step": 1, "until": None})
    assert unfrozen_by_phase(plan) == [["head"], ["blocks.1"], ["blocks.0"], ["stem"]]
    assert [p.epoch for p in plan.phases] == [0, 2, 4, 6]
    assert plan.phase_at(0) == 0 and plan.phase_at(3) == 1 and plan.phase_at(99) == 3


def test_gradual_step_and_until(toy):
    plan = plan_for(toy, {"name": "gradual", "every": 1, "step": 2, "until": 2})
    assert unfrozen_by_phase(plan) == [["head"], ["blocks.0", "blocks.1"]]
    by_name = plan_for(toy, {"name": "gradual", "until": "blocks.0"})
    assert unfrozen_by_phase(by_name) == [["head"], ["blocks.1"], ["blocks.0"]]


def test_bottom_k_keeps_first_groups_frozen(toy):
    plan = plan_for(toy, {"name": "bottom_k", "k": 2})
    assert unfrozen_by_phase(plan) == [["blocks.1", "head"]]


def test_lp_ft_scales_everything_in_the_second_phase(toy):
    plan = plan_for(toy, {"name": "lp_ft", "lp_epochs": 2, "ft_lr_scale": 0.1})
    assert [p.epoch for p in plan.phases] == [0, 2]
    assert plan.group_lrs(0) == {"head": LR}
    assert plan.group_lrs(1) == pytest.approx(
        {"stem": LR * 0.1, "blocks.0": LR * 0.1, "blocks.1": LR * 0.1, "head": LR * 0.1}
    )


def test_layer_decay_is_geometric_from_the_head(toy):
    plan = plan_for(toy, {"name": "none"}, layer_decay=0.5)
    assert plan.group_lrs(0) == pytest.approx(
        {"stem": LR / 8, "blocks.0": LR / 4, "blocks.1": LR / 2, "head": LR}
    )


def test_lr_range_spans_lo_to_hi(toy):
    plan = plan_for(toy, {"name": "none"}, lr_range=[1e-4, 1e-1])
    assert plan.group_lrs(0) == pytest.approx(
        {"stem": 1e-4, "blocks.0": 1e-3, "blocks.1": 1e-2, "head": 1e-1}
    )


def test_no_weight_decay_on_norms_and_biases(toy):
    plan = plan_for(toy, {"name": "none"})
    decay = {p for u in plan.units if u.weight_decay > 0 for p in u.params}
    assert decay == {"backbone.0.weight", "backbone.2.weight", "backbone.3.weight", "head.weight"}
    assert all(u.weight_decay == 0.1 for u in plan.units if u.decay)


def test_model_no_weight_decay_names_are_honoured(toy):
    module, groups = toy
    plan = build_plan(
        {"name": "none"},
        groups,
        dict(module.named_parameters()),
        {"lr": LR, "weight_decay": 0.1},
        no_weight_decay={"backbone.2.weight"},
    )
    no_decay = {p for u in plan.units if u.weight_decay == 0 for p in u.params}
    assert "backbone.2.weight" in no_decay


def test_bn_train_keeps_batchnorm_affine_trainable_in_frozen_groups(toy):
    plan = plan_for(toy, {"name": "linear_probe", "bn": "train"})
    assert plan.trainable(0) == {"head.weight", "head.bias", "backbone.1.weight", "backbone.1.bias"}


def test_explicit_schedule_with_regex_and_lr(toy):
    phases = [
        {"epoch": 0, "groups": ["head"]},
        {"epoch": 1, "groups": [r"^backbone\.3\."], "lr": 1e-3},
    ]
    plan = plan_for(toy, {"name": "schedule", "phases": phases})
    assert plan.trainable(1) - plan.trainable(0) == {"backbone.3.weight", "backbone.3.bias"}
    assert plan.group_lrs(1)["blocks.1"] == pytest.approx(1e-3)


def test_head_trains_from_phase_zero_unless_placed(toy):
    plan = plan_for(toy, {"name": "schedule", "phases": [{"epoch": 0, "groups": ["blocks.1"]}]})
    assert {"head.weight", "head.bias"} <= plan.trainable(0)


@pytest.mark.parametrize("builtin", ["gradual", "lp_ft", "bottom_k", "none", "linear_probe"])
def test_written_schedule_reproduces_the_builtin(toy, tmp_path, builtin):
    plan = plan_for(toy, {"name": builtin})
    path = tmp_path / "schedule.yaml"
    path.write_text(yaml.safe_dump(plan.to_schedule()))
    again = plan_for(toy, {"name": "schedule", "phases": str(path), "bn": "frozen"})
    assert again.summary() == plan.summary()
    assert [u.params for u in again.units] == [u.params for u in plan.units]


# One row per bad input: (freeze, optimizer overrides, message regex). Adding a case is one line.
BAD = {
    "unknown key": ({"name": "gradual", "k": 3}, {}, r"freeze\.k is not a key of freeze=gradual"),
    "unknown schedule": ({"name": "warp"}, {}, r"freeze\.name='warp' is unknown"),
    "bad bn": ({"name": "none", "bn": "thaw"}, {}, r"freeze\.bn='thaw'"),
    "every < 1": ({"name": "gradual", "every": 0}, {}, r"freeze\.every=0 must be an integer >= 1"),
    "step < 1": ({"name": "gradual", "step": -1}, {}, r"freeze\.step=-1"),
    "k too large": ({"name": "bottom_k", "k": 9}, {}, r"freeze\.k=9 must be between 0 and .*\(3\)"),
    "until unknown group": ({"name": "gradual", "until": "nope"}, {}, r"freeze\.until='nope'"),
    "pattern matches nothing": (
        {
            "name": "schedule",
            "phases": [{"epoch": 0, "groups": ["head"]}, {"epoch": 1, "groups": ["blocks\\.99"]}],
        },
        {},
        r"freeze\.phases\[1\]: 'blocks\\\\.99' matches no layer group or parameter",
    ),
    "param in two phases": (
        {
            "name": "schedule",
            "phases": [
                {"epoch": 0, "groups": ["head", "blocks.1"]},
                {"epoch": 2, "groups": ["^backbone"]},
            ],
        },
        {},
        r"freeze\.phases\[1\]: '\^backbone' unfreezes backbone\.3\.\w+, which "
        r"freeze\.phases\[0\] already unfreezes",
    ),
    "epochs not increasing": (
        {
            "name": "schedule",
            "phases": [{"epoch": 0, "groups": ["head"]}, {"epoch": 0, "groups": ["stem"]}],
        },
        {},
        r"freeze\.phases\[1\]\.epoch=0 must be greater than phases\[0\]\.epoch=0",
    ),
    "first phase late": (
        {"name": "schedule", "phases": [{"epoch": 1, "groups": ["head"]}]},
        {},
        r"freeze\.phases\[0\]\.epoch=1: the first phase must start at epoch 0",
    ),
    "phase lr <= 0": (
        {"name": "schedule", "phases": [{"epoch": 0, "groups": ["head"], "lr": 0}]},
        {},
        r"freeze\.phases\[0\]\.lr=0 must be a number > 0",
    ),
    "unknown phase key": (
        {"name": "schedule", "phases": [{"epoch": 0, "groups": ["head"], "lrr": 1}]},
        {},
        r"freeze\.phases\[0\]\.lrr is not a phase key",
    ),
    "bad regex": (
        {"name": "schedule", "phases": [{"epoch": 0, "groups": ["head("]}]},
        {},
        r"freeze\.phases\[0\]: 'head\(' is not a valid regex",
    ),
    "phases file missing": (
        {"name": "schedule", "phases": "/nonexistent/plan.yaml"},
        {},
        r"freeze\.phases=/nonexistent/plan\.yaml: no such file",
    ),
    "lr <= 0": ({"name": "none"}, {"lr": -1.0}, r"optimizer\.lr=-1\.0 must be a number > 0"),
    "decay > 1": (
        {"name": "none"},
        {"layer_decay": 1.5},
        r"optimizer\.layer_decay=1\.5 must be in \(0, 1\]",
    ),
    "decay 0": ({"name": "none"}, {"layer_decay": 0.0}, r"optimizer\.layer_decay=0\.0"),
    "lr_range reversed": ({"name": "none"}, {"lr_range": [1e-2, 1e-4]}, r"optimizer\.lr_range"),
    "both discriminative": (
        {"name": "none"},
        {"layer_decay": 0.5, "lr_range": [1e-4, 1e-2]},
        r"exclusive",
    ),
    "ft_lr_scale": ({"name": "lp_ft", "ft_lr_scale": 0}, {}, r"freeze\.ft_lr_scale=0"),
}


@pytest.mark.parametrize("freeze,optimizer,message", list(BAD.values()), ids=list(BAD))
def test_bad_schedules_are_rejected_with_one_line(toy, freeze, optimizer, message):
    with pytest.raises(FtlabError, match=message) as err:
        plan_for(toy, freeze, **optimizer)
    assert "\n" not in str(err.value)
