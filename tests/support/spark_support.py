"""Marks for tests on real Spark in local mode: they need pyspark (recsvc[spark]) and Java, and
each pays a JVM start, so they are slow and skip, saying why, where either is missing."""

from __future__ import annotations

import importlib.util
import shutil
from typing import Any

import pytest

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
