"""``trainer=fsdp``: parameters, gradients and optimizer states sharded across ranks (FSDP2).

Why FSDP2 (``torch.distributed.fsdp.fully_shard``) through Lightning's ``ModelParallelStrategy``
and not Lightning's ``FSDPStrategy`` (FSDP1), measured on torch 2.14.1 / Lightning 2.6.6:

- FSDP1 flattens each wrapped unit into one ``FlatParameter``: a unit mixing frozen and trainable
  parameters fails (``FlatParameter requires uniform requires_grad``; llm-foundry #620,
  audiocraft #260) unless ``use_orig_params=True``, and then the gradient memory is that of a
  fully trainable unit (pytorch #95805, PR #104967). ftlab freezes by ``requires_grad`` inside
  layer groups (LoRA's frozen base weight and trainable adapters share a block; BitFit's biases),
  and its phases change ``requires_grad`` mid-run.
- FSDP2 shards every parameter on its own (a ``DTensor`` on dim 0): frozen and trainable
  parameters mix freely in one unit, only parameters with ``requires_grad`` get a gradient
  (tests/test_fsdp.py measures it), and a parameter unfrozen mid-run is reduce-scattered from
  its next backward on (tests/test_fsdp.py: its weights move after its phase starts).
- Lightning refuses ``FSDPStrategy`` unless ``accelerator`` is a GPU
  (``accelerator_connector._check_strategy_and_fallback``: "requires a GPU accelerator"), so FSDP1
  could not be tested on the CPU here; ``ModelParallelStrategy`` runs on the CPU over gloo.
- ``ModelParallelStrategy`` expects the module to shard itself in ``configure_model``; ftlab's
  modules do not know about devices, so :class:`ShardedStrategy` shards them in ``setup`` from
  the backbone's layer groups, on a one-dimensional mesh (pure data parallel, no tensor
  parallel). Lightning allows it 32-true, bf16-mixed, bf16-true and 16-true, not 16-mixed
  (``_validate_precision_choice``).

Checkpoints are sharded folders (one file per rank plus ``meta.pt``, torch.distributed.checkpoint)
that resume on the same world size; :func:`consolidate` turns one into a single Lightning
checkpoint file that eval.py and the exports read.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn

from ftlab.errors import FtlabError

log = logging.getLogger("ftlab")

# Lightning's ModelParallelStrategy.__init__ default.
DEFAULT_TIMEOUT = timedelta(seconds=1800)


def wrap_units(backbone: nn.Module) -> list[list[str]]:
    """The FSDP units of a backbone: per layer group, the module paths (relative to
    ``backbone``) whose parameters it gathers, uses and frees together.

    A group that is one module is one unit of one module (``blocks.3``, ``encoder.layer.0``,
    ``stages.1``); a group of several pieces is one unit of the largest modules lying wholly
    inside it (``blocks.5+norm``, ``stages.1.downsample+stages.1.blocks.0``, a CNN stem
    ``conv1+bn1``; ``fully_shard`` takes a list of modules). Root parameters (a ViT's
    ``cls_token``, ``pos_embed``) stay with the backbone's own unit. Adapters (LoRA, peft) sit
    inside their block's modules and shard with them.
    """
    groups = backbone.layer_groups()
    if len(groups) < 2:  # one group: the backbone's own unit is the only one
        return []
    owner = {p: g.name for g in groups for p in g.param_names}
    pieces: dict[str, list[str]] = {g.name: [] for g in groups}
    taken: list[str] = []
    for path, module in backbone.named_modules():
        if not path or any(path.startswith(t + ".") for t in taken):
            continue
        names = {owner.get(f"{path}.{n}") for n, _ in module.named_parameters()}
        if len(names) == 1 and None not in names:  # wholly inside one group
            (group,) = names
            pieces[group].append(path)
            taken.append(path)
    return [paths for paths in pieces.values() if paths]


def shard_module(
    module: nn.Module,
    mesh: Any,
    *,
    activation_checkpointing: bool = False,
    cpu_offload: bool = False,
    reshard_after_forward: bool = True,
) -> list[list[str]]:
    """Apply ``fully_shard`` to the backbone's units, the backbone and the head, in place.

    Returns the units (:func:`wrap_units`). Parameter names stay as they were (FSDP2 keeps
    FQNs, and the composable ``checkpoint`` adds no wrapper module), so the plan's groups,
    the optimizer's param groups and checkpoints keep their keys. Calling it on a module
    already sharded does nothing.
    """
    from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, fully_shard

    if isinstance(module.backbone, FSDPModule):
        return []
    backbone = module.backbone
    units = wrap_units(backbone)
    offload = CPUOffloadPolicy() if cpu_offload else None
    kwargs: dict[str, Any] = {"mesh": mesh, "reshard_after_forward": reshard_after_forward}
    if offload is not None:
        kwargs["offload_policy"] = offload
    for paths in units:
        parts = [backbone.get_submodule(path) for path in paths]
        if activation_checkpointing:
            # The composable API: recompute the unit's activations in backward; unlike
            # checkpoint_wrapper it inserts no ``_checkpoint_wrapped_module`` into the names.
            from torch.distributed._composable import checkpoint

            for part in parts:
                checkpoint(part)
        fully_shard(parts if len(parts) > 1 else parts[0], **kwargs)
    fully_shard(backbone, **kwargs)
    if any(True for _ in module.head.parameters()):
        fully_shard(module.head, **kwargs)
    return units


class ShardedStrategy(ModelParallelStrategy):
    """Lightning's ModelParallelStrategy with ftlab's own sharding (FSDP2 on every rank).

    Args:
        activation_checkpointing: recompute each unit's activations in backward.
        cpu_offload: keep sharded parameters, gradients and optimizer states in host memory
            (FSDP2's ``CPUOffloadPolicy``); the optimizer steps on the CPU.
        reshard_after_forward: free gathered parameters after each unit's forward (ZeRO-3);
            False keeps them until backward (ZeRO-2: less communication, more memory).
        save_distributed_checkpoint: one shard per rank (True) or one full file gathered on
            rank 0 (False).
    """

    def __init__(
        self,
        activation_checkpointing: bool = False,
        cpu_offload: bool = False,
        reshard_after_forward: bool = True,
        save_distributed_checkpoint: bool = True,
        process_group_backend: str | None = None,
        timeout: timedelta | None = DEFAULT_TIMEOUT,
    ) -> None:
        super().__init__(
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend,
            timeout=timeout,
        )
        self.activation_checkpointing = bool(activation_checkpointing)
        self.cpu_offload = bool(cpu_offload)
        self.reshard_after_forward = bool(reshard_after_forward)
        self.units: list[list[str]] = []

    def setup_environment(self) -> None:
        # Pure data parallel: every rank in one shard group (the parent's "auto" would give a
        # tensor-parallel dimension of the local processes).
        self._data_parallel_size = self.num_nodes * self.num_processes
        self._tensor_parallel_size = 1
        super().setup_environment()

    def setup(self, trainer: Any) -> None:
        # ModelParallelStrategy.setup, with ftlab's sharding where it calls the module's
        # configure_model (which ftlab's modules do not define).
        from lightning.fabric.utilities.init import _materialize_distributed_module
        from lightning.fabric.utilities.optimizer import _optimizers_to_device
        from lightning.pytorch.trainer.states import TrainerFn

        assert self.model is not None and self.accelerator is not None
        self.accelerator.setup(trainer)
        module = self.lightning_module
        if not (hasattr(module, "backbone") and hasattr(module, "head")):
            raise FtlabError(
                f"trainer=fsdp shards ftlab modules (a backbone and a head); "
                f"{type(module).__name__} has no backbone/head: use trainer=ddp"
            )
        if self.cpu_offload and self.root_device.type == "cpu":
            raise FtlabError(
                "trainer.strategy.cpu_offload=true offloads GPU memory to the host; this run "
                "is on the CPU already: set trainer.strategy.cpu_offload=false"
            )
        mesh = self.device_mesh["data_parallel"]
        if not _is_sharded(module):
            self._plain = _meta_copies(module)
        units = shard_module(
            module,
            mesh,
            activation_checkpointing=self.activation_checkpointing,
            cpu_offload=self.cpu_offload,
            reshard_after_forward=self.reshard_after_forward,
        )
        if units:
            self.units = units
            if self.global_rank == 0:
                log.info(
                    "fsdp: %d units (%s) sharded over %d ranks",
                    len(units),
                    _shorten(["+".join(u) for u in units]),
                    mesh.size(),
                )
        _materialize_distributed_module(self.model, self.root_device)
        self.model = self.precision_plugin.convert_module(self.model)
        if not self.cpu_offload:  # offloaded shards stay on the host
            self.model_to_device()
        self.barrier()
        if trainer.state.fn == TrainerFn.FITTING:
            self.setup_optimizers(trainer)
        self.setup_precision_plugin()
        if trainer.state.fn == TrainerFn.FITTING and not self.cpu_offload:
            _optimizers_to_device(self.optimizers, self.root_device)

    def teardown(self) -> None:
        # After fit, validate or test the module is made whole again on every rank: ftlab's
        # post-fit evaluation (drift, WiSE-FT, OOD sets, adapter and metric files) runs on rank 0
        # alone, and a sharded module's forward would wait for the other ranks' all-gathers.
        # The next validate or test shards it again.
        module = self.lightning_module
        if module is not None and _is_sharded(module) and getattr(self, "_plain", None):
            unshard_module(module, self._plain, self.root_device)
            self._plain = None
        super().teardown()

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> Any:
        # torch.distributed.checkpoint loads into the state the optimizer has now; with none yet,
        # get_optimizer_state_dict makes one for EVERY parameter with requires_grad (a zero-lr
        # step), and the module is fully trainable at this point (phases apply at train start).
        # A checkpoint saved while groups were frozen holds states only for those that trained:
        # the load then fails ("Missing key in checkpoint state_dict: optimizer_0.state...") and,
        # were the keys skipped, a group unfrozen later would start from a step count of 1
        # rather than 0. So: states are made for exactly the parameters the checkpoint has.
        from lightning.pytorch.trainer.states import TrainerFn

        path = Path(self.broadcast(checkpoint_path))
        trainer = self.lightning_module.trainer
        if trainer.state.fn != TrainerFn.FITTING and self.optimizers:
            # validate/test after fit: the weights only (the fit's optimizer is still attached,
            # and its states, made since, would be matched against the file's)
            optimizers, self.optimizers = self.optimizers, []
            try:
                return super().load_checkpoint(path, weights_only=weights_only)
            finally:
                self.optimizers = optimizers
        if is_sharded_checkpoint(path) and self.optimizers:
            from torch.distributed.checkpoint import FileSystemReader

            saved = set(FileSystemReader(path).read_metadata().state_dict_metadata)
            named = dict(self.lightning_module.named_parameters())
            has_state: set[str] = set()
            for index, optimizer in enumerate(self.optimizers):
                prefix = f"optimizer_{index}.state."
                mine = {k[len(prefix) :].rsplit(".", 1)[0] for k in saved if k.startswith(prefix)}
                _init_states(optimizer, [p for n, p in named.items() if n in mine])
                has_state |= mine
            # set_optimizer_state_dict also refuses a parameter with requires_grad and no saved
            # state: those are frozen for the load (the phase callback sets them at train start).
            was = {n: p.requires_grad for n, p in named.items()}
            for n, p in named.items():
                p.requires_grad_(was[n] and n in has_state)
            try:
                return super().load_checkpoint(path, weights_only=weights_only)
            finally:
                for n, p in named.items():
                    p.requires_grad_(was[n])
        return super().load_checkpoint(path, weights_only=weights_only)


def _is_sharded(module: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(getattr(module, "backbone", None), FSDPModule)


def _meta_copies(module: nn.Module) -> dict[str, nn.Module]:
    """Unsharded copies of the backbone and the head with their parameters on the meta device
    (no memory): the shapes :func:`unshard_module` fills with the gathered weights."""
    import copy

    out = {}
    for name in ("backbone", "head"):
        part = getattr(module, name)
        memo = {
            id(p): nn.Parameter(torch.empty_like(p, device="meta"), p.requires_grad)
            for p in part.parameters()
        }
        out[name] = copy.deepcopy(part, memo)
    return out


def unshard_module(module: nn.Module, plain: dict[str, nn.Module], device: torch.device) -> None:
    """Replace the sharded backbone and head by whole ones holding the gathered weights, on
    every rank (a collective), with ``requires_grad`` as it was."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True))
    for name, part in plain.items():
        sharded = getattr(module, name)
        trains = {n: p.requires_grad for n, p in sharded.named_parameters()}
        prefix = f"{name}."
        state = {k[len(prefix) :]: v for k, v in full.items() if k.startswith(prefix)}
        part.to_empty(device=device)
        part.load_state_dict(state)
        for n, p in part.named_parameters():
            p.requires_grad_(trains.get(n, p.requires_grad))
        part.train(sharded.training)
        setattr(module, name, part)


def _init_states(optimizer: torch.optim.Optimizer, params: list[nn.Parameter]) -> None:
    """Give ``params`` (only) an optimizer state, by one step at lr 0 on zero gradients; the
    checkpoint's values replace it."""
    if optimizer.state or not params:
        return
    wanted = {id(p) for p in params}
    lrs = [group["lr"] for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["lr"] = torch.tensor(0.0) if torch.is_tensor(group["lr"]) else 0.0
        for p in group["params"]:
            p.grad = torch.zeros_like(p) if id(p) in wanted else None
    optimizer.step()
    for group, lr in zip(optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)


def _shorten(units: list[str]) -> str:
    """The first two and the last unit of a long list."""
    return ", ".join(units) if len(units) <= 4 else f"{units[0]}, {units[1]}, ..., {units[-1]}"


def is_sharded_checkpoint(path: str | Path) -> bool:
    """A folder written by torch.distributed.checkpoint (``.metadata`` inside)."""
    path = Path(path)
    return path.is_dir() and (path / ".metadata").is_file()


def consolidate(folder: str | Path, output: str | Path, weights_only: bool = True) -> Path:
    """One Lightning checkpoint file from a sharded checkpoint folder, on one process.

    ``weights_only`` (default) keeps the state dict and ftlab's record and drops the optimizer
    and loop states (what eval.py and the exports read); False keeps everything, for a resume
    on a single device. Lightning's ``consolidate_checkpoint`` expects FSDPStrategy's layout
    (a ``model`` key), ModelParallelStrategy writes ``state_dict``: hence this function.
    """
    from lightning.fabric.utilities.load import _load_distributed_checkpoint

    folder = Path(folder)
    if not is_sharded_checkpoint(folder):
        raise FtlabError(
            f"{folder}: not a sharded checkpoint folder (no .metadata inside): give the "
            "folder trainer=fsdp saved, e.g. checkpoints/last.ckpt"
        )
    checkpoint = _load_distributed_checkpoint(folder)
    optimizers = sorted(k for k in checkpoint if re.fullmatch(r"optimizer_\d+", k))
    states = [checkpoint.pop(k) for k in optimizers]
    if weights_only:
        keep = ("state_dict", "ftlab", "epoch", "global_step", "pytorch-lightning_version")
        checkpoint = {k: v for k, v in checkpoint.items() if k in keep}
    else:
        checkpoint["optimizer_states"] = states
    checkpoint["state_dict"] = {k: _plain(v) for k, v in checkpoint["state_dict"].items()}
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, output)
    return output


def _plain(value: Any) -> Any:
    return value.contiguous() if torch.is_tensor(value) else value


def trainable_grad_bytes(params: Iterable[nn.Parameter]) -> int:
    """Bytes of the gradients this rank holds (local shards of sharded ones)."""
    total = 0
    for p in params:
        if p.grad is not None:
            grad = p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad
            total += grad.numel() * grad.element_size()
    return total


def main(argv: list[str] | None = None) -> int:
    """``python -m ftlab.sharding FOLDER OUT.ckpt [--full]``: a sharded checkpoint as one file."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m ftlab.sharding", description=main.__doc__)
    parser.add_argument("folder", help="a checkpoint folder trainer=fsdp saved")
    parser.add_argument("output", help="the single checkpoint file to write")
    parser.add_argument(
        "--full", action="store_true", help="keep optimizer and loop states (a 1-device resume)"
    )
    args = parser.parse_args(argv)
    try:
        out = consolidate(args.folder, args.output, weights_only=not args.full)
    except FtlabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
