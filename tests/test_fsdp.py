"""trainer=fsdp (ftlab.sharding): FSDP2 units per backbone family, freezing schedules, adapters,
per-group lrs, rank checksums, exact resume from sharded checkpoints and their export to one
file, on two CPU processes over gloo."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import FAST, ROOT, read_metrics, run_cli
from transformers import ViTConfig, ViTImageProcessor, ViTModel

from ftlab.backbones import build_backbone
from ftlab.errors import FtlabError
from ftlab.finetuning.freezing import checksum
from ftlab.module import Classifier
from ftlab.sharding import consolidate, wrap_units

HERE = Path(__file__).parent

# --- units per family (one process, no sharding) --------------------------------------------


def test_units_timm_vit_blocks_the_last_with_the_final_norm() -> None:
    backbone = build_backbone("test_vit", pretrained=False, img_size=32)
    assert wrap_units(backbone) == [
        ["model.patch_embed"],  # the stem's module; cls_token and pos_embed stay at the root
        *[[f"model.blocks.{i}"] for i in range(5)],
        ["model.blocks.5", "model.norm"],  # timm's last group: "blocks.5+norm", one unit
    ]


def test_units_timm_cnn_stem_and_stages() -> None:
    assert wrap_units(build_backbone("test_resnet", pretrained=False)) == [
        ["model.conv1", "model.bn1"],
        *[[f"model.layer{i}"] for i in range(1, 5)],
    ]
    units = wrap_units(build_backbone("test_convnext", pretrained=False))
    assert units[:3] == [
        ["model.stem"],
        ["model.stages.0"],
        ["model.stages.1.downsample", "model.stages.1.blocks.0"],  # a partial stage
    ]


def test_units_hf_encoder_layers(tmp_path: Path) -> None:
    config = ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        image_size=32, patch_size=8,
    )  # fmt: skip
    ViTModel(config).save_pretrained(tmp_path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    backbone = build_backbone(str(tmp_path))
    groups = [g.name for g in backbone.layer_groups()]
    assert wrap_units(backbone) == [[f"model.{g}"] for g in groups]  # embeddings, layers, norm


def test_consolidate_refuses_a_file_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "model.ckpt"
    path.write_bytes(b"x")
    with pytest.raises(FtlabError, match="not a sharded checkpoint folder"):
        consolidate(path, tmp_path / "out.ckpt")


def test_trainer_fsdp_configs_compose(make_cfg) -> None:
    cfg = make_cfg("trainer=fsdp")
    assert cfg.trainer.strategy._target_ == "ftlab.sharding.ShardedStrategy"
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.accelerator == "gpu"
    cpu = make_cfg("trainer=fsdp_cpu")
    assert cpu.trainer.strategy.process_group_backend == "gloo"
    assert (cpu.trainer.accelerator, cpu.trainer.devices) == ("cpu", 2)


# --- two gloo ranks: tests/fsdp_worker.py's scenarios, one launch ----------------------------


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("fsdp")
    done = subprocess.run(
        [sys.executable, str(HERE / "fsdp_worker.py"), str(out)],
        capture_output=True, text=True, timeout=900, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads((out / "results.json").read_text()), out


def _moved(sums: list[dict[str, str]], group: str) -> list[bool]:
    """Per epoch: did the group's weights change during it."""
    return [a[group] != b[group] for a, b in itertools.pairwise(sums)]


@pytest.mark.ddp
@pytest.mark.slow
def test_gradual_unfreezing_trains_each_group_from_its_phase_only(sharded) -> None:
    run = sharded[0]["gradual"]
    assert run["world_size"] == 2 and ["model.blocks.5", "model.norm"] in run["units"]
    sums = run["sums"]  # train start, then each of 3 epochs' end
    assert _moved(sums, "head") == [True, True, True]
    assert _moved(sums, "blocks.5+norm") == [False, True, True]  # unfrozen at epoch 1
    assert _moved(sums, "blocks.4") == [False, False, True]  # unfrozen at epoch 2
    for group in ("stem", "blocks.0", "blocks.1", "blocks.2", "blocks.3"):
        assert _moved(sums, group) == [False, False, False], group


@pytest.mark.ddp
@pytest.mark.slow
def test_gradients_exist_only_for_trainable_parameters_and_are_sharded(sharded) -> None:
    run = sharded[0]["gradual"]
    # float32 gradients of the trainable parameters, half of them on each of 2 ranks: a
    # frozen parameter has none (FSDP1 with use_orig_params would hold its whole unit's)
    assert run["grad_bytes"] == [n * 4 // 2 for n in run["trainable_numel"][:3]]


@pytest.mark.ddp
@pytest.mark.slow
def test_lrs_follow_the_plan_and_rank_checksums_agree(sharded) -> None:
    run = sharded[0]["gradual"]
    for lrs in run["lrs"]:
        assert lrs == run["plan_lrs"]
    assert len(run["rank_checksums"]) == 2 and len(set(run["rank_checksums"])) == 1
    assert len(run["history"]) == 3
    for phase in run["history"]:
        assert len(phase["rank_checksums"]) == 2 and len(set(phase["rank_checksums"])) == 1


@pytest.mark.ddp
@pytest.mark.slow
def test_sharded_checkpoint_resumes_exactly(sharded) -> None:
    results, _ = sharded
    # 2 epochs, saved as a sharded folder, resumed for the third (blocks.4 unfreezes after
    # the restart, with no optimizer state in the checkpoint): bit-identical weights
    assert results["resumed"]["total"] == results["gradual"]["total"]
    assert results["resumed"]["sums"][-1] == results["gradual"]["sums"][-1]


@pytest.mark.ddp
@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_adapters_train_and_base_weights_stay(sharded, method: str) -> None:
    run = sharded[0][method]
    assert "lora" in run["groups"]
    sums = run["sums"]
    assert _moved(sums, "lora") == [True, True] and _moved(sums, "head") == [True, True]
    for group in run["groups"]:
        if group not in ("lora", "head"):
            assert _moved(sums, group) == [False, False], group


@pytest.mark.ddp
@pytest.mark.slow
def test_activation_checkpointing_gives_the_same_weights(sharded) -> None:
    results, _ = sharded
    # recomputed activations: the same 2 epochs as without (sums after epoch 2 of 3)
    assert results["checkpointed"]["sums"][2] == results["gradual"]["sums"][2]


@pytest.mark.ddp
@pytest.mark.slow
def test_sharded_checkpoint_exports_to_one_file_eval_loads(sharded) -> None:
    results, out = sharded
    assert (out / "full" / "ckpts" / "last.ckpt").is_dir()  # one shard per rank
    module = Classifier.load_from_checkpoint(out / "model.ckpt")
    assert checksum(module) == results["gradual"]["total"]
    ckpt = torch.load(out / "model.ckpt", weights_only=True)
    assert "optimizer_states" not in ckpt and ckpt["ftlab"]["backbone"]


@pytest.mark.ddp
@pytest.mark.slow
def test_train_py_under_fsdp_cpu_then_export_and_eval(tmp_path: Path) -> None:
    overrides = [o for o in FAST if not o.startswith("model=")]
    done = run_cli(
        "train.py", *overrides, "model=test_vit", "+model.img_size=32", "trainer=fsdp_cpu",
        "freeze=gradual", run_dir=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = read_metrics(tmp_path)
    assert metrics["status"] == "completed" and metrics["world_size"] == 2
    assert len(set(metrics["rank_checksums"])) == 1
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert last.is_dir()
    single = tmp_path / "model.ckpt"
    export = subprocess.run(
        [sys.executable, "-m", "ftlab.sharding", str(last), str(single)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert export.returncode == 0, export.stderr[-2000:]
    evaluated = run_cli(
        "eval.py", f"ckpt_path={single}", "data=digits", "data.image_size=32",
        "trainer.accelerator=cpu", "trainer.limit_test_batches=2", run_dir=tmp_path / "eval",
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]


# --- scripts/gpu_check.py's logic on the CPU -------------------------------------------------

GPU_CHECK = ROOT / "scripts" / "gpu_check.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_gpu_check_without_cuda_fails_in_one_line(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    done = subprocess.run(
        [sys.executable, str(GPU_CHECK), "--out", str(out)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: gpu-check needs a CUDA GPU"), lines
    assert "--device cpu --dry-run" in lines[0] and not out.exists()


@pytest.mark.slow
@pytest.mark.ddp  # the fsdp check starts a (one-rank) process group
def test_gpu_check_dry_run_on_the_cpu_writes_its_json(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    done = subprocess.run(
        [sys.executable, str(GPU_CHECK), "--device", "cpu", "--dry-run", "--out", str(out),
         "--only", "step_ratio,fsdp", "--lm"],
        capture_output=True, text=True, timeout=900, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    body = json.loads(out.read_text())
    assert body["device"] == "cpu" and body["torch"] == torch.__version__ and body["commit"]
    assert set(body["checks"]) == {"step_ratio", "fsdp"}
    ratio = body["checks"]["step_ratio"]
    assert {"vit/none", "vit/lora"} <= set(ratio["cases"]) and ratio["cases"]["vit/none"][
        "ratio"
    ] > 0
    lm = ratio["causal_lm_lora"]  # ftlab.lm's LoRA step against transformers + peft by hand
    assert lm["ok"] and lm["ratio"] > 0 and lm["first_loss"]["ftlab"] == lm["first_loss"]["hand"]
    assert lm["trainable_params"]["ftlab"] == lm["trainable_params"]["hand"] > 0
    fsdp = body["checks"]["fsdp"]
    assert fsdp["ok"] and fsdp["units"] > 0 and len(fsdp["rank_checksums"]) == 1
