"""Every lightning.Trainer keyword is a known key of the trainer group, read from Lightning's own
signature; a misspelled one is answered in one line with the closest keyword."""

from __future__ import annotations

import inspect
import subprocess
import sys

import lightning as L
import pytest
from conftest import ROOT
from hydra.utils import instantiate
from warm_cli import run_cli_warm

from ftlab import trainer_keys
from ftlab.cli import config_values
from ftlab.config_checks import check_config, rule_for
from ftlab.errors import FtlabError


def _signature() -> dict[str, object]:
    parameters = inspect.signature(L.Trainer.__init__).parameters.values()
    return {p.name: p.default for p in parameters if p.name != "self"}


def test_the_keywords_read_from_source_are_lightnings_signature():
    """The ast reading (no torch at composition) equals inspect.signature of the import."""
    assert trainer_keys.trainer_keywords() == _signature()


@pytest.mark.parametrize("trainer", ["default", "cpu", "gpu", "ddp", "ddp_cpu", "lightning"])
def test_every_trainer_option_has_every_keyword(make_cfg, trainer):
    node = make_cfg(f"trainer={trainer}").trainer
    expected = set(_signature()) - set(trainer_keys.SET_BY_FTLAB)
    assert set(node) - {"_target_"} == expected
    check_config(config_values(make_cfg(f"trainer={trainer}")))


def test_keys_the_issue_names_work_without_a_plus(make_cfg):
    cfg = make_cfg("trainer.val_check_interval=0.5", "trainer.check_val_every_n_epoch=2")
    trainer = instantiate(cfg.trainer, callbacks=[], logger=False, enable_progress_bar=False)
    assert (trainer.val_check_interval, trainer.check_val_every_n_epoch) == (0.5, 2)
    gpu = make_cfg("trainer=gpu", "trainer.num_nodes=2").trainer
    assert (gpu.num_nodes, gpu.precision, gpu.accelerator) == (2, "bf16-mixed", "gpu")
    # ftlab's own defaults stay over Lightning's
    assert (cfg.trainer.num_sanity_val_steps, cfg.trainer.precision) == (0, "32-true")


def test_lightning_defaults_reach_the_trainer_unchanged():
    """An untouched key is passed at Lightning's default: the same Trainer as leaving it out."""
    plain = L.Trainer(logger=False, enable_progress_bar=False)
    given = L.Trainer(**trainer_keys.known_keys(), logger=False, enable_progress_bar=False)
    for key in ("max_epochs", "val_check_interval", "check_val_every_n_epoch", "num_nodes"):
        assert getattr(given, key) == getattr(plain, key), key


def test_every_numeric_keyword_has_a_row():
    """A keyword whose default is a number, or whose annotation takes one, is checked at
    composition (ftlab.config_checks.NUMBERS). Not counted: max_time (a duration), precision
    (a name or a bit width) and fast_dev_run (true/false or a batch count: NUMBERS' forms refuse
    booleans by design), which Lightning checks itself in one line; and ftlab's own keywords."""
    parameters = inspect.signature(L.Trainer.__init__).parameters.values()
    numeric = {
        p.name
        for p in parameters
        if (isinstance(p.default, int | float) and not isinstance(p.default, bool))
        or any(t in str(p.annotation) for t in ("int", "float"))
    } - {"max_time", "precision", "fast_dev_run", *trainer_keys.SET_BY_FTLAB}
    assert {"val_check_interval", "num_nodes", "overfit_batches"} <= numeric
    missing = sorted(k for k in numeric if rule_for(f"trainer.{k}") is None)
    assert not missing, f"add rows to ftlab.config_checks.NUMBERS: {missing}"
    for key, default in trainer_keys.known_keys().items():
        rule = rule_for(f"trainer.{key}")
        assert rule is None or rule.accepts(default), key


LINES = {
    "a misspelled key": (
        ["trainer.val_chek_interval=0.5"],
        "error: trainer.val_chek_interval is not a lightning.Trainer keyword: did you mean "
        "trainer.val_check_interval?",
    ),
    "a misspelled key, appended with ++": (
        ["++trainer.max_step=5"],
        "error: trainer.max_step is not a lightning.Trainer keyword: did you mean "
        "trainer.max_steps?",
    ),
    "a + on a key that exists": (
        ["+trainer.max_steps=5"],
        "error: +trainer.max_steps=5: trainer.max_steps is a known key (every lightning.Trainer "
        "keyword is): drop the +, e.g. trainer.max_steps=5",
    ),
    "a keyword ftlab sets": (
        ["trainer.logger=false"],
        "error: trainer.logger is set by ftlab, not by the trainer config: choose loggers with "
        "logger=csv|tensorboard|wandb|none or logger=[csv,wandb]",
    ),
    "nothing close": (
        ["trainer.zzzz=1"],
        "error: trainer.zzzz is not a lightning.Trainer keyword: see lightning.Trainer's arguments",
    ),
}


@pytest.mark.slow  # train.py in forked processes (the fork server imports torch first)
@pytest.mark.parametrize(("overrides", "line"), LINES.values(), ids=list(LINES))
def test_a_wrong_key_is_one_line_before_anything_runs(tmp_path, overrides, line):
    done = run_cli_warm("train.py", *overrides, run_dir=tmp_path / "run")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [line]
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # train.py in a forked process (the fork server imports torch first)
def test_a_sweep_over_a_misspelled_key_stops_before_its_first_job(tmp_path):
    sweep = tmp_path / "sweep"
    done = run_cli_warm(
        "train.py", "-m", "trainer.max_epoch=1,2", f"hydra.sweep.dir={sweep}",
        run_dir=tmp_path / "run",
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: trainer.max_epoch is not a lightning.Trainer keyword: did you mean "
        "trainer.max_epochs?"
    ]
    assert not sweep.exists()


def test_a_users_own_trainer_class_keeps_its_own_keys():
    custom = {"trainer": {"_target_": "my.Trainer", "anything": 1}}
    check_config(custom)
    with pytest.raises(FtlabError, match=r"did you mean trainer\.max_epochs\?$"):
        check_config({"trainer": {"_target_": "lightning.Trainer", "max_epoch": 1}})


def test_composing_reads_the_keywords_without_importing_torch():
    probe = (
        "import sys, runpy; sys.argv = ['train.py', '--cfg', 'job', "
        "'trainer.val_check_interval=0.5'];\n"
        "try:\n    runpy.run_path('train.py', run_name='__main__')\n"
        "except SystemExit: pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO_TORCH')"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.stdout.strip().endswith("NO_TORCH"), done.stderr[-2000:]
    assert "  val_check_interval: 0.5\n" in done.stdout
    assert "  model_registry: null\n" in done.stdout  # a keyword no ftlab file names
