"""Evaluation beyond val/test, run by ``train`` after fitting (see :class:`RunEvaluation`).

- ``data.ood``: out-of-distribution test sets, other data options or named shifts of the test
  split (:mod:`~ftlab.evaluation.ood`, :mod:`~ftlab.evaluation.shifts`);
- ``wise_ft.alphas``: WiSE-FT weight-space ensembles (:mod:`~ftlab.evaluation.wise_ft`);
- drift: relative weight change per layer group and feature CKA (:mod:`~ftlab.evaluation.drift`).
"""

from ftlab.evaluation.runner import RunEvaluation

__all__ = ["RunEvaluation"]
