"""`make gpu-check`: what ftlab claims about GPUs, checked on one GPU in under 8 minutes.

    python scripts/gpu_check.py                          # CUDA: benchmarks/results/gpu.json
    python scripts/gpu_check.py --device cpu --dry-run   # the same logic, tiny, on the CPU
    python scripts/gpu_check.py --lm                     # also the causal LM LoRA step ratio

Uses only the repository and its installed packages (random-init timm models, sklearn's
digits, tensors): a GPU machine has no internet. Checks, each recorded with its numbers (one
failing check does not stop the others; a check past the time budget is skipped, with a note):

- ``precision``: bf16-mixed and 16-mixed steps, full fine-tuning and LoRA: finite losses, the
  trainable weights moved and the frozen ones did not;
- ``host_syncs``: host syncs per training step of ftlab's train.py against plain Lightning, from
  ``torch.profiler`` (benchmarks/bench_syncs.py, the count tests/test_host_syncs.py asserts on
  the CPU): ftlab adds nothing but FaultGuard's check every ``faults.check_every`` steps;
- ``step_ratio``: ftlab's step time over a hand-written loop's (same module, optimizer, batch)
  for a ViT (timm vit_tiny_patch16_224, random init; test_vit in a dry run), and with ``--lm``
  for a causal LM LoRA (ftlab.lm's CausalLM, freeze=lora, on a random Llama built in code,
  against transformers + peft by hand; the first losses must agree);
- ``compile``: ``compile=true`` (ftlab.devices.compile_backbone) trains and matches eager losses
  to a tolerance;
- ``fsdp``: trainer=fsdp's strategy (ftlab.sharding) on one GPU, gradual unfreezing, bf16-mixed.

The JSON holds the device name, torch and CUDA versions, the commit and the date.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 7 * 60  # leaves a minute of the 8 for start-up and writing
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "gpu.json"


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(1)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes, few steps")
    parser.add_argument("--lm", action="store_true", help="also the causal LM LoRA ratio")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--only", default="", help="comma-separated checks to run")
    return parser.parse_args(argv)


# --- shared pieces ----------------------------------------------------------------------------


class Sizes:
    def __init__(self, dry: bool) -> None:
        self.vit = "test_vit" if dry else "vit_tiny_patch16_224"
        self.image = 32 if dry else 224
        self.batch = 4 if dry else 32
        self.steps = 3 if dry else 20
        self.warmup = 1 if dry else 5
        # The causal LM of --lm: a random Llama, batch x sequence tokens a step.
        self.lm_hidden = 64 if dry else 512
        self.lm_layers = 2 if dry else 8
        self.lm_vocab = 256 if dry else 8192
        self.lm_seq = 32 if dry else 256
        self.lm_batch = 2 if dry else 8


def accelerator(device: str) -> str:
    return "gpu" if device == "cuda" else "cpu"


def classifier(model: str, freeze: Any, size: int):
    from ftlab.backbones import build_backbone
    from ftlab.finetuning.optimization import Optimization
    from ftlab.module import Classifier

    extra = {"img_size": size} if "vit" in model else {}
    backbone = build_backbone(model, source="timm", pretrained=False, **extra)
    return Classifier(backbone, 10, freeze=freeze, optimization=Optimization(lr=1e-3))


def loader(size: int, batch: int, batches: int):
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch * batches, 3, size, size, generator=g)
    y = torch.randint(0, 10, (batch * batches,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch)


def trainer(device: str, steps: int, **kwargs: Any):
    import lightning as L

    options = dict(
        accelerator=accelerator(device),
        devices=1,
        max_steps=steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    options.update(kwargs)
    return L.Trainer(**options)


class Losses:
    """A callback keeping each step's loss (read once, after fit: no per-step sync)."""

    def __new__(cls):
        import lightning as L

        class _Losses(L.Callback):
            def __init__(self) -> None:
                self.values: list = []

            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
                self.values.append(outputs["loss"].detach())

        return _Losses()


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


# --- the checks -------------------------------------------------------------------------------


def check_precision(device: str, sizes: Sizes) -> dict:
    """bf16-mixed and 16-mixed, full and LoRA: finite losses, trainable weights move, frozen
    ones stay."""
    import torch

    from ftlab.finetuning.freezing import checksum

    out: dict[str, Any] = {}
    for precision in ("bf16-mixed", "16-mixed"):
        for freeze in ("none", "lora"):
            module = classifier(sizes.vit, freeze, sizes.image)
            trainable = module.plan.trainable(0)
            frozen = {n for n, _ in module.named_parameters()} - trainable
            before = (checksum(module, trainable), checksum(module, frozen))
            losses = Losses()
            start = time.perf_counter()
            trainer(device, sizes.steps, precision=precision, callbacks=[losses]).fit(
                module, train_dataloaders=loader(sizes.image, sizes.batch, sizes.steps)
            )
            seconds = time.perf_counter() - start
            values = [float(v) for v in torch.stack(losses.values).float().cpu()]
            module.cpu()
            after = (checksum(module, trainable), checksum(module, frozen))
            ok = (
                all(math.isfinite(v) for v in values)
                and after[0] != before[0]
                and (not frozen or after[1] == before[1])
            )
            out[f"{precision}/{freeze}"] = {
                "ok": ok,
                "losses": [round(v, 4) for v in values],
                "trainable_moved": after[0] != before[0],
                "frozen_kept": after[1] == before[1],
                "fit_s": round(seconds, 2),
            }
    return {"ok": all(v["ok"] for v in out.values()), "cases": out}


def check_host_syncs(device: str, sizes: Sizes) -> dict:
    """ftlab's train.py against plain Lightning, syncs per training step (bench_syncs)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_syncs

    skip, steps = (3, 4) if sizes.steps <= 3 else (3, 10)
    extra = ["trainer=gpu" if device == "cuda" else "trainer=cpu", "trainer.precision=32-true"]
    measured = bench_syncs.measure(extra, skip, steps)
    check_every = bench_syncs.CHECK_EVERY
    extra_syncs = measured["extra_step_syncs"][0]
    # FaultGuard: one sync per check_every optimizer steps, nothing at the others.
    allowed = math.ceil(steps / check_every)
    ok = sum(extra_syncs) <= allowed and all(0 <= s <= 1 for s in extra_syncs)
    return {
        "ok": ok,
        "ftlab_syncs_per_step": measured["ftlab"]["syncs"],
        "lightning_syncs_per_step": measured["plain"]["syncs"],
        "extra_step_syncs": extra_syncs,
        "allowed_extra": allowed,
        "ftlab_ops": measured["ftlab_ops"],
        "plain_ops": measured["plain_ops"],
    }


def _hand_seconds(module, batches: list, device: str, warmup: int) -> float:
    import torch
    import torch.nn.functional as F

    from ftlab.finetuning.freezing import apply_trainable, param_groups

    apply_trainable(module, module.plan.trainable(0))
    module.to(device).train()
    optimizer = torch.optim.AdamW(param_groups(module.plan, dict(module.named_parameters())))
    start = 0.0
    for i, (x, y) in enumerate(batches):
        if i == warmup:
            _sync(device)
            start = time.perf_counter()
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = F.cross_entropy(module(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    _sync(device)
    return time.perf_counter() - start


def _ftlab_seconds(
    module, data, device: str, warmup: int, steps: int, callbacks: list | None = None
) -> float:
    import lightning as L

    class Clock(L.Callback):
        start = end = 0.0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if batch_idx == warmup:
                _sync(device)
                self.start = time.perf_counter()

        def on_train_end(self, trainer, pl_module) -> None:
            _sync(device)
            self.end = time.perf_counter()

    clock = Clock()
    trainer(device, steps, precision="bf16-mixed", callbacks=[clock, *(callbacks or [])]).fit(
        module, train_dataloaders=data
    )
    return clock.end - clock.start


def check_step_ratio(device: str, sizes: Sizes, lm: bool) -> dict:
    """ftlab's Lightning steps over a hand loop's, bf16 autocast both, after warm-up."""
    total = sizes.warmup + sizes.steps
    data = loader(sizes.image, sizes.batch, total)
    out: dict[str, Any] = {}
    for freeze in ("none", "lora"):
        hand = _hand_seconds(
            classifier(sizes.vit, freeze, sizes.image), list(data), device, sizes.warmup
        )
        ours = _ftlab_seconds(
            classifier(sizes.vit, freeze, sizes.image), data, device, sizes.warmup, total
        )
        out[f"vit/{freeze}"] = {
            "ratio": round(ours / hand, 3),
            "ftlab_step_ms": round(1000 * ours / sizes.steps, 2),
            "hand_step_ms": round(1000 * hand / sizes.steps, 2),
            "model": sizes.vit,
            "batch": sizes.batch,
        }
    result: dict[str, Any] = {"cases": out}
    # 5% is the CPU target (benchmarks/bench_overhead.py); on a GPU tiny steps leave Python's
    # per-step work visible, so the target here is informative.
    result["ok"] = all(v["ratio"] <= 1.25 for v in out.values()) or sizes.steps <= 3
    if lm:
        lm_result = _causal_lm_ratio(device, sizes)
        result["causal_lm_lora"] = lm_result
        result["ok"] = result["ok"] and lm_result["ok"]
    return result


LM_LORA = {"r": 8, "alpha": 16.0, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}


def _tiny_llama(sizes: Sizes):
    """A random Llama built from a config in code (no download, no tokenizer files)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, layers, vocab = sizes.lm_hidden, sizes.lm_layers, sizes.lm_vocab
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 8 // 3,
        num_hidden_layers=layers, num_attention_heads=max(hidden // 64, 2),
        num_key_value_heads=max(hidden // 64, 2), max_position_embeddings=sizes.lm_seq,
        tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    return LlamaForCausalLM._from_config(config, attn_implementation="sdpa")


def _lm_batches(sizes: Sizes, count: int) -> list[dict]:
    """Prompt-completion rows: the first quarter of each row is prompt (label -100)."""
    import torch

    from ftlab.lm.formats import IGNORE

    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(count):
        ids = torch.randint(0, sizes.lm_vocab, (sizes.lm_batch, sizes.lm_seq), generator=g)
        labels = ids.clone()
        labels[:, : sizes.lm_seq // 4] = IGNORE
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    return out


def _hand_lm(model, batches: list[dict], device: str, warmup: int) -> tuple[float, list, int]:
    """transformers + peft, written by hand: LoRA on q/v plus the final norm (what ftlab's
    LoRA plan trains), AdamW, bf16 autocast, the model's own shifted loss."""
    import torch
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=LM_LORA["r"], lora_alpha=LM_LORA["alpha"], lora_dropout=LM_LORA["dropout"],
        target_modules=LM_LORA["target_modules"],
    )  # fmt: skip
    model = get_peft_model(model, config)
    model.base_model.model.model.norm.weight.requires_grad_(True)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    losses, start = [], 0.0
    for i, batch in enumerate(batches):
        if i == warmup:
            _sync(device)
            start = time.perf_counter()
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = model(**batch, use_cache=False).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    _sync(device)
    seconds = time.perf_counter() - start
    return seconds, [float(v) for v in torch.stack(losses).cpu()], sum(p.numel() for p in params)


def _ftlab_lm(model, batches: list[dict], device: str, warmup: int) -> tuple[float, list, int]:
    """ftlab's CausalLM (task=causal_lm's module) with freeze=lora, through Lightning."""
    import torch

    from ftlab.backbones.hf_causal import CausalLMBackbone
    from ftlab.finetuning.optimization import Optimization
    from ftlab.lm.module import CausalLM

    backbone = CausalLMBackbone(model, None, "tiny-llama", "random", "random")
    freeze = {"name": "lora", **LM_LORA}
    module = CausalLM(backbone, freeze=freeze, optimization=Optimization(lr=1e-3))
    module.samples = 0  # no generation: the step alone is timed
    trainable = sum(p.numel() for n, p in module.named_parameters()
                    if n in module.plan.trainable(0))  # fmt: skip
    from torch.utils.data import DataLoader

    losses = Losses()
    data = DataLoader(batches, batch_size=None)  # the same prepared batches, in order
    seconds = _ftlab_seconds(module, data, device, warmup, len(batches), callbacks=[losses])
    return seconds, [float(v) for v in torch.stack(losses.values).float().cpu()], trainable


def _causal_lm_ratio(device: str, sizes: Sizes) -> dict:
    """ftlab's causal-LM LoRA step (ftlab.lm.module.CausalLM, freeze=lora) over a hand-written
    transformers + peft loop's, on the same random Llama, batches and trained parameters. The
    first losses must agree: LoRA's B starts at zero, so step 0 is the base model's loss."""
    import copy

    total = sizes.warmup + sizes.steps
    batches = _lm_batches(sizes, total)
    base = _tiny_llama(sizes)
    hand, hand_losses, hand_params = _hand_lm(copy.deepcopy(base), batches, device, sizes.warmup)
    ours, our_losses, our_params = _ftlab_lm(copy.deepcopy(base), batches, device, sizes.warmup)
    same_start = math.isclose(hand_losses[0], our_losses[0], rel_tol=2e-2)
    return {
        "ok": same_start and hand_params == our_params and all(map(math.isfinite, our_losses)),
        "ratio": round(ours / hand, 3),
        "ftlab_step_ms": round(1000 * ours / sizes.steps, 2),
        "hand_step_ms": round(1000 * hand / sizes.steps, 2),
        "tokens_per_s": {
            "ftlab": round(sizes.lm_batch * sizes.lm_seq * sizes.steps / ours),
            "hand": round(sizes.lm_batch * sizes.lm_seq * sizes.steps / hand),
        },
        "first_loss": {"ftlab": round(our_losses[0], 4), "hand": round(hand_losses[0], 4)},
        "trainable_params": {"ftlab": our_params, "hand": hand_params},
        "model": f"random Llama hidden={sizes.lm_hidden} layers={sizes.lm_layers} "
        f"vocab={sizes.lm_vocab}",
        "batch": [sizes.lm_batch, sizes.lm_seq],
        "lora": LM_LORA,
    }


def check_compile(device: str, sizes: Sizes) -> dict:
    """compile=true: the backbone compiled by ftlab.devices.compile_backbone trains, and its
    first losses match eager ones."""
    import torch

    from ftlab.devices import compile_backbone

    losses = {}
    seconds = {}
    for mode in ("eager", "compiled"):
        import lightning as L

        L.seed_everything(0, verbose=False)
        module = classifier(sizes.vit, "none", sizes.image)
        if mode == "compiled":
            compile_backbone(module.backbone, accelerator(device))
        record = Losses()
        start = time.perf_counter()
        trainer(device, sizes.steps, callbacks=[record]).fit(
            module, train_dataloaders=loader(sizes.image, sizes.batch, sizes.steps)
        )
        seconds[mode] = round(time.perf_counter() - start, 2)
        losses[mode] = [float(v) for v in torch.stack(record.values).cpu()]
    close = all(
        math.isclose(a, b, rel_tol=1e-2, abs_tol=1e-3)
        for a, b in zip(losses["eager"], losses["compiled"], strict=True)
    )
    return {"ok": close, "losses": losses, "fit_s": seconds}


def check_fsdp(device: str, sizes: Sizes) -> dict:
    """trainer=fsdp's ShardedStrategy on one device: gradual unfreezing, rank checksums."""
    from ftlab.finetuning.freezing import checksum
    from ftlab.sharding import ShardedStrategy

    module = classifier(sizes.vit, {"name": "gradual", "every": 1, "step": 1}, sizes.image)
    groups = dict(module.layer_groups())
    top = list(groups)[-2]  # the last backbone group, unfrozen in the second epoch
    bottom = next(iter(groups))
    before = {g: checksum(module, set(groups[g])) for g in (top, bottom)}
    backend = "nccl" if device == "cuda" else "gloo"
    precision = "bf16-mixed" if device == "cuda" else "32-true"
    strategy = ShardedStrategy(process_group_backend=backend)
    fit = trainer(device, -1, max_epochs=2, precision=precision, strategy=strategy)
    fit.fit(module, train_dataloaders=loader(sizes.image, sizes.batch, sizes.steps))
    module.cpu()  # whole again after fit (ShardedStrategy.teardown)
    after = {g: checksum(module, set(groups[g])) for g in (top, bottom)}
    ok = after[top] != before[top] and after[bottom] == before[bottom]
    return {
        "ok": ok,
        "units": len(strategy.units),
        "precision": precision,
        f"{top}_moved": after[top] != before[top],
        f"{bottom}_kept": after[bottom] == before[bottom],
        "rank_checksums": module.phases.rank_checksums,
    }


# --- the run ----------------------------------------------------------------------------------


def environment(device: str) -> dict:
    import lightning as L
    import torch

    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if device == "cuda" else None,
        "lightning": L.__version__,
        "commit": commit or None,
        "dirty": bool(dirty),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    import torch  # after argument parsing: --help needs no torch

    if args.device == "cuda" and not torch.cuda.is_available():
        _fail(
            "gpu-check needs a CUDA GPU and torch.cuda.is_available() is False here; its CPU "
            "logic runs with: python scripts/gpu_check.py --device cpu --dry-run"
        )
    sys.path.insert(0, str(ROOT / "src"))
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    sizes = Sizes(args.dry_run)
    checks = {
        "precision": lambda: check_precision(args.device, sizes),
        "host_syncs": lambda: check_host_syncs(args.device, sizes),
        "step_ratio": lambda: check_step_ratio(args.device, sizes, args.lm),
        "compile": lambda: check_compile(args.device, sizes),
        "fsdp": lambda: check_fsdp(args.device, sizes),
    }
    only = [c.strip() for c in args.only.split(",") if c.strip()]
    unknown = sorted(set(only) - set(checks))
    if unknown:
        _fail(f"--only {','.join(unknown)}: choose from {','.join(checks)}")
    started = time.perf_counter()
    results: dict[str, Any] = {}
    for name, check in checks.items():
        if only and name not in only:
            continue
        spent = time.perf_counter() - started
        if spent > BUDGET_S:
            results[name] = {"ok": None, "skipped": f"time budget spent ({spent:.0f} s)"}
            continue
        begin = time.perf_counter()
        try:
            results[name] = check()
        except Exception as err:  # recorded: one broken check must not hide the others
            results[name] = {
                "ok": False,
                "error": f"{type(err).__name__}: {err}"[:2000],
                "traceback": traceback.format_exc()[-4000:],
            }
        results[name]["seconds"] = round(time.perf_counter() - begin, 1)
        print(f"# {name}: ok={results[name].get('ok')} ({results[name]['seconds']} s)", flush=True)
    body = {
        **environment(args.device),
        "dry_run": args.dry_run,
        "command": " ".join(["python", "scripts/gpu_check.py", *(argv or sys.argv[1:])]),
        "total_s": round(time.perf_counter() - started, 1),
        "ok": all(r.get("ok") is not False for r in results.values()),
        "checks": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(body, indent=2) + "\n")
    print(f"# wrote {args.out}: ok={body['ok']} in {body['total_s']} s", flush=True)
    return 0 if body["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
