"""ftlab's Hydra configs, as a package: ``pkg://ftlab.conf`` in a ``hydra.searchpath`` composes
them from any Hydra app (Hydra's package source needs this ``__init__.py`` to find them).

Importing it stores ``trainer/lightning`` (``conf/trainer/default.yaml``'s base: every
``lightning.Trainer`` keyword, read without importing Lightning) in Hydra's ConfigStore, which
``ftlab-train`` does in ``ftlab.cli``; Hydra imports this package before it reads a config from
it, so an app of one's own composes ftlab's ``trainer`` group too.
"""

from ftlab import trainer_keys

trainer_keys.register()
