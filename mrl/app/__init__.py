"""The Hydra-facing application over the library: ``train(cfg)`` behind ``scripts/train.py`` (a config composed from
``configs/train.yaml``), the up-front checks of such a config, and the configs' ``${mrl.*}`` resolvers (registered
on import). The library (``mrl.encoders``, ``mrl.tasks``, ``mrl.lightning``, ...) never imports this package."""

import mrl.app.resolvers  # noqa: F401  (the configs' ${mrl.*} resolvers)
