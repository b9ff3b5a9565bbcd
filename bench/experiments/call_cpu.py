"""Per-call thread CPU of in-process ``RecommendProducts`` (the real servicer and engine on a real
Redis, as ``bench inproc`` sets it up): every request is timed ``--passes`` times and its best
kept, so a busy machine's waits for a core drop out; prints the median and mean of those bests.
docs/benchmarks.md, "Serving CPU per call", runs it against a checkout of the round's start, whose
harness lived in ``recsvc.bench`` (imported from there when ``bench`` is absent).

    python -m bench.experiments.call_cpu BUNDLE [--calls 1000] [--passes 10] [--label now]

On a busy machine thread CPU moves with the neighbours; instructions do not. Under valgrind,
``--callgrind`` switches instrumentation on after the set-up and brackets one pass with
``os.getppid()`` / ``os.getpgrp()``, so callgrind counts exactly the calls:

    valgrind --tool=callgrind --instr-atstart=no --zero-before=getppid --dump-before=getpgrp \
      --callgrind-out-file=/tmp/cg.%p python -m bench.experiments.call_cpu BUNDLE --calls 500 --callgrind
    callgrind_annotate --inclusive=yes /tmp/cg.<pid>.1 | grep -m1 genobject.c:gen_send  # / calls

(``gen_send``: the servicer's coroutine, every instruction of the calls themselves; the dump's
total adds what the calls left to background threads, the event log's writes. A feature's cost
is the difference with it switched off, e.g. ``RECSVC_EVENTS__ENABLED=false``.)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def _harness() -> Any:
    try:
        from bench import inproc, loadconfig, traffic
    except ImportError:  # the round's start: the harness was inside the package
        from recsvc.bench import inproc, loadconfig, traffic  # type: ignore[import-not-found,no-redef]
    return inproc, loadconfig, traffic


def _count_one_pass(one_pass: Callable[[], object], settle: Callable[[], object]) -> None:
    """Instrumentation on (callgrind_control, polled: the command is served while this process
    runs), a pass to warm the instrumented code, then the counted pass between the markers.
    ``settle`` finishes the work a pass left to background threads (the event log's writes), so
    the count holds every instruction the calls caused, in any thread."""
    control = subprocess.Popen(["callgrind_control", "-i", "on", str(os.getpid())], stdout=subprocess.DEVNULL)
    while control.poll() is None:
        time.sleep(0.2)
    one_pass()
    settle()
    os.getppid()  # --zero-before=getppid
    one_pass()
    settle()
    os.getpgrp()  # --dump-before=getpgrp


def _settle(deps: Any) -> None:
    log = getattr(deps, "event_log", None)
    while log is not None and log.flush():
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--passes", type=int, default=10)
    parser.add_argument("--label", default="now")
    parser.add_argument("--callgrind", action="store_true", help="Under valgrind: count one pass (above).")
    args = parser.parse_args()
    inproc, loadconfig, traffic = _harness()
    from recsvc.localstack import LocalRedis
    from recsvc.server.app import build_deps, settle_heap
    from recsvc.server.recommender_servicer import RecommenderServicer
    from recsvc.settings import load_settings

    with tempfile.TemporaryDirectory() as tmp_name, LocalRedis(Path(tmp_name) / "redis") as redis:
        tmp = Path(tmp_name)
        settings = load_settings(
            overrides={
                "serving": {"model_uri": args.bundle, "bundle_cache_dir": str(tmp / "bundles")},
                "redis": {"url": redis.url},
                "security": {"audit_log": str(tmp / "audit.log"), "allow_insecure_dev": True},
            }
        )
        deps = build_deps(settings, with_outreach=True)
        deps.models.reload()
        settle_heap()
        # As the server builds it (recsvc.server.app): with the event log when it is on (the
        # round's start had none, nor the last two parameters).
        logged = (deps.reload_broadcast, deps.event_log) if getattr(deps, "event_log", None) else ()
        servicer = RecommenderServicer(
            settings, deps.engine, deps.models, deps.realtime, deps.metrics, *logged
        )
        _, model = deps.models.default()
        config = loadconfig.load_config(None, {"members": {"unknown_share": 0.0}})
        source = traffic.Traffic(inproc.served_ids(model), config)
        requests = [source.recommend_products() for _ in range(args.calls)]
        call, context, run_inline = servicer.RecommendProducts, inproc.BenchContext(), inproc.run_inline
        for _ in range(2):  # warm every code path and page before timing
            for request in requests:
                run_inline(call(request, context))
        if args.callgrind:
            _count_one_pass(
                lambda: [run_inline(call(request, context)) for request in requests], lambda: _settle(deps)
            )
        cpu = np.full((args.passes, args.calls), np.inf)
        for p in range(args.passes):
            for i, request in enumerate(requests):
                started = time.thread_time_ns()
                run_inline(call(request, context))
                cpu[p, i] = time.thread_time_ns() - started
        for close in deps.on_close:
            close()
    best = cpu.min(axis=0) / 1e3
    print(
        f"{args.label}: per-request best of {args.passes}: cpu median {np.median(best):.1f} "
        f"mean {best.mean():.1f} us | load {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
