"""Marks for tests on real Spark in local mode: they need pyspark (recsvc[spark]) and Java, and
each pays a JVM start, so they are slow and skip, saying why, where either is missing."""

from __future__ import annotations

import importlib.util
import shutil
from typing import Any

import numpy as np
import pytest

from training.prepare import DAY_S, EventArrays

HAVE_SPARK = importlib.util.find_spec("pyspark") is not None and shutil.which("java") is not None
NO_SPARK = "Spark needs pyspark (recsvc[spark]) and java on the PATH"


def with_spark(test: Any) -> Any:
    """Real Spark in local mode: slow (a JVM start), skipped without Java or pyspark."""
    for mark in (
        pytest.mark.skipif(not HAVE_SPARK, reason=NO_SPARK),
        pytest.mark.slow,
        pytest.mark.integration,
    ):
        test = mark(test)
    return test


def random_events(n: int, shape: tuple[int, int], as_of: int, seed: int) -> EventArrays:
    """``n`` events over ``shape`` (members, items) of every event type, aged from 3 days after
    ``as_of`` to 400 days before it, repeated pairs included: what the confidence formulas of
    both engines must agree on."""
    rng = np.random.default_rng(seed)
    return EventArrays(
        member=rng.integers(0, shape[0], n).astype(np.int32),
        item=rng.integers(0, shape[1], n).astype(np.int32),
        etype=rng.integers(0, 8, n).astype(np.int8),
        ts=(as_of - rng.integers(-3 * DAY_S, 400 * DAY_S, n)).astype(np.int64),
        channel=np.zeros(n, dtype=np.int8),
        amount=np.zeros(n, dtype=np.float32),
    )
