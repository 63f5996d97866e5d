"""FSDP memory: what each rank holds, sharded (trainer=fsdp, ftlab.sharding) against replicated
(DDP), fully trainable and with most of the model frozen (LoRA r=8).

Each case runs in its own launch of ``world`` processes (gloo on the CPU, nccl on GPUs):
ftlab's classifier on a random-init timm ViT, a few AdamW steps, then per rank the bytes of
the parameters it holds (local shards under FSDP), of the gradients it holds after backward
(FSDP2: only trainable parameters have one), of the optimizer states, and the peak memory:
``torch.cuda.max_memory_allocated`` on a GPU, on the CPU the growth of peak RSS during the
steps (noisy: allocator caches). The largest over the ranks is reported.

FSDP1 (torch's FullyShardedDataParallel, ``use_orig_params=True``, one unit per block) is
measured beside it for the frozen case: its gradient is a flat buffer per unit, as large as the
unit whether or not its parameters train (pytorch/pytorch #95805, PR #104967): the reason
ftlab uses FSDP2 (docs/devices.md).

    python benchmarks/run.py --only fsdp [--quick]
    python benchmarks/bench_fsdp.py --case fsdp2_lora --world 2   # one case, JSON on stdout
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
MIB = 2**20
CASES = (
    "replicated_full",
    "fsdp2_full",
    "fsdp2_full_ac",
    "replicated_lora",
    "fsdp2_lora",
    "fsdp1_lora",
)


def _bytes(tensors) -> int:
    total = 0
    for t in tensors:
        if t is None:
            continue
        t = t.to_local() if hasattr(t, "to_local") else t
        total += t.numel() * t.element_size()
    return total


def _worker(rank: int, world: int, case: str, model: str, size: int, steps: int, port: int):
    import torch.distributed as dist

    sys.path.insert(0, str(HERE))
    from common import build_module, peak_rss_bytes, reset_peak_rss

    cuda = torch.cuda.is_available()
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    freeze = "lora" if case.endswith("lora") else "none"
    module = build_module(model, freeze, size, num_classes=10)
    trainable = module.plan.trainable(0)
    for name, p in module.named_parameters():
        p.requires_grad_(name in trainable)
    module.to(device)
    flat_grads = None
    if case.startswith("fsdp2"):
        from torch.distributed.device_mesh import init_device_mesh

        from ftlab.sharding import shard_module

        mesh = init_device_mesh(device.type, (world,))
        shard_module(module, mesh, activation_checkpointing=case.endswith("_ac"))
        net = module
    elif case.startswith("fsdp1"):
        from timm.models.vision_transformer import Block
        from torch.distributed.fsdp import FullyShardedDataParallel
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        net = FullyShardedDataParallel(
            module,
            auto_wrap_policy=ModuleWrapPolicy({Block}),
            use_orig_params=True,
            device_id=device if cuda else None,
        )

        def flat_grads():
            return [
                m._handle.flat_param.grad
                for m in FullyShardedDataParallel.fsdp_modules(net)
                if m._handle is not None
            ]
    else:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(module, find_unused_parameters=freeze != "none")
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    x = torch.randn(8, 3, size, size, device=device)
    y = torch.randint(0, 10, (8,), device=device)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    reset_peak_rss()
    before = peak_rss_bytes()
    grad_bytes = 0
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        grads = flat_grads() if flat_grads else [p.grad for p in net.parameters()]
        grad_bytes = max(grad_bytes, _bytes(grads))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    state = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    row = {
        "param_bytes": _bytes(net.parameters()),
        "grad_bytes": grad_bytes,
        "optimizer_bytes": _bytes(state),
        "peak_bytes": torch.cuda.max_memory_allocated(device)
        if cuda
        else peak_rss_bytes() - before,
        "peak_kind": "cuda_max_allocated" if cuda else "rss_growth",
        "trainable_params": sum(p.numel() for n, p in module.named_parameters() if n in trainable),
        "total_params": sum(p.numel() for p in module.parameters())
        if case.startswith("rep")
        else None,
    }
    rows = [None] * world
    dist.all_gather_object(rows, row)
    if rank == 0:
        worst = {k: max(r[k] for r in rows) if isinstance(row[k], int) else row[k] for k in row}
        print(json.dumps({"case": case, "world": world, "device": device.type, **worst}))
    dist.destroy_process_group()


def one(case: str, world: int, model: str, size: int, steps: int) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(
        _worker, args=(world, case, model, size, steps, port), nprocs=world, join=True
    )


def run(quick: bool = False) -> list[dict]:
    from common import child_json, report

    model, size, steps = ("test_vit", 32, 2) if quick else ("vit_tiny_patch16_224", 224, 3)
    world = max(2, torch.cuda.device_count()) if torch.cuda.is_available() else 2
    args = ["--world", str(world), "--model", model, "--size", str(size), "--steps", str(steps)]
    # torch 2.14's FSDP1 refuses the CPU ("FSDP needs a non-CPU accelerator device, but no
    # accelerator device is detected"): its case runs on GPUs only.
    cases = [c for c in CASES if torch.cuda.is_available() or not c.startswith("fsdp1")]
    rows = {c: child_json(HERE / "bench_fsdp.py", ["--case", c, *args], 900) for c in cases}
    records = []
    for case, row in rows.items():
        row = {k: v for k, v in row.items() if k != "case"}
        for key in ("param_bytes", "grad_bytes", "optimizer_bytes", "peak_bytes"):
            records.append(
                report("fsdp", f"{case}/{key}", row[key] / MIB, "MiB", "info", None, **row)
            )
    full_p = rows["fsdp2_full"]["param_bytes"] / rows["replicated_full"]["param_bytes"]
    records.append(
        report("fsdp", "sharded/replicated param bytes", full_p, "ratio", "<= 1/world + 5%",
               full_p <= 1 / world + 0.05, model=model)
    )  # fmt: skip
    lora = rows["fsdp2_lora"]["grad_bytes"] / rows["fsdp2_full"]["grad_bytes"]
    share = rows["fsdp2_lora"]["trainable_params"] / rows["fsdp2_full"]["trainable_params"]
    records.append(
        report("fsdp", "lora/full grad bytes under fsdp2", lora, "ratio",
               "= trainable share +- 1%", abs(lora - share) <= 0.01, trainable_share=share)
    )  # fmt: skip
    if "fsdp1_lora" in rows:
        vs = rows["fsdp2_lora"]["grad_bytes"] / max(rows["fsdp1_lora"]["grad_bytes"], 1)
        records.append(
            report("fsdp", "lora grad bytes fsdp2/fsdp1", vs, "ratio", "< 0.2", vs < 0.2)
        )
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=CASES)
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--model", default="test_vit")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    if args.case:
        one(args.case, args.world, args.model, args.size, args.steps)
    else:
        run()


if __name__ == "__main__":
    main()
