"""A search worker killed inside ``study.ask``, right after Optuna's creating write: the trial
already names its worker, so the next worker reruns it at once, not after the grace period."""

from __future__ import annotations

import subprocess
import sys

import optuna
from optuna.trial import TrialState

from ftlab.sweeps.optuna_search import recover

KILLED_IN_ASK = """
import os, sys
import optuna
from ftlab.sweeps.named_ask import ask_named
from ftlab.sweeps.optuna_search import worker_id
study = optuna.load_study(study_name="s", storage=sys.argv[1])
backend = study._storage._backend  # RDBStorage, under Optuna's cache
create = backend._create_new_trial  # the creating write (one transaction)
def create_then_die(*args, **kwargs):
    create(*args, **kwargs)
    os._exit(9)  # SIGKILL's effect: the write happened, nothing after it
backend._create_new_trial = create_then_die
ask_named(study, {"x": optuna.distributions.FloatDistribution(0, 1)}, worker_id())
"""


def test_a_worker_killed_inside_ask_leaves_a_named_trial_rerun_at_once(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.create_study(study_name="s", storage=url)
    done = subprocess.run([sys.executable, "-c", KILLED_IN_ASK, url], capture_output=True)
    assert done.returncode == 9, done.stderr.decode()[-2000:]
    study = optuna.load_study(study_name="s", storage=url)
    (trial,) = study.get_trials()
    assert trial.state == TrialState.RUNNING
    assert "worker" in trial.user_attrs  # named in the creating write
    # The grace period for unnamed trials is an hour here: a named dead worker's goes at once.
    assert recover(study, tmp_path, ["val/acc"], grace_s=3600) == 1
    assert study.get_trials()[0].state == TrialState.FAIL
