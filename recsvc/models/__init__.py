"""Where served models come from and how they change: ``resolve`` (an MLflow alias or a bundle
folder -> a local bundle), ``variants`` (A/B shares and each member's stable bucket), ``served``
(``ServedModels``: the served model of every variant, the atomic swap and the poller) and
``broadcast`` (a reload fanned out to every process and replica through Redis)."""
