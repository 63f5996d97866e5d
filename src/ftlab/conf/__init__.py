"""ftlab's Hydra configs, as a package: ``pkg://ftlab.conf`` in a ``hydra.searchpath`` (or
``initialize_config_module("ftlab.conf")``) composes them from any Hydra app; Hydra's package
source needs this ``__init__.py`` to find them.

``conf/trainer/default.yaml`` starts from ``trainer/lightning``, which ``ftlab.trainer_keys``
stores in Hydra's ConfigStore (``ftlab-train`` does it in ``ftlab.cli``). Hydra imports this
package before it reads a config from it, so storing it here lets an app of one's own compose
ftlab's ``trainer`` group too. Only then: a plain import (a walk over ftlab's modules) stays
free of Hydra, like the rest of the library below the edge.
"""

import sys

if "hydra" in sys.modules:
    from ftlab import trainer_keys

    trainer_keys.register()
