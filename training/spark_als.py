"""Step 2+4 on Spark (``training.engine = "spark"``): confidence values and ALS in Spark MLlib.

Reads: clean events, the reference time for recency decay and :class:`training.fit.AlsParams`.
With a data folder the events are Spark's own (:mod:`training.spark_ingest` read and checked the
events file in Spark and :meth:`SparkAls.attach` passes the result on): a fit on all of them or on a time
prefix of them (the holdout's training split) reads that DataFrame, so the events never travel
from the driver to Spark. Other selections (the validation splits of ``--tune``), and datasets
handed over in memory, are sent from the driver's :class:`training.prepare.EventArrays` through
Arrow.
Writes: a :class:`training.fit.FitResult` whose factors are indexed exactly like implicit's: row i
of the member factors belongs to ``prepared.members`` row i, row i of the item factors to
``prepared.items`` row i. Members and items Spark never saw (no positive confidence) get zero rows,
which :func:`training.factors.train_factors` sets for implicit's fit too. Spark's integer ids are
the member and item *rows* (the IdMap positions), so no translation table: factor ``id`` = row.

The confidence formula is the one in :mod:`training.confidence` (same weight table, same
half-life and reference time), written as a Spark SQL expression;
tests/training/test_training_spark.py checks that both give the same r_ui on the same events.

Spark's ALS scales the regularization of each member by the member's number of ratings, and of
each item by the item's (ALS-WR); implicit adds the same lambda to every solve. ``regParam`` is
therefore ``regularization / (ratings per trained member)``: the average member gets implicit's
lambda (:func:`spark_reg_param`; docs/training.md, "Spark").
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from recsvc.bundle_manifest import FoldInSpec
from recsvc.confidence_scale import IDF_FLOOR
from recsvc.errors import ConfigError, SparkUnavailable
from recsvc.settings import TrainingSettings
from training.confidence import weight_table
from training.fit import AlsParams, FitResult, model_from_factors
from training.prepare import DAY_S, EventArrays

log = logging.getLogger(__name__)

# Local mode on a small box: few shuffle partitions (the default 200 makes hundreds of tiny
# tasks per ALS iteration), no web UI, no console progress bars. Arrow moves the events in and
# the factors out without per-row Python objects.
_CONF = {
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.shuffle.partitions": "4",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.execution.arrow.pyspark.fallback.enabled": "false",
    # errors only on the training console, from the start (setLogLevel comes too late for the
    # start-up warnings)
    "spark.log.level": "ERROR",
}


def spark_reg_param(regularization: float, ratings: int, members_with_ratings: int) -> float:
    """Spark's ``regParam`` that gives the average member implicit's ``regularization``."""
    per_member = ratings / max(members_with_ratings, 1)
    return float(regularization / max(per_member, 1.0))


def scaled_frame(ratings: Any, scale: str) -> Any:
    """(member, item, r) with r on the confidence scale, as ``recsvc.confidence_scale.scaled``
    puts implicit's r_ui (log: log(1 + r), sign kept)."""
    from pyspark.sql import functions as F

    if scale == "linear":
        return ratings
    if scale == "log":
        return ratings.withColumn("r", F.signum("r") * F.log1p(F.abs("r")))
    raise ValueError(f"unknown confidence scale {scale!r}; expected linear or log")


def bm25_frame(ratings: Any, n_members: int, k1: float, b: float) -> Any:
    """(member, item, x) -> (member, item, BM25-weighted x), as
    ``recsvc.confidence_scale.Bm25.weigh_matrix`` weighs the same matrix: an item's
    ``idf = max(log(N) - log(1 + df), IDF_FLOOR)`` over ``n_members`` (every member row, as the numpy
    matrix has), a member's length their summed |x| against the mean over members with any."""
    from pyspark.sql import functions as F

    log_n = float(np.log(max(n_members, 1)))
    idf = ratings.groupBy("item").agg(
        F.greatest(F.lit(log_n) - F.log1p(F.count("*").cast("double")), F.lit(IDF_FLOOR)).alias("idf")
    )
    lengths = ratings.groupBy("member").agg(F.sum(F.abs("r")).alias("length"))
    avg = lengths.agg(F.avg("length")).first()[0] or 1.0
    norm = F.lit(1.0 - b) + F.lit(b) * F.col("length") / F.lit(max(float(avg), 1e-12))
    size = F.abs("r")
    weighted = F.signum("r") * size * F.lit(k1 + 1.0) / (F.lit(k1) * norm + size) * F.col("idf")
    return (
        ratings.join(F.broadcast(idf), "item")
        .join(lengths, "member")
        .select("member", "item", weighted.cast("float").alias("r"))
    )


def confidence_frame(events: Any, event_weights: dict[str, float], half_life_days: float, as_of: int) -> Any:
    """(member, item, r) with r = sum of event_weight[type] * 0.5 ** (age_days / half_life_days)
    over each pair's events (half-life 0: no decay), r > 0 only:
    :func:`training.confidence.confidence_matrix` in Spark.

    ``events`` is a DataFrame with columns member, item, etype (EVENT_TYPES code), ts (epoch s).
    """
    from pyspark.sql import functions as F

    weights = F.array(*[F.lit(float(w)) for w in weight_table(event_weights)])
    value = F.element_at(weights, F.col("etype").cast("int") + 1)
    # half-life 0 is "no decay" (training.confidence.event_confidence), not a divisor: Spark's ANSI
    # mode would stop the fit with DIVIDE_BY_ZERO
    if half_life_days > 0:
        age_half_lives = F.greatest(F.lit(as_of) - F.col("ts"), F.lit(0)) / F.lit(
            DAY_S * float(half_life_days)
        )
        value = value * F.pow(F.lit(2.0), -age_half_lives)
    return (
        events.select("member", "item", value.alias("v"))
        .where(F.col("v") > 0)
        .groupBy("member", "item")
        .agg(F.sum("v").cast("float").alias("r"))
    )


def factors_by_row(frame: Any, rows: int, rank: int) -> np.ndarray:
    """Spark's (id, features) factor DataFrame as a float32 [rows, rank] array: row ``id``;
    ids Spark has no factors for stay zero."""
    with quiet_pandas_check():
        pdf = frame.toPandas()
    out = np.zeros((rows, rank), dtype=np.float32)
    if len(pdf):
        ids = pdf["id"].to_numpy(dtype=np.int64)
        if ids.min() < 0 or ids.max() >= rows:
            raise ValueError(f"factor ids outside 0..{rows - 1}")
        out[ids] = np.stack(pdf["features"].to_numpy()).astype(np.float32)
    return out


class SparkAls:
    """Fits ALS on Spark. The SparkSession starts on the first fit (so choosing the engine costs
    nothing until then) and is stopped by :meth:`stop`; one session serves every fit of a run."""

    def __init__(self, training: TrainingSettings) -> None:
        self.master = training.spark_master
        self.driver_memory = training.spark_driver_memory
        self._spark: Any = None
        self._owned = False
        self._checkpoints: str | None = None
        self._attached: tuple[EventArrays, Any] | None = None

    def __enter__(self) -> SparkAls:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_exc: object) -> None:
        if exc_type is None:
            self.stop()
        else:  # a JVM that failed the run may fail its own stop too: the run's error is the one to see
            _cleanup(self.stop, "spark session stop")

    def session(self) -> Any:
        if self._spark is not None:
            return self._spark
        try:
            from pyspark.sql import SparkSession
        except ImportError as exc:
            raise ConfigError(
                "training.engine = spark needs pyspark: pip install 'recsvc[spark]' (and a Java 17+ runtime)"
            ) from exc
        # Python workers are never needed (ALS and SQL run in the JVM), but if Spark starts one it
        # must be this interpreter, not whatever "python3" is on the PATH.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        builder = SparkSession.builder.master(self.master).appName("recsvc-train")
        for key, value in (_CONF | {"spark.driver.memory": self.driver_memory}).items():
            builder = builder.config(key, value)
        started = time.perf_counter()
        # A session someone else started (a notebook, a spark-submit'ed driver) is used, not stopped.
        self._owned = SparkSession.getActiveSession() is None
        try:
            spark = _get_or_create(builder, self._owned)
            if (
                self._owned
                and self.master.startswith("local")
                and spark.sparkContext.getCheckpointDir() is None
            ):
                # ALS truncates its lineage through checkpoints every 10 iterations; without a
                # checkpoint folder long fits (tuning tries up to 50) can overflow the JVM stack.
                # On a cluster the folder must be on shared storage: spark.checkpoint.dir there.
                self._checkpoints = tempfile.mkdtemp(prefix="recsvc-spark-checkpoints-")
                spark.sparkContext.setCheckpointDir(self._checkpoints)
        except Exception as exc:  # Java missing, master refused: PySparkRuntimeError, Py4JJavaError
            # read before the JVM ends: a Py4JJavaError's text is fetched from the JVM
            message = f"could not start Spark with master {self.master!r}: {first_line(exc)}"
            if self._owned:  # a JVM that started but could not make a context is of no use
                _cleanup(_end_local_jvm, "spark jvm end after a failed start")
            raise SparkUnavailable(message) from exc
        log.info("spark session master=%s seconds=%.1f", self.master, time.perf_counter() - started)
        self._spark = spark
        return spark

    def stop(self) -> None:
        if self._attached is not None and self._spark is not None:
            self._attached[1].unpersist()
        self._attached = None
        if self._spark is not None and self._owned:
            self._spark.stop()
            _end_local_jvm()
        self._spark = None
        if self._checkpoints is not None:
            shutil.rmtree(self._checkpoints, ignore_errors=True)
            self._checkpoints = None

    def attach(self, events: EventArrays, frame: Any) -> None:
        """``frame`` is Spark's copy of ``events`` (member, item, etype, ts; persisted): fits on
        them, or on a time prefix of them, read it instead of receiving the events."""
        self._attached = (events, frame)

    def ratings_source(self, events: EventArrays) -> Any:
        """The Spark DataFrame of ``events``, a selection of the attached events (every caller
        selects from ``Prepared.events``): the attached frame when ``events`` are all of them or
        all before a time, else the driver's arrays sent through Arrow."""
        from pyspark.sql import functions as F

        if self._attached is not None and len(events):
            attached, frame = self._attached
            if events is attached:
                return frame
            cut = int(events.ts.max()) + 1
            # a selection holding as many events as all those before ``cut`` is exactly those
            if len(events) == int(np.count_nonzero(attached.ts < cut)):
                return frame.where(F.col("ts") < cut)
        return self.events_frame(events)

    def events_frame(self, events: EventArrays) -> Any:
        import pandas as pd

        pdf = pd.DataFrame(
            {"member": events.member, "item": events.item, "etype": events.etype, "ts": events.ts}
        )
        with quiet_pandas_check():
            return self.session().createDataFrame(pdf)

    def fit(
        self,
        events: EventArrays,
        as_of: int,
        shape: tuple[int, int],
        params: AlsParams,
        *,
        on_iteration: Callable[[int, float], None] | None = None,
    ) -> FitResult:
        spark = self.session()
        try:
            return self._fit(spark, events, as_of, shape, params, on_iteration)
        except SparkUnavailable:
            raise
        except Exception as exc:
            if not is_spark_error(exc):
                raise
            raise SparkUnavailable(f"Spark ALS failed on {self.master!r}: {first_line(exc)}") from exc

    def _fit(
        self,
        spark: Any,
        events: EventArrays,
        as_of: int,
        shape: tuple[int, int],
        params: AlsParams,
        on_iteration: Callable[[int, float], None] | None,
    ) -> FitResult:
        from pyspark.ml.recommendation import ALS
        from pyspark.storagelevel import StorageLevel

        started = time.perf_counter()
        ratings = scaled_frame(
            confidence_frame(self.ratings_source(events), params.event_weights, params.half_life_days, as_of),
            params.confidence_scale,
        )
        scaled_ratings = None
        if params.confidence_weighting == "bm25":
            # read three times (item counts, member lengths, the join): computed from the events once
            scaled_ratings = ratings.persist(StorageLevel.MEMORY_AND_DISK)
            ratings = bm25_frame(scaled_ratings, shape[0], params.bm25_k1, params.bm25_b)
        ratings = ratings.persist(StorageLevel.MEMORY_AND_DISK)
        counts = ratings.selectExpr("count(*) AS n", "count(DISTINCT member) AS members").first()
        reg = spark_reg_param(params.regularization, int(counts["n"]), int(counts["members"]))
        blocks = max(2, spark.sparkContext.defaultParallelism)
        als = ALS(
            rank=params.factors,
            maxIter=params.iterations,
            regParam=reg,
            alpha=params.alpha,
            implicitPrefs=True,
            userCol="member",
            itemCol="item",
            ratingCol="r",
            seed=params.random_state,
            numUserBlocks=blocks,
            numItemBlocks=blocks,
        )
        model = als.fit(ratings)
        user_factors = factors_by_row(model.userFactors, shape[0], params.factors)
        item_factors = factors_by_row(model.itemFactors, shape[1], params.factors)
        ratings.unpersist()
        if scaled_ratings is not None:
            scaled_ratings.unpersist()
        seconds = time.perf_counter() - started
        log.info(
            "spark als fit factors=%d iterations=%d regParam=%.3g ratings=%d seconds=%.2f",
            params.factors,
            params.iterations,
            reg,
            counts["n"],
            seconds,
        )
        if on_iteration is not None:  # one Spark job: the iterations are only known done at the end
            for i in range(params.iterations):
                on_iteration(i + 1, float("nan"))
        return FitResult(
            model=model_from_factors(user_factors, item_factors),
            seconds=seconds,
            fold_in=FoldInSpec(confidence_offset=1.0, reg_per_item=reg),
        )


@contextmanager
def quiet_pandas_check() -> Iterator[None]:
    """PySpark 4 warns on every pandas conversion that it "does not yet fully support pandas >= 3";
    the columns converted here are plain ints, longs and float arrays (checked by the tests)."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="PySpark does not yet fully support", category=FutureWarning
        )
        yield


def _get_or_create(builder: Any, owned: bool) -> Any:
    """``builder.getOrCreate()``, once more when a local JVM this process launched exited before
    it answered (JAVA_GATEWAY_EXITED): a transient of the machine (memory, a paused VM), which
    a second launch gets past; anything else, or a second failure, is raised."""
    try:
        return builder.getOrCreate()
    except Exception as exc:
        condition = getattr(exc, "getCondition", lambda: None)()
        if not owned or condition != "JAVA_GATEWAY_EXITED":
            raise
        log.warning("event=spark_jvm_exited_at_start retrying once: %s", first_line(exc))
        _cleanup(_end_local_jvm, "spark jvm end before the retry")
        return builder.getOrCreate()


def _cleanup(end: Callable[[], None], what: str) -> None:
    """``end()`` on the way out of a failure: a JVM that failed to start or died mid-run often
    fails its clean-up too (py4j's ConnectionRefusedError when nothing listens any more), and that
    error must not replace the one that says what went wrong (SPARK_UNAVAILABLE); it is logged
    at debug only."""
    try:
        end()
    except Exception as exc:
        log.debug("%s failed: %s: %s", what, type(exc).__name__, exc)


def _end_local_jvm() -> None:
    """End the JVM PySpark started for this process once no SparkContext uses it.

    ``SparkSession.stop`` leaves the driver JVM running (with its heap, up to
    ``spark_driver_memory``) until the Python process exits; training goes on to build indexes
    and member lists, and the test suite goes on to other tests, so it is ended here. PySpark has
    no public call for this; the JVM exits when its stdin closes (pyspark.java_gateway), and the
    next session launches a new one because ``SparkContext._gateway`` is unset.
    """
    import subprocess

    from pyspark import SparkContext

    gateway = SparkContext._gateway
    if gateway is None or SparkContext._active_spark_context is not None:
        return
    proc = getattr(gateway, "proc", None)
    try:
        gateway.shutdown()
    except Exception as exc:  # the JVM may already be gone; nothing to free then
        log.debug("spark gateway shutdown: %s", exc)
    SparkContext._gateway = None
    SparkContext._jvm = None
    if proc is not None:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def is_spark_error(exc: BaseException) -> bool:
    """An error raised by Spark or its Java side (py4j), not by recsvc's own code."""
    return type(exc).__module__.split(".")[0] in ("py4j", "pyspark")


_OUT_OF_HEAP = ("OutOfMemoryError", "Java heap space", "GC overhead limit exceeded")


def first_line(exc: BaseException) -> str:
    """A Java error's message without its stack trace; a heap that ran out says which setting
    gives it more (the driver collects the clean events and the factors, so it grows with the data)."""
    try:
        text = str(getattr(exc, "java_exception", None) or exc).strip()
    except Exception:  # a Java error's text comes from its JVM, which may have ended since
        text = str(getattr(exc, "errmsg", "") or "").strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    if any(marker in text for marker in _OUT_OF_HEAP):
        line += (
            " (Spark ran out of heap: raise training.spark_driver_memory,"
            " RECSVC_TRAINING__SPARK_DRIVER_MEMORY, or the executors' memory on a cluster)"
        )
    return line
