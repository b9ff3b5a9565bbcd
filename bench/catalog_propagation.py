"""Live catalog propagation: how long after ``SetStock`` answered every server process stops
recommending the item, and what 200 ``SetStock``/s beside the recommendations cost their p99.

Long on purpose: the propagation probe and the paired SetStock runs share the same server, traffic
and probes; apart, each would repeat the set-up.

**Which process answers.** The server's processes share one port (SO_REUSEPORT) and the kernel
hands each *connection* to one of them, so a probe must know which process holds its connection.
``probe_channels`` opens one gRPC connection at a time and asks the kernel: the established
server-side socket that appeared in ``/proc/net/tcp{,6}`` (local port = the server's) is in
exactly one worker's file descriptor table (``/proc/<pid>/fd``). That process answers every call
on that connection for as long as the connection lives; the run checks at the end that every
probe's socket is still held by the same process (a reconnection would show). Linux only, and
the server must run on this machine (``recsvc load bench catalog-propagation`` starts it).

**One change.** A member's in_stock_only list is asked of every process; an item present in all
of them is sold out with SetStock; then each process is polled (back-to-back calls on its probe
connection) until an answer without the item arrives. The propagation of the change is the
latest of those arrivals minus the moment SetStock answered: an upper bound, by at most one call
(the poll resolution is reported). The item is restocked before the next change. All of it runs
while a fixed-rate ``RecommendProducts`` load (``bench.ratebench.fixed_rate``) is offered in a
thread of this process.

**Paired runs.** ``RecommendProducts`` at a fixed rate alone, then with ``SetStock`` at a fixed
rate from a separate process (so its client does not share this process's event loop), and the
other way round in the next pair: the same minutes, the same machine load. The figure is the
ratio of the p99s per pair. ``client="native"`` sends both loads with the compiled client
(load/grpcload, one process each; ``bench.native_client``): on a 2-core machine the Python
clients' own CPU (~0.6 ms per SetStock, more per RecommendProducts) would be part of what is
measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from bench.native_client import find_native_client, fixed_rate_native
from bench.ratebench import RateResult, RateRun, check_client, cpu_cell, fixed_rate, request_maker
from bench.traffic import Traffic
from recsvc.errors import RecsvcError
from recsvc.v1 import catalog_pb2, catalog_pb2_grpc, common_pb2, recommender_pb2, recommender_pb2_grpc


class PropagationBenchError(RecsvcError):
    reason = "PROPAGATION_BENCH_FAILED"


# -- which process holds a connection ----------------------------------------------------------


def worker_pids(server_pid: int, port: int) -> list[int]:
    """The processes listening on ``port``: the direct children of ``server_pid`` (the
    supervisor's workers, one SO_REUSEPORT listening socket each), or ``server_pid`` itself
    (``--workers 1``)."""
    listening = tcp_sockets(port, "0A")
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == server_pid:
            children.append(int(stat.parent.name))
    return sorted(pid for pid in [*children, server_pid] if socket_inodes(pid) & listening)


def socket_inodes(pid: int) -> set[int]:
    found: set[int] = set()
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return found
    for fd in fds:
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        if link.startswith("socket:["):
            found.add(int(link[8:-1]))
    return found


def established_server_sockets(port: int) -> set[int]:
    """Inodes of established TCP sockets whose local port is ``port`` (the server's side)."""
    return tcp_sockets(port, "01")


def tcp_sockets(port: int, state: str) -> set[int]:
    """Inodes of TCP sockets with local port ``port`` in ``state`` (01 established, 0A listen)."""
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if int(cols[1].rsplit(":", 1)[1], 16) == port and cols[3] == state:
                out.add(int(cols[9]))
    return out


@dataclass
class Probe:
    pid: int  # the server process that holds this connection
    inode: int  # its server-side socket
    channel: grpc.Channel
    stub: recommender_pb2_grpc.RecommenderStub


def probe_channels(
    target: str, server_pid: int, processes: int, *, tries: int = 64, settle_s: float = 1.0
) -> list[Probe]:
    """One connection per server process, each known to be held by that process. Call before
    any other connection to the server opens (the new server-side socket identifies the probe's).
    Waits (30 s at most) until ``processes`` processes listen: one may still be loading its model
    when the first already answers health checks."""
    port = int(target.rsplit(":", 1)[1])
    deadline = time.monotonic() + 30
    pids = worker_pids(server_pid, port)
    while len(pids) < processes and time.monotonic() < deadline:
        time.sleep(0.2)
        pids = worker_pids(server_pid, port)
    if len(pids) != processes:
        raise PropagationBenchError(f"{processes} server processes expected on port {port}, found {pids}")
    probes: dict[int, Probe] = {}
    for _ in range(tries):
        before = established_server_sockets(port)
        channel = grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        grpc.channel_ready_future(channel).result(timeout=10)
        holder = None
        deadline = time.monotonic() + settle_s
        while holder is None and time.monotonic() < deadline:
            new = established_server_sockets(port) - before
            for pid in pids:
                held = new & socket_inodes(pid)
                if len(new) == 1 and held:
                    holder = (pid, held.pop())
            if holder is None:
                time.sleep(0.01)  # accepted by the kernel, not yet by the process
        if holder is None or holder[0] in probes:
            channel.close()
            continue
        pid, inode = holder
        probes[pid] = Probe(pid, inode, channel, recommender_pb2_grpc.RecommenderStub(channel))
        if len(probes) == len(pids):
            return [probes[p] for p in pids]
    for p in probes.values():
        p.channel.close()
    raise PropagationBenchError(
        f"could not open a connection held by each of the server processes {pids} in {tries} tries"
    )


def probes_still_held(probes: list[Probe]) -> bool:
    return all(p.inode in socket_inodes(p.pid) for p in probes)


# -- propagation ---------------------------------------------------------------------------------


@dataclass
class Change:
    item_id: str
    member_id: str
    set_stock_ms: float  # the SetStock call itself
    propagation_ms: float | None  # SetStock answered -> the last process answered without it
    per_process_ms: dict[int, float | None]
    polls: int


@dataclass
class PropagationReport:
    processes: list[int]
    changes: list[Change]
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    misses: int  # changes not honoured by every process within the timeout
    over_bound: int  # changes that took longer than bound_ms
    bound_ms: float
    poll_ms_median: float | None  # one poll call: the resolution of the figures
    probes_stayed: bool
    background_covered: bool  # the background load still ran when the last change was measured
    background: dict[str, Any] = field(default_factory=dict)  # the RecommendProducts load

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _in_stock_list(
    stub: recommender_pb2_grpc.RecommenderStub, member: str, k: int, metadata: Any
) -> list[str]:
    request = recommender_pb2.RecommendProductsRequest(
        member_id=member, k=k, filters=common_pb2.RecommendationFilters(in_stock_only=True)
    )
    return [it.item_id for it in stub.RecommendProducts(request, timeout=2.0, metadata=metadata).items]


def measure_change(
    probes: list[Probe],
    catalog: catalog_pb2_grpc.CatalogStub,
    member: str,
    item: str,
    *,
    k: int,
    timeout_s: float,
    metadata: tuple[tuple[str, str], ...] = (),
    poll_ms: list[float] | None = None,
) -> Change:
    t_send = time.perf_counter()
    catalog.SetStock(
        catalog_pb2.SetStockRequest(item_id=item, in_stock=False), timeout=5.0, metadata=metadata
    )
    answered = time.perf_counter()
    seen: dict[int, float | None] = {p.pid: None for p in probes}
    polls = 0
    while any(v is None for v in seen.values()) and time.perf_counter() - answered < timeout_s:
        for p in probes:
            if seen[p.pid] is not None:
                continue
            start = time.perf_counter()
            items = _in_stock_list(p.stub, member, k, metadata)
            end = time.perf_counter()
            polls += 1
            if poll_ms is not None:
                poll_ms.append((end - start) * 1000)
            if item not in items:
                seen[p.pid] = (end - answered) * 1000
    done = [v for v in seen.values() if v is not None]
    return Change(
        item_id=item,
        member_id=member,
        set_stock_ms=(answered - t_send) * 1000,
        propagation_ms=max(done) if len(done) == len(seen) else None,
        per_process_ms=seen,
        polls=polls,
    )


def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q, method="inverted_cdf")) if values else None


def run_propagation(
    target: str,
    server_pid: int,
    traffic: Traffic,
    *,
    processes: int = 2,
    changes: int = 40,
    background_rps: float = 400.0,
    pause_s: float = 0.25,
    k: int = 20,
    timeout_s: float = 5.0,
    bound_ms: float = 1000.0,
    connections: int = 16,
    warmup_s: float = 3.0,
    metadata: tuple[tuple[str, str], ...] = (),
    changes_to: str | None = None,
    say: Any = print,
) -> PropagationReport:
    """``changes`` sell-outs, one at a time, under ``background_rps`` RecommendProducts/s.
    ``changes_to``: where the SetStock calls go (default ``target``; the catalog writer's port)."""
    probes = probe_channels(target, server_pid, processes)
    say(f"probe connections held by server processes {[p.pid for p in probes]}")
    catalog_channel = grpc.insecure_channel(changes_to or target)
    catalog = catalog_pb2_grpc.CatalogStub(catalog_channel)
    # The background load has a fixed schedule: long enough for the changes with some margin;
    # whether it still ran when the last change was measured is reported (background_covered).
    duration = warmup_s + changes * (pause_s + 0.3) + 2
    background: dict[str, RateResult] = {}

    def load() -> None:
        make = request_maker(traffic, "RecommendProducts")
        background["result"] = asyncio.run(
            fixed_rate(RateRun(target, make, background_rps, duration, label="RecommendProducts (background)",
                               connections=connections, warmup_s=0.0, metadata=metadata))
        )  # fmt: skip

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    time.sleep(warmup_s)
    done: list[Change] = []
    poll_ms: list[float] = []
    members = traffic.ids.members
    sold: set[str] = set()
    try:
        i = 0
        while len(done) < changes and i < members.shape[0]:
            member = bytes(members[i]).decode()
            i += 1
            lists = [_in_stock_list(p.stub, member, k, metadata) for p in probes]
            common = [it for it in lists[0] if all(it in other for other in lists[1:]) and it not in sold]
            if not common:
                continue
            item = common[0]
            change = measure_change(
                probes, catalog, member, item, k=k, timeout_s=timeout_s, metadata=metadata, poll_ms=poll_ms
            )
            done.append(change)
            catalog.SetStock(catalog_pb2.SetStockRequest(item_id=item, in_stock=True), timeout=5.0,
                             metadata=metadata)  # fmt: skip
            sold.add(item)  # not chosen again: its restock is a change of its own
            time.sleep(pause_s)
        stayed = probes_still_held(probes)
        covered = thread.is_alive()
    finally:
        for p in probes:
            p.channel.close()
        catalog_channel.close()
    thread.join(timeout=duration + 30)
    values = [c.propagation_ms for c in done if c.propagation_ms is not None]
    bg = background.get("result")
    return PropagationReport(
        processes=[p.pid for p in probes],
        changes=done,
        p50_ms=_pct(values, 50),
        p99_ms=_pct(values, 99),
        max_ms=max(values) if values else None,
        misses=sum(1 for c in done if c.propagation_ms is None),
        over_bound=sum(1 for c in done if c.propagation_ms is None or c.propagation_ms > bound_ms),
        bound_ms=bound_ms,
        poll_ms_median=statistics.median(poll_ms) if poll_ms else None,
        probes_stayed=stayed,
        background_covered=covered,
        background=bg.as_dict() if bg is not None else {},
    )


# -- paired runs: RecommendProducts p99 with and without SetStock beside it ----------------------


def _set_stock_loop(
    target: str, items: list[str], rate: float, duration_s: float, metadata: tuple[tuple[str, str], ...],
    out: Any, stream: bool = False,
) -> None:  # fmt: skip
    """In its own process: SetStock at ``rate``/s for ``duration_s``, toggling ``items`` (each goes
    out of stock, then back in on its next turn); every item is left in stock at the end.
    ``stream``: the same changes as messages of one StreamStock stream."""
    channel = grpc.insecure_channel(target)
    grpc.channel_ready_future(channel).result(timeout=10)
    stub = catalog_pb2_grpc.CatalogStub(channel)
    out.put("ready")  # the measured run starts now, not while this process was still importing
    sent = ok = 0
    errors: dict[str, int] = {}
    t0 = time.perf_counter()
    total = int(rate * duration_s)
    if stream:
        sent, ok, errors = _stream_stock(stub, items, rate, total, metadata, t0)
    else:
        for i in range(total):
            due = t0 + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            item, in_stock = _stock_change(items, i)
            try:
                stub.SetStock(catalog_pb2.SetStockRequest(item_id=item, in_stock=in_stock), timeout=2.0,
                              metadata=metadata)  # fmt: skip
                ok += 1
            except grpc.RpcError as exc:
                name = exc.code().name  # type: ignore[attr-defined]
                errors[name] = errors.get(name, 0) + 1
            sent += 1
    achieved = ok / (time.perf_counter() - t0)
    cpu_s = time.process_time()  # this sender's own CPU: it shares the cores with the server
    for item in items:
        with contextlib.suppress(grpc.RpcError):
            stub.SetStock(
                catalog_pb2.SetStockRequest(item_id=item, in_stock=True), timeout=2.0, metadata=metadata
            )
    channel.close()
    out.put({"sent": sent, "ok": ok, "errors": errors, "achieved_rps": achieved, "cpu_s": cpu_s})


def _stock_change(items: list[str], i: int) -> tuple[str, bool]:
    """The ``i``-th change of the paired runs: each item out of stock, then back in on its next turn."""
    return items[i % len(items)], (i // len(items)) % 2 == 1


def _stream_stock(
    stub: catalog_pb2_grpc.CatalogStub, items: list[str], rate: float, total: int,
    metadata: tuple[tuple[str, str], ...], t0: float,
) -> tuple[int, int, dict[str, int]]:  # fmt: skip
    """``total`` stock changes at ``rate``/s as messages of one StreamStock stream: (sent, applied,
    failed results and stream errors by code)."""

    def changes() -> Iterator[catalog_pb2.StockChange]:
        for i in range(total):
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            item, in_stock = _stock_change(items, i)
            yield catalog_pb2.StockChange(item_id=item, in_stock=in_stock)

    ok = answered = 0
    errors: dict[str, int] = {}
    try:
        for answer in stub.StreamStock(changes(), timeout=total / rate + 60, metadata=metadata):
            for result in answer.results:
                answered += 1
                if result.applied:
                    ok += 1
                else:
                    errors[result.code] = errors.get(result.code, 0) + 1
    except grpc.RpcError as exc:
        name = exc.code().name  # type: ignore[attr-defined]
        errors[name] = errors.get(name, 0) + total - answered
    return total, ok, errors


def _set_stock_maker(items: list[str], batch: int = 1) -> Any:
    """SetStock requests in call order, toggling ``items`` as ``_set_stock_loop`` does; with
    ``batch`` > 1, SetStockMany requests of that many consecutive changes each."""
    changes = iter(range(1 << 62))

    def change() -> tuple[str, bool]:
        return _stock_change(items, next(changes))

    def make() -> tuple[str, Any]:
        if batch == 1:
            item, in_stock = change()
            return "SetStock", catalog_pb2.SetStockRequest(item_id=item, in_stock=in_stock)
        many = [
            catalog_pb2.StockChange(item_id=item, in_stock=ok)
            for item, ok in (change() for _ in range(batch))
        ]
        return "SetStockMany", catalog_pb2.SetStockManyRequest(changes=many)

    return make


def _restock(target: str, items: list[str], metadata: tuple[tuple[str, str], ...]) -> None:
    with grpc.insecure_channel(target) as channel:
        changes = [catalog_pb2.StockChange(item_id=i, in_stock=True) for i in items]
        catalog_pb2_grpc.CatalogStub(channel).SetStockMany(
            catalog_pb2.SetStockManyRequest(changes=changes), timeout=10.0, metadata=metadata
        )


class _NativeSetStock:
    """SetStock at a fixed rate from the compiled client, in a thread of this process (which only
    waits): starts with ``start``, its summary (answered/s, errors, the client's CPU per call) from
    ``result``; every item is left in stock."""

    def __init__(self, target: str, items: list[str], rate: float, duration_s: float, warmup_s: float,
                 metadata: tuple[tuple[str, str], ...], batch: int = 1) -> None:  # fmt: skip
        self._args = (target, items, rate, duration_s, warmup_s, metadata)
        self._batch = batch
        self._out: dict[str, Any] = {}
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        target, items, rate, duration_s, warmup_s, metadata = self._args
        try:
            r = fixed_rate_native(
                RateRun(
                    target, _set_stock_maker(items, self._batch), rate / self._batch, duration_s,
                    label="SetStock", connections=2, deadline_s=2.0, warmup_s=warmup_s, metadata=metadata,
                )
            )  # fmt: skip
            self._out.update(
                sent=r.sent, ok=r.completed_ok, errors=r.codes, achieved_rps=r.achieved_rps,
                p50_ms=r.p50_ms, p99_ms=r.p99_ms, client_cpu_ms_per_call=r.cpu_ms_per_call.get("client"),
            )  # fmt: skip
        except Exception as exc:  # reported with the run, not lost in the thread
            self._out["failure"] = f"{type(exc).__name__}: {exc}"
        finally:
            with contextlib.suppress(grpc.RpcError):
                _restock(target, items, metadata)

    def start(self) -> None:
        self._thread.start()

    def result(self) -> dict[str, Any]:
        self._thread.join()
        return self._out


@dataclass
class PairedRun:
    pair: int
    with_changes: bool
    result: dict[str, Any]
    set_stock: dict[str, Any] = field(default_factory=dict)


@dataclass
class PairedReport:
    rate: float
    set_stock_rate: float
    duration_s: float
    runs: list[PairedRun]
    ratios: list[float | None]  # p99 with / without, per pair
    median_ratio: float | None
    set_stock_batch: int = 1  # stock changes per call (more than 1: SetStockMany)
    set_stock_stream: bool = False  # the changes as messages of one StreamStock stream

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_paired(
    target: str,
    traffic: Traffic,
    items: list[str],
    *,
    pairs: int = 3,
    rate: float = 400.0,
    set_stock_rate: float = 200.0,
    duration_s: float = 25.0,
    warmup_s: float = 3.0,
    connections: int = 16,
    metadata: tuple[tuple[str, str], ...] = (),
    cpu_probe: Any = None,
    client: str = "python",
    changes_to: str | None = None,
    set_stock_batch: int = 1,
    set_stock_stream: bool = False,
    say: Any = print,
) -> PairedReport:
    """``pairs`` x (RecommendProducts at ``rate`` alone, and with ``set_stock_rate`` SetStock/s
    toggling ``items`` from another process), the order alternating per pair. ``cpu_probe``
    (bench.cpu.cpu_probe): CPU ms per call of the workers and Redis in each run. ``client``:
    ``python`` (grpc.aio and a grpc sender process) or ``native`` (load/grpcload for both).
    ``changes_to``: where the SetStock calls go (default ``target``; the catalog writer's port).
    ``set_stock_batch`` > 1: the same changes per second as SetStockMany calls of that many
    (native client only), as an inventory system that batches would send them.
    ``set_stock_stream``: the same changes as messages of one StreamStock stream, from a grpc sender
    process whichever ``client`` sends the recommendations."""
    writes = changes_to or target
    check_client(client)
    if set_stock_batch > 1 and client != "native":
        raise PropagationBenchError("--set-stock-batch above 1 needs --client native")
    if set_stock_batch > 1 and set_stock_stream:
        raise PropagationBenchError("--set-stock-batch and --set-stock-stream exclude each other")
    if client == "native":
        find_native_client()  # not built: say so before anything starts
    runs: list[PairedRun] = []
    ctx = mp.get_context("spawn")
    for pair in range(pairs):
        order = (False, True) if pair % 2 == 0 else (True, False)
        for with_changes in order:
            sender = None
            queue: Any = None
            native_sender = None
            if with_changes and client == "native" and not set_stock_stream:
                # Its schedule outlasts the measured window by a second on each side: the two
                # clients connect independently, a few hundred ms apart.
                native_sender = _NativeSetStock(
                    writes, items, set_stock_rate, duration_s + 2.0, warmup_s, metadata, set_stock_batch
                )
                native_sender.start()
            elif with_changes:
                queue = ctx.Queue()
                sender = ctx.Process(
                    target=_set_stock_loop,
                    args=(
                        writes,
                        items,
                        set_stock_rate,
                        warmup_s + duration_s,
                        metadata,
                        queue,
                        set_stock_stream,
                    ),
                )
                sender.start()
                if queue.get(timeout=60) != "ready":
                    raise PropagationBenchError("the SetStock sender did not start")
            make = request_maker(traffic, "RecommendProducts")
            label = f"RecommendProducts {'with' if with_changes else 'without'} SetStock"
            run = RateRun(
                target, make, rate, duration_s, label=label, connections=connections, warmup_s=warmup_s,
                metadata=metadata, cpu_probe=cpu_probe,
            )  # fmt: skip
            result = fixed_rate_native(run) if client == "native" else asyncio.run(fixed_rate(run))
            stock: dict[str, Any] = {}
            if native_sender is not None:
                stock = native_sender.result()
            if sender is not None:
                stock = queue.get(timeout=60)
                sender.join(timeout=30)
            runs.append(PairedRun(pair, with_changes, result.as_dict(), stock))
            say(f"pair {pair + 1} {label}: p99 {result.p99_ms} ms, achieved {result.achieved_rps:.0f}/s")
    ratios: list[float | None] = []
    for pair in range(pairs):
        by = {r.with_changes: r.result.get("p99_ms") for r in runs if r.pair == pair}
        with_p99, without_p99 = by.get(True), by.get(False)
        ratios.append(with_p99 / without_p99 if with_p99 and without_p99 else None)
    valid = [r for r in ratios if r is not None]
    return PairedReport(
        rate,
        set_stock_rate,
        duration_s,
        runs,
        ratios,
        statistics.median(valid) if valid else None,
        set_stock_batch,
        set_stock_stream,
    )


# -- report --------------------------------------------------------------------------------------


def _ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1f}"


def markdown(prop: PropagationReport | None, paired: PairedReport | None) -> str:
    lines: list[str] = []
    if prop is not None:
        bg = prop.background
        lines += [
            "| processes | changes | propagation p50 ms | p99 ms | max ms | over the bound | "
            "not honoured in 5 s | poll call ms (median) | probes stayed on their process | "
            "background RecommendProducts |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
            f"| {len(prop.processes)} | {len(prop.changes)} | {_ms(prop.p50_ms)} | {_ms(prop.p99_ms)} | "
            f"{_ms(prop.max_ms)} | {prop.over_bound} (bound {prop.bound_ms:.0f} ms) | {prop.misses} | "
            f"{_ms(prop.poll_ms_median)} | {'yes' if prop.probes_stayed else 'NO'} | "
            f"{'' if prop.background_covered else '(ended before the last change) '}"
            f"{bg.get('offered_rps', 0):.0f}/s offered, {bg.get('achieved_rps', 0):.0f}/s answered, "
            f"p99 {_ms(bg.get('p99_ms'))} ms, errors {bg.get('error_pct', 0):.2f} % |",
        ]
    if paired is not None:
        if lines:
            lines.append("")
        sent_as = (
            "StreamStock messages"
            if paired.set_stock_stream
            else "SetStock"
            if paired.set_stock_batch == 1
            else f"SetStockMany of {paired.set_stock_batch}"
        )
        lines += [
            f"| pair | {paired.set_stock_rate:.0f} stock changes/s beside ({sent_as}) | RecommendProducts "
            f"offered/s | answered/s | p50 ms | p99 ms | errors % | CPU ms per RecommendProducts | {sent_as} "
            "calls answered/s | their errors |",
            "|---:|---|---:|---:|---:|---:|---:|---|---:|---|",
        ]
        for r in paired.runs:
            res, st = r.result, r.set_stock
            codes = sorted(st.get("errors", {}).items())
            errors = st.get("failure") or ", ".join(f"{k} {v}" for k, v in codes)
            lines.append(
                f"| {r.pair + 1} | {'yes' if r.with_changes else 'no'} | {res['offered_rps']:.0f} | "
                f"{res['achieved_rps']:.0f} | {_ms(res['p50_ms'])} | {_ms(res['p99_ms'])} | "
                f"{res['error_pct']:.2f} | {cpu_cell(res.get('cpu_ms_per_call') or {})} | "
                f"{st.get('achieved_rps', 0):.0f} | {errors or '-'} |"
            )
        ratios = ", ".join("n/a" if r is None else f"{r:.2f}" for r in paired.ratios)
        median = "n/a" if paired.median_ratio is None else f"{paired.median_ratio:.2f}"
        lines += ["", f"p99 with / without SetStock, per pair: {ratios}; median {median}."]
    return "\n".join(lines)
