"""Where a server process spends its CPU per live catalog change: one in-process server (the real
composition root, a real Redis) answers ``SetStock`` at a fixed rate from the native client
(load/grpcload); the CPU of the server process (every thread: the event loop, the follower,
gRPC's own threads), of Redis and of the client over the measured window, divided by the calls.
``--profile`` adds a cProfile of the event loop's thread.
docs/benchmarks.md, "Live catalog", uses it.

    python -m bench.experiments.catalog_change_cpu BUNDLE [--rate 200] [--duration 20] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import multiprocessing as mp
import os
import pstats
from collections.abc import Callable

from bench.catalog_propagation import _set_stock_loop, _set_stock_maker
from bench.cpu import cpu_seconds
from bench.experiments.inprocess import in_process_server
from bench.native_client import fixed_rate_native
from bench.ratebench import RateRun


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--items", type=int, default=100)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--stream", action="store_true", help="the changes as StreamStock messages")
    args = parser.parse_args()
    from recsvc.bundle import KIND_PRODUCT

    with in_process_server(args.bundle) as (server, deps, redis):
        _, model = deps.models.default()
        kinds = deps.engine.catalog.view(model).item_kind
        items = [model.items.id(int(r)) for r in (kinds == KIND_PRODUCT).nonzero()[0][: args.items]]
        profile = cProfile.Profile()
        loop = server._loop  # the profile must be switched on in the loop's own thread
        target = f"127.0.0.1:{deps.bound_port}"
        before: dict[str, float] = {}

        def sample() -> dict[str, float]:
            assert redis.proc is not None
            return {"process": cpu_seconds(os.getpid()), "redis": cpu_seconds(redis.proc.pid)}

        def probe() -> dict[str, float]:
            # fixed_rate_native calls this at the window's start and end
            now = sample()
            if not before:
                before.update(now)
                if args.profile:
                    loop.call_soon_threadsafe(profile.enable)
            elif args.profile:
                loop.call_soon_threadsafe(profile.disable)
            return now

        if args.stream:
            _stream_run(args, target, items, probe)
        else:
            _native_run(args, target, items, probe)
    if args.profile:
        out = io.StringIO()
        pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(30)
        print(f"event loop thread, {int(args.rate * args.duration)} changes:\n{out.getvalue()}")


def _stream_run(
    args: argparse.Namespace, target: str, items: list[str], probe: Callable[[], dict[str, float]]
) -> None:
    """The changes as messages of one StreamStock stream from a grpc sender process."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    sender = ctx.Process(
        target=_set_stock_loop, args=(target, items, args.rate, args.duration, (), queue, True)
    )
    sender.start()
    assert queue.get(timeout=60) == "ready"
    first = probe()
    summary = queue.get(timeout=args.duration + 120)
    last = probe()
    sender.join(timeout=30)
    n = summary["sent"]
    sender_ms = 1000 * summary["cpu_s"] / n
    print(f"StreamStock {args.rate:.0f} changes/s for {args.duration:.0f} s: {summary['ok']} applied, "
          f"errors {summary['errors'] or '-'}; sender CPU {sender_ms:.3f} ms per change")  # fmt: skip
    print(f"CPU ms per change: server process {1000 * (last['process'] - first['process']) / n:.3f}; "
          f"redis {1000 * (last['redis'] - first['redis']) / n:.3f}")  # fmt: skip
    print(f"load average {os.getloadavg()[0]:.2f}")


def _native_run(
    args: argparse.Namespace, target: str, items: list[str], probe: Callable[[], dict[str, float]]
) -> None:
    """One SetStock call per change from the native client."""
    run = RateRun(
        target, _set_stock_maker(items), args.rate, args.duration, label="SetStock",
        connections=2, warmup_s=2.0, cpu_probe=probe,
    )  # fmt: skip
    result = fixed_rate_native(run)
    print(f"SetStock {args.rate:.0f}/s for {args.duration:.0f} s: {result.completed_ok} answered, "
          f"p50 {result.p50_ms} ms, p99 {result.p99_ms} ms, errors {result.codes or '-'}")  # fmt: skip
    per_call = result.cpu_ms_per_call
    print(f"CPU ms per SetStock: server process {per_call.get('process', 0):.3f}; redis "
          f"{per_call.get('redis', 0):.3f}; native client {per_call.get('client', 0):.3f}")  # fmt: skip
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
