"""Knowledge distillation (Hinton et al. 2015): a student classifier trained on the labels and
on a frozen teacher's softened predictions.

The loss of a training step is ``(1-α)·CE(s, y) + α·T²·KL(softmax(t/T) ‖ softmax(s/T))``
(``module.alpha``, ``module.temperature``); validation and test log the student's plain
cross-entropy, so ``val/loss`` compares with a classifier's. The student is any backbone under
any freezing schedule: :class:`Distiller` is a :class:`~ftlab.module.Classifier` and its
checkpoints are a classifier's (``eval.py`` restores the student alone).

**The teacher** is a trained ftlab classifier over the data's classes, in the same order:

- ``module.teacher.ckpt_path``: another run's checkpoint, rebuilt by ftlab's own builders
  (``ftlab.checkpoints``, never a name in the file);
- ``module.teacher.model``: a model config (``name``, ``weights``) whose weights are an
  ``export=merged`` directory (``ftlab.json``, ``model.safetensors``, ``head.safetensors``).
  A backbone's weights alone (ImageNet, a hub id) are refused: without a head trained on the
  data's classes there are no logits to distil.

It is frozen, in eval mode whatever calls ``train()``, and not a submodule of the student: it
has no optimizer state, Lightning's summary and the checkpoints do not see it, and the
student's ``_apply`` moves it along (``.to(device)``, ``.half()``). It gets the student's
batches, converted on the device: images un-normalized with the student's mean and std,
resized to the teacher's side (``module.teacher.image_size``; null: the teacher run's
``data.image_size``, read from the ``.hydra/config.yaml`` beside its checkpoint, else the
student's size) and normalized with the teacher's; texts truncated to the teacher's length.
Text teachers and students must share a tokenizer: token ids index a vocabulary.

**Cached logits.** With deterministic data (no ``data.augment``, no mixup), whole epochs and
``module.cache_logits=true``, the teacher's logits for the train split are computed once, in
index order, and stored like the feature cache's files (``ftlab.finetuning.features``: the
same checks, atomic writes and lock) under ``<cache_dir>/teacher_logits/``, keyed by the
teacher's state (weights and input conversion), its weights_id, the data's fingerprint, the
split and the precision. :class:`TeacherLogits` then stands in for the data during fit: its
train loader is the one it wraps (the data's, or the feature cache's) over the same sampler
with each sample's logits added, so the batches are ``(inputs, labels, teacher_logits)``. The
two caches combine: in head-only epochs the student reads cached features and the teacher is
not run at all. When the logits are not cached the teacher reads the images in every step, so
the feature cache is off (:meth:`Distiller.cache_blocker`).

The package's modules: the teacher (:mod:`~ftlab.distillation.teacher`), the module and its
loss (:mod:`~.module`) and the teacher-logit cache (:mod:`~.logits`).
"""

from ftlab.distillation.logits import TeacherLogits, logit_cache_blocker
from ftlab.distillation.module import Distiller, DistillTargets, distillation_loss
from ftlab.distillation.teacher import Teacher, load_teacher

__all__ = [
    "DistillTargets",
    "Distiller",
    "Teacher",
    "TeacherLogits",
    "distillation_loss",
    "load_teacher",
    "logit_cache_blocker",
]
