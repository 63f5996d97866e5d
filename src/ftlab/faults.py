"""Faults during training: a preemption (SIGTERM), Ctrl-C (SIGINT, handled the same way: the
state saved, ``interrupted``, exit 130, the resume command) and a loss that is no longer finite.

SIGTERM: ftlab's handler (``on_sigterm``, in place of Lightning's, see ``Signals``) flags it
and passes it on to the DDP children this process started. ``FaultGuard`` acts on it at the
end of a training batch, on every rank at once (alone: the current batch; under DDP: the next
check, below, since the ranks must agree first): it saves ``checkpoints/last.ckpt`` there
(weights, optimizer, scheduler, phase, loop progress, the train loader's position and the RNGs,
see ftlab.data.resumable), the same state a periodic checkpoint holds, so ``resume=true``
continues exactly, and stops the loops with Lightning's ``SIGTERMException``. A SIGTERM during
validation, or at a batch that a validation or the epoch's end follows, is held until then:
Lightning would stop mid-validation, and a resume from there re-validates only the rest (from a
batch before a validation, none of it), so that epoch's val metrics (and the best checkpoint)
would differ. ``recorded`` then writes ``metrics.json`` with status ``interrupted`` and raises
``RunInterrupted``, whose message ends with the resume command.

A nan or inf loss stops the run at the next check, naming the step whose loss it was, and no
state from that step on is ever saved: every save checks first. A save whose weights are nan or
inf (a finite loss whose update overflowed) stops it too, before the file is written, so the
last good ``last.ckpt`` stays. ``metrics.json`` says ``failed`` with the reason.

No per-step host sync: each step's loss is tested on its own device, where the earliest
non-finite one is kept. The host reads that one number (a sync; under DDP one all-reduce that
also carries every rank's SIGTERM) only at a check: every ``faults.check_every`` optimizer
steps, at each epoch end, before a validation or a save that follows unchecked steps, and at
the end of training. The checks fall on the same steps on every rank, which all read the same
reduced value, so all stop together. The weights between a non-finite loss and its check are
lost work, never saved state.

SIGTERM outside Lightning's loops (building the model, reading the data, computing cached
features before the first step, between fit and test): ``preemptible`` turns it into the same
``interrupted`` ending, with whatever ``last.ckpt`` holds (nothing, before the first save).

SIGKILL cannot be caught: what it loses is bounded by the periodic checkpoint
(``callbacks.last_checkpoint.every_n_train_steps``). ``AtomicCheckpointIO`` writes every
checkpoint so that a kill at any moment leaves the file whole or absent, never torn.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.connectors.signal_connector import _SignalConnector
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ftlab.csv_log import drop_after
from ftlab.errors import FtlabError, RunInterrupted
from ftlab.finetuning.plan import Plan
from ftlab.outputs import write_json
from ftlab.rundir import LAST, is_global_zero, resume_command

log = logging.getLogger("ftlab")


class TrainingDiverged(FtlabError):
    """The loss became nan or inf; ``record`` is what metrics.json says about it."""

    def __init__(self, message: str, record: dict[str, Any]) -> None:
        super().__init__(message)
        self.record = record


# Larger than any step's code (2 * global step + 1): no non-finite loss since the last check.
_FINITE = 1 << 60


class FaultGuard(L.Callback):
    """Saves the state and stops on SIGTERM; stops on a non-finite loss before it is saved.

    ``check_every``: optimizer steps between checks (``faults.check_every``), the only points
    where the host waits for the device's verdict.
    """

    def __init__(self, run_dir: Path, plan: Plan, check_every: int = 10) -> None:
        if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1:
            raise FtlabError(
                f"faults.check_every={check_every!r} must be an integer >= 1 (optimizer steps "
                "between the checks for a nan loss or a SIGTERM), e.g. faults.check_every=10"
            )
        self.last = run_dir / LAST
        self.plan = plan
        self.check_every = check_every
        self.pending = False  # a SIGTERM arrived on this rank and is not acted on yet
        self.stop = False  # a check found a SIGTERM on some rank: every rank stops next
        self.saved = False
        # On the loss's device: the smallest _code of the losses since the last check.
        self.first_bad: torch.Tensor | None = None
        self.unchecked = 0  # losses since the last check: the same count on every rank
        self.checked_step = 0  # the global step of the last periodic check
        self.buffers: list[str] = []  # floating buffers finite at setup, checked at each save

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Before Lightning installs its SIGTERM handler (Trainer._run): ftlab's replaces it.
        if type(getattr(trainer, "_signal_connector", None)) is _SignalConnector:
            trainer._signal_connector = Signals(trainer)
        # The floating buffers that are finite now (once, at setup): each save checks them.
        # Some models keep -inf mask buffers on purpose; those are left out.
        floating = [(n, b) for n, b in pl_module.named_buffers() if b.is_floating_point()]
        if floating:
            ok = torch.stack([torch.isfinite(b).all() for _, b in floating]).tolist()
            self.buffers = [n for (n, _), good in zip(floating, ok, strict=True) if good]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A resumed run continues its CSV log from the step it resumes at (ftlab.csv_log).
        if trainer.ckpt_path and trainer.is_global_zero:
            drop_after(trainer.loggers, trainer.global_step)

    def on_before_backward(
        self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor
    ) -> None:
        # Device ops only: the host reads the verdict at the next check, not now.
        value = loss.detach()
        value = value if value.numel() == 1 else value.sum()  # non-finite if any element is
        code = torch.where(
            torch.isfinite(value), _FINITE, torch.isinf(value) + 2 * trainer.global_step
        )
        self.first_bad = code if self.first_bad is None else torch.minimum(self.first_bad, code)
        self.unchecked += 1

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Runs before the file is written, for every save (on every rank), so no state from a
        # step with a non-finite loss is ever saved. A finite loss can still come with an update
        # that overflowed the weights, and that state must not replace the last good one either.
        # Trainable parameters only: frozen ones do not change, and some models keep -inf mask
        # buffers on purpose. One host sync for all of them.
        if self.unchecked:
            self._check(trainer)
        # Buffers too: an overflowed update leaves BatchNorm's running_var inf while the loss
        # (batch statistics) stays finite. Only those finite at the start (self.buffers).
        named = dict(pl_module.named_buffers())
        tensors = [
            ("weight", n, p.detach()) for n, p in pl_module.named_parameters() if p.requires_grad
        ]
        tensors += [("buffer", n, named[n].detach()) for n in self.buffers if n in named]
        if not tensors:
            return
        finite = torch.stack([torch.isfinite(t).all() for *_, t in tensors])
        if not bool(finite.all()):
            what, name, value = next(
                t for t, ok in zip(tensors, finite.tolist(), strict=True) if not ok
            )
            raise self._diverged(trainer, f"{what} {name} is {_kind(value)}")

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.unchecked:  # no validation (nor best checkpoint) of weights a nan has reached
            self._check(trainer)

    def on_validation_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        self._hold(trainer)  # Lightning checks its flag right after this hook

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._hold(trainer)
        # Before ModelCheckpoint's hook (Lightning runs checkpoint callbacks last): a
        # validation whose loss is not finite is never saved as best, and training stops.
        loss = trainer.callback_metrics.get("val/loss") if trainer.state.fn == "fit" else None
        if loss is not None and not bool(torch.isfinite(loss).all()):  # one read a validation
            raise self._diverged(trainer, f"validation loss is {_kind(loss)}")

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        # Lightning would stop this rank alone at the end of the batch: the flag moves here.
        self._hold(trainer)
        step = trainer.global_step
        if step % self.check_every == 0 and step != self.checked_step:
            self.checked_step = step
            self._check(trainer)
        signalled = self.stop or (self.pending and trainer.world_size == 1)  # alone: no agreeing
        # Not where a validation or the epoch's end follows: Lightning resumes a state saved
        # there without them (LastCheckpoint). Held to the next batch end, or on_train_end.
        if signalled and not boundary_follows(trainer):
            self._stop(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The reported epoch and phase stay those of the bad step. Under DDP also a SIGTERM
        # held through the epoch's validation: agreed here, acted on at the next batch's end.
        self._hold(trainer)
        if self.unchecked or trainer.world_size > 1:
            self._check(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check(trainer)  # a SIGTERM held through the last validation
        if self.stop:
            self._stop(trainer)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        # Lightning stopped on its own (a signal between the points above): keep that state.
        # Only during fit: validate/test after it hold the best weights, not the run's state.
        # Not before the first step (a SIGTERM while the train loader computes cached features):
        # there is nothing to keep, and the trainer may be half set up.
        fit = trainer.state.fn == "fit" and trainer.global_step > 0
        if isinstance(exception, SIGTERMException) and fit and not self.saved:
            self._save(trainer)

    def _hold(self, trainer: L.Trainer) -> None:
        connector = getattr(trainer, "_signal_connector", None)  # Lightning 2.x, private
        if connector is None or trainer.state.fn != "fit":
            return
        # ftlab's handler sets `preempted` (Signals); Lightning's own flag is moved here too.
        if connector.received_sigterm or getattr(connector, "preempted", False):
            connector.received_sigterm = False
            connector.preempted = False
            self.pending = True

    def _check(self, trainer: L.Trainer) -> None:
        """The host's one read of the device (under DDP after one all-reduce over the ranks):
        raises if any rank had a non-finite loss since the last check, else sets ``stop`` if any
        rank holds a SIGTERM. Called at the same points on every rank."""
        first = self.first_bad
        if first is None:
            first = torch.full((), _FINITE, dtype=torch.long, device=trainer.strategy.root_device)
        # One integer says both: its minimum over the ranks is the earliest non-finite loss,
        # or, with every loss finite, even when some rank holds a SIGTERM.
        code = first * 2 + (0 if self.pending else 1)
        if trainer.world_size > 1:  # a signal may reach the ranks at different batches
            code = _all_min(trainer, code)
        bad, go_on = divmod(int(code.item()), 2)
        self.first_bad, self.unchecked = None, 0
        if bad < _FINITE:
            step, inf = divmod(bad, 2)
            raise self._diverged(trainer, f"loss is {'inf' if inf else 'nan'}", step)
        self.stop = self.stop or not go_on

    def _stop(self, trainer: L.Trainer) -> None:
        self._save(trainer)
        raise SIGTERMException

    def _save(self, trainer: L.Trainer) -> None:
        trainer.save_checkpoint(self.last)
        self.saved = True
        log.info(
            "%s: state at global step %d saved to %s",
            signal_name(),
            trainer.global_step,
            self.last,
        )

    def _diverged(self, trainer: L.Trainer, what: str, step: int | None = None) -> TrainingDiverged:
        phase = self.plan.phase_at(trainer.current_epoch)
        groups = ", ".join(self.plan.summary()[phase]["unfrozen"]) or "no new groups"
        kept = self.last if self.last.is_file() else None
        where = (
            f"{kept} (global step {_step_of(kept)}) is the last saved state"
            if kept
            else "no checkpoint was saved before it"
        )
        step = trainer.global_step if step is None else step
        message = (
            f"{what} at global step {step} (epoch {trainer.current_epoch}, "
            f"phase {phase}: {groups} unfrozen): training stopped, {where}; lower optimizer.lr "
            "or set trainer.gradient_clip_val and start again"
        )
        record = {
            "global_step": step,
            "epoch": trainer.current_epoch,
            "phase": phase,
            "last_checkpoint": str(kept) if kept else None,
        }
        return TrainingDiverged(message, record)


def _all_min(trainer: L.Trainer, value: torch.Tensor) -> torch.Tensor:
    """The minimum over the ranks: one all-reduce (Lightning's ``reduce`` adds a barrier)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MIN)
        return value
    return trainer.strategy.reduce(value, reduce_op="min")


def _kind(values: torch.Tensor) -> str:
    """nan, inf, or (a finite value here; another DDP rank's was not) not finite."""
    return "nan" if values.isnan().any() else "inf" if values.isinf().any() else "not finite"


def _step_of(path: Path) -> int | str:
    try:
        return int(
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)["global_step"]
        )
    except Exception:  # a checkpoint we cannot read is still named; its step is unknown
        return "?"


@contextmanager
def recorded(trainer: L.Trainer, run_dir: Path, started: dict[str, Any]) -> Iterator[None]:
    """Turn a SIGTERM stop or a divergence into metrics.json's status and a one-line exception.

    ``started`` is what metrics.json records about any run (seed, model); rank 0 writes it.
    """
    try:
        yield
    except SIGTERMException:
        last = run_dir / LAST
        command = resume_command(run_dir)
        record = {
            "status": "interrupted",
            "reason": signal_name(),
            "global_step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "checkpoint": str(last) if last.is_file() else None,
            "resume": command,
            **started,
        }
        if trainer.is_global_zero:
            write_json(run_dir / "metrics.json", record)
        saved = f"state saved to {last}" if last.is_file() else "no state saved"
        raise RunInterrupted(
            f"{signal_name()} at global step {trainer.global_step} (epoch "
            f"{trainer.current_epoch}); {saved}; continue with: {command}",
            exit_code=128 + _signum(),
        ) from None
    except DiskFull as err:
        if trainer.is_global_zero:
            # A few hundred bytes: the disk usually has them, and the run's record needs them.
            with suppress(OSError):
                write_json(
                    run_dir / "metrics.json",
                    {"status": "failed", "error": str(err), "checkpoint": err.kept, **started},
                )
        raise
    except TrainingDiverged as err:
        if trainer.is_global_zero:
            write_json(
                run_dir / "metrics.json",
                {"status": "failed", "error": str(err), **err.record, **started},
            )
        raise


def boundary_follows(trainer: L.Trainer) -> bool:
    """Whether the training batch that just ended is followed by a validation or by the end of
    its epoch (Lightning 2.x's rule for when it validates; a batch limit, max_steps and early
    stopping only end an epoch sooner)."""
    loop = trainer.fit_loop.epoch_loop
    if loop.batch_progress.is_last_batch or loop.batch_idx + 1 >= trainer.num_training_batches:
        return True
    every = trainer.val_check_batch
    if not trainer.enable_validation or every is None or every == float("inf"):
        return False
    done = loop.total_batch_idx if trainer.check_val_every_n_epoch is None else loop.batch_idx
    return (done + 1) % int(every) == 0


class LastCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` for ``last.ckpt`` (conf/callbacks): the same options, but a step
    whose batch is followed by a validation or by its epoch's end is saved after them.

    Lightning resumes a checkpoint written between a batch's end and the validation after it
    as if that validation, and the epoch's end, had happened: the resumed run skips them (the
    epoch's val metrics and best checkpoint are never made) and its loader starts the next
    epoch where the last one stopped. From any other batch end, and from an epoch's end,
    it resumes exactly (ftlab.data.resumable). ``every_n_train_steps=1`` then saves every
    step, each epoch's last one once its epoch is over.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deferred = False  # this step's save waits for the validation or the epoch end

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self._every_n_train_steps >= 1 and boundary_follows(trainer):
            self._deferred = True
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        epoch_end = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        if self._deferred and trainer.state.fn == "fit" and not epoch_end:  # a mid-epoch one
            self._save_deferred(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._deferred:
            self._save_deferred(trainer, pl_module)

    def _save_deferred(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._deferred = False
        batch_idx = trainer.fit_loop.epoch_loop.batch_idx
        super().on_train_batch_end(trainer, pl_module, None, None, batch_idx)


# The signal connectors of the trainers whose loops run now (Lightning registers its handlers
# for each fit/validate/test and restores the previous ones after it).
_listening: list[Signals] = []


# The signals that stop a run with its state saved: a preemption and Ctrl-C alike.
STOPPING = (signal.SIGTERM, signal.SIGINT)
_received: list[int] = []  # the stopping signals this process got, in order


def signal_name() -> str:
    """The stopping signal this run got (SIGTERM when none was seen: Lightning's own flag)."""
    return signal.Signals(_signum()).name


def _signum() -> int:
    return _received[0] if _received else int(signal.SIGTERM)


def on_sigterm(signum: int, frame: Any) -> None:
    """ftlab's handler of SIGTERM and SIGINT (Ctrl-C), installed for the whole run
    (``preemptible``). A second Ctrl-C gives up on saving: Python's KeyboardInterrupt.

    During fit it only sets a flag, which ``FaultGuard`` acts on at a batch end, every rank at
    the same step; DDP children started by this process get the signal too, as Lightning's
    handler does. Anywhere else it raises ``SIGTERMException`` at once.
    """
    # (Rank 0 only: a terminal's Ctrl-C reaches DDP children directly and, forwarded, again.)
    if signum == signal.SIGINT and signal.SIGINT in _received and is_global_zero():
        raise KeyboardInterrupt  # Ctrl-C twice: stop now, unsaved
    _received.append(signum)
    connector = _listening[-1] if _listening else None
    if connector is None:
        raise SIGTERMException
    trainer = connector.trainer
    log.info("%s received (rank %d)", signal.Signals(signum).name, trainer.global_rank)
    launcher = trainer.strategy.launcher
    if not connector.preempted and launcher is not None:
        launcher.kill(signum)
    connector.preempted = True
    if trainer.state.fn != "fit":  # validate or test after fit: nothing to save, stop now
        raise SIGTERMException


class Signals(_SignalConnector):
    """Lightning's signal connector with ftlab's SIGTERM handler instead of its own.

    Lightning 2.6's handler runs a ``dist.broadcast`` inside the signal handler under DDP: the
    handler interrupts a rank anywhere, often inside another collective (a gradient bucket's
    all-reduce), and gloo aborts with "collective mismatch". Its flag is also read by each rank
    alone at several points (epoch end, evaluation batches), so ranks stop at different steps.
    ftlab's handler (:func:`on_sigterm`) sets ``preempted`` instead, which only ``FaultGuard``
    reads and agrees on across the ranks. Other signals (SLURM's requeue) stay Lightning's.
    """

    def __init__(self, trainer: L.Trainer) -> None:
        super().__init__(trainer)
        self.preempted = False

    def register_signal_handlers(self) -> None:
        super().register_signal_handlers()
        self.preempted = False
        if threading.current_thread() is threading.main_thread():
            for signum in STOPPING:
                signal.signal(signum, on_sigterm)
        _listening.append(self)

    def teardown(self) -> None:
        super().teardown()  # restores the handler found at registration (on_sigterm, outside)
        if self in _listening:
            _listening.remove(self)


@contextmanager
def preemptible(run_dir: Path, started: dict[str, Any]) -> Iterator[None]:
    """A SIGTERM anywhere in the run ends it as ``interrupted`` (metrics.json, exit 143).

    Installs :func:`on_sigterm` for the whole run. Outside Lightning's loops (the model and
    data being built, cached features computed before the first step, between fit and test)
    the default action would kill the process with no status and nothing saved; there it
    raises ``SIGTERMException`` instead, recorded here. A stop inside the loops is recorded by
    ``recorded``.
    """

    main = threading.current_thread() is threading.main_thread()  # signals go to the main thread
    _received.clear()
    previous = {s: signal.signal(s, on_sigterm) for s in STOPPING} if main else {}
    try:
        yield
    except SIGTERMException:
        last = run_dir / LAST
        step = _step_of(last) if last.is_file() else 0
        command = resume_command(run_dir)
        record = {
            "status": "interrupted",
            "reason": signal_name(),
            "global_step": step,
            "checkpoint": str(last) if last.is_file() else None,
            "resume": command,
            **started,
        }
        if is_global_zero():
            write_json(run_dir / "metrics.json", record)
        where = (
            f"state at global step {step} saved to {last}"
            if last.is_file()
            else "nothing saved yet"
        )
        raise RunInterrupted(
            f"{signal_name()} outside the training loop; {where}; continue with: {command}",
            exit_code=128 + _signum(),
        ) from None
    finally:
        if main:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


class DiskFull(FtlabError):
    """A checkpoint did not fit on its file system; the previous files stay whole (atomic)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        last = path.parent / LAST.name
        kept = [p for p in (path, last) if p.is_file()]
        self.kept = str(kept[0]) if kept else None
        free = shutil.disk_usage(path.parent).free if path.parent.exists() else 0
        what = (
            f"{self.kept} (global step {_step_of(kept[0])}) is kept whole"
            if kept
            else ("no earlier checkpoint is kept")
        )
        super().__init__(
            f"no space left on the device writing {path} ({_size(free)} free in {path.parent}): "
            f"{what}; free some space (or set paths.output_dir elsewhere) and continue with "
            "resume=true"
        )


def _disk_full(err: BaseException) -> bool:
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(seen) or "unexpected pos" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint whole or not at all: a hidden file next to it, fsync, then rename.

    Lightning's own writer stages the bytes in the system's temporary directory and moves them
    into place; across file systems (a node-local /tmp, the run on a shared one) that move is a
    copy, which a SIGKILL can leave half done, and the staged file stays behind in /tmp. A
    rename within one directory is atomic: a reader sees the old file or the new one. The fsync
    makes the new one survive a crash of the machine too. A kill leaves at most the hidden
    ``.<name>.<pid>.partial``, which ``ftlab.rundir`` removes when the run directory is claimed.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or "://" in str(path):  # remote storage: Lightning's way
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        try:
            with open(partial, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(partial, path)
        except BaseException as err:
            partial.unlink(missing_ok=True)
            if _disk_full(err):  # torch reports it as "unexpected pos", with ENOSPC inside
                raise DiskFull(path) from None
            raise
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself
        finally:
            os.close(directory)
