"""Training: purchase and browse history -> evaluated ALS + FAISS bundle registered in MLflow.

One module per step (each docstring says what it reads and writes), chained by
``training.pipeline.run``; ``recsvc train`` is the command (docs/training.md). The bundle format
itself lives in ``recsvc.bundle`` so the service never imports this package.
"""
