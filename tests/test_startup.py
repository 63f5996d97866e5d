"""Start-up: a timm run imports none of ftlab's optional heavy dependencies.

``import lightning`` alone takes seconds (torchmetrics pulls in transformers' top level, scipy
and torchvision): ftlab cannot avoid that part, only add nothing to it. What it can avoid is
what only some runs need: peft (``freeze=lora``), optuna (``hparams_search=optuna``),
transformers' model code (Hugging Face backbones), pandas (``data=text_csv``, ``ftlab-report``).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ROOT

# module -> the runs that need it; a module counts with its submodules.
DEFERRED = {
    "peft": "freeze=lora",
    "optuna": "hparams_search=optuna",
    # transformers' model code (PreTrainedModel, AutoModel's targets); Lightning imports only
    # the package's lazy top level and its auto-class registries.
    "transformers.modeling_utils": "a Hugging Face backbone",
    "ftlab.backbones.hf_backbone": "a Hugging Face backbone",
    "ftlab.sweeps.optuna_search": "hparams_search=optuna",
    "ftlab.sweeps.report": "ftlab-report",
    "pandas": "data=text_csv, ftlab-report",  # (sklearn's digits import it: hence data=mnist)
}
# train.py, then the names of every module the process holds at its exit, on stderr.
TRAIN_LISTING_MODULES = (
    "import atexit, sys; "
    "atexit.register(lambda: print('modules:', *sorted(sys.modules), file=sys.stderr)); "
    "from ftlab.cli import train_main; train_main()"
)


@pytest.mark.slow  # a fresh interpreter that imports torch, lightning and timm
def test_a_timm_plan_imports_no_peft_optuna_pandas_or_hf_model_code(tmp_path):
    overrides = ["model=test_cnn", "data=mnist", "plan=true", f"hydra.run.dir={tmp_path}/run"]
    done = subprocess.run(
        [sys.executable, "-c", TRAIN_LISTING_MODULES, *overrides],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    listing = [line for line in done.stderr.splitlines() if line.startswith("modules: ")]
    imported = set(listing[-1].split()[1:])
    # The run got as far as building the model and its plan.
    assert {"ftlab.train", "ftlab.backbones.timm_backbone", "lightning", "timm"} <= imported
    loaded = {
        name: needed_by
        for name, needed_by in DEFERRED.items()
        if any(m == name or m.startswith(name + ".") for m in imported)
    }
    assert not loaded, f"a timm plan imported modules only these runs need: {loaded}"
