"""The ``icm`` command: ``main`` (argument parsing, one library call a command) and
``hydra_app`` (the Hydra apps of ``icm train`` and ``icm pretrain``)."""
