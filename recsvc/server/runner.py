"""Running server processes: one worker (build deps, build server, load the model, poll, wait for
SIGTERM/SIGINT/SIGHUP, shut down gracefully) and a supervisor that starts N workers on one port.

Workers are started with the ``spawn`` method, so each creates its gRPC server, Redis client and
FAISS indexes after the process starts (gRPC must not cross a fork) and memory-maps the bundle
itself: the page cache shares the arrays between workers. The port is shared through
SO_REUSEPORT (``grpc.so_reuseport``); the kernel spreads connections across workers.

With ``catalog.writer_port`` one more process, the catalog writer, serves the Catalog service
alone on that port at a lower CPU priority (``catalog.writer_nice``): a live stream's stock changes
then queue behind recommendations for the CPU instead of competing with them. It follows the
change feed like every worker, so what it writes reaches them the same way.

SIGHUP is a stop like SIGTERM (``systemctl reload`` without an ExecReload, a closed ssh session):
its default action would kill the supervisor silently and leave its workers serving, orphaned,
on the port. A worker also stops when its supervisor dies however it died (``_die_with_parent``).
The workers' ``ReloadModel`` pins live in a file in a folder of the supervisor's
(``recsvc.models.pins``), so a worker it restarts serves what its siblings serve.
"""

from __future__ import annotations

import errno
import logging
import multiprocessing as mp
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from recsvc.errors import BundleError, ConfigError, RecsvcError
from recsvc.settings import Settings

log = logging.getLogger(__name__)

_RESTART_LIMIT = 5


class WorkersDied(RecsvcError):
    """The supervisor gave up restarting server processes: the service is down, say so (exit 2)."""

    reason = "WORKERS_DIED"


_CANNOT_START = 78  # EX_CONFIG (sysexits.h): a worker refused its configuration

# Each one drains and stops a worker or the supervisor (module doc).
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _limit_threads() -> None:
    # Two cores for many processes: one BLAS/OpenMP thread each, concurrency comes from processes.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    import faiss

    faiss.omp_set_num_threads(1)


def bare_host(host: str) -> str:
    """A host setting as a socket takes it: ``[::1]`` (the bracketed form of a URL) is ``::1``."""
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        return host[1:-1]
    return host


def is_ipv6(host: str) -> bool:
    """``host`` (bracketed or not) is an IPv6 address: ``::1``, ``[::1]``, ``fe80::1%eth0``."""
    import ipaddress

    try:
        return ipaddress.ip_address(bare_host(host)).version == 6
    except ValueError:
        return False


def host_port(host: str, port: int) -> str:
    """``host:port`` as gRPC binds and dials it: an IPv6 address in brackets (``[::1]:50051``),
    since a bare one (``::1:50051``) does not say where the address ends; any other host as
    given."""
    return f"[{bare_host(host)}]:{port}" if is_ipv6(host) else f"{host}:{port}"


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if is_ipv6(host) else socket.AF_INET


def check_model_uris(settings: Settings) -> None:
    """Refuse to start on a model that cannot appear by itself: a bundle folder that does not
    exist, is no bundle, or is one the server cannot load (a missing, truncated or damaged file:
    ModelUnavailable/BundleError naming it). The folder is opened as the server opens it
    (``load_bundle``: memory-mapped arrays and their checks, the FAISS indexes read), then
    dropped. A registry URI (``models:/<name>@<alias>``) is only checked for its form: its alias
    may get a version later (a first training), so the server starts without a model and waits
    (see ``run_worker``)."""
    from recsvc.bundle import load_bundle
    from recsvc.models.resolve import MODELS_SCHEME, ModelResolver, parse_models_uri
    from recsvc.models.variants import variant_sources

    for source in variant_sources(settings):
        if source.uri.startswith(MODELS_SCHEME):
            try:
                parse_models_uri(source.uri)
            except RecsvcError as exc:  # a setting, not a caller's argument, at start-up
                raise ConfigError(exc.message) from exc
        else:
            try:
                bundle_dir = ModelResolver(settings).resolve(source.uri).path
                try:
                    load_bundle(bundle_dir)
                except BundleError as exc:
                    raise BundleError(exc.message + _damaged_array(bundle_dir), reason=exc.reason) from exc
            except RecsvcError as exc:
                hint = (
                    "repair the bundle or give another: serving.model_uri / --model-uri"
                    if isinstance(exc, BundleError)
                    else "serving.model_uri / --model-uri takes a bundle folder or models:/<name>@<alias>"
                )
                raise type(exc)(
                    f"cannot serve model {source.uri}: {exc.message} ({hint})", reason=exc.reason
                ) from exc


def _damaged_array(bundle_dir: Path) -> str:
    """The first array of ``bundle_dir`` that does not open (a truncated ``.npy``), as a clause to
    add to load_bundle's refusal, which names the error but not always the file; else ''. Only
    the headers are read (memory-mapped)."""
    from recsvc.mapped import load_array

    for npy in sorted(bundle_dir.glob("*.npy")):
        try:
            load_array(npy)
        except Exception as exc:  # whatever a damaged file makes numpy raise
            return f"; {npy.name} does not open ({type(exc).__name__})"
    return ""


def run_worker(
    settings: Settings,
    worker: int = 0,
    serve_own_metrics: bool = True,
    catalog_only: bool = False,
    pin_file: Path | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT/SIGHUP. Blocks. ``catalog_only``: the catalog writer (module
    doc). ``pin_file``: where this server's workers keep their pins (the supervisor's)."""
    _limit_threads()
    from recsvc.metrics import serve_metrics, served_registry
    from recsvc.models.pins import PinFile
    from recsvc.server.app import build_deps, build_server, settle_heap, shutdown

    stop = threading.Event()

    def _on_signal(signum: int, _frame: Any) -> None:
        log.info("event=signal worker=%d signal=%s", worker, signal.Signals(signum).name)
        stop.set()

    for signum in _STOP_SIGNALS:
        signal.signal(signum, _on_signal)

    deps = build_deps(settings, worker=worker, catalog_only=catalog_only)
    if pin_file is not None:
        deps.models.keep_pins_in(PinFile(pin_file))
    # Load before binding the port: workers share it (SO_REUSEPORT) and the kernel hands new
    # connections to any worker listening, so a worker still loading would answer them
    # UNAVAILABLE while its siblings could serve. Without a model it starts anyway. poll=True:
    # a pin resumed from the pin file is loaded, not dropped as an explicit reload would.
    try:
        deps.models.reload(poll=True)
    except RecsvcError as exc:
        # Only a registry alias gets here (check_model_uris refused a missing bundle folder):
        # health stays NOT_SERVING until the poller (or ReloadModel) finds a version under it.
        log.warning(
            "event=waiting_for_model worker=%d uri=%s poll_interval_s=%s error=%s "
            "(serving NOT_SERVING until the alias has a version: train and promote a model, or "
            "call ReloadModel)",
            worker,
            settings.serving.model_uri,
            settings.serving.poll_interval_s,
            exc,
        )
    settle_heap()
    server = build_server(settings, deps)
    server.start()
    log.info("event=worker_started worker=%d pid=%d port=%d", worker, os.getpid(), deps.bound_port)
    if serve_own_metrics and settings.serving.metrics_port:
        s = settings.serving
        serve_metrics(s.metrics_port, served_registry(deps.metrics.registry), bare_host(s.metrics_host))
    deps.models.start_polling(settings.serving.poll_interval_s)
    stop.wait()
    log.info("event=worker_stopping worker=%d grace_s=%s", worker, settings.serving.grace_period_s)
    shutdown(server, deps, settings.serving.grace_period_s)
    log.info("event=worker_stopped worker=%d", worker)


def pin_to_cpu(worker: int) -> int | None:
    """Keep this process (and every thread it starts later) on one CPU: worker ``i`` gets the
    ``i``-th CPU it may use (modulo their number). A call wakes several threads of a worker (gRPC's
    I/O thread, its poller, the event loop); on one CPU those wake-ups need no cross-CPU
    interrupt, which on a virtual machine costs an exit to the hypervisor. Returns the CPU, or
    None where affinity cannot be set."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
        cpu = cpus[worker % len(cpus)]
        os.sched_setaffinity(0, {cpu})
    except (AttributeError, OSError):  # not Linux, or not allowed
        return None
    return cpu


def _die_with_parent(parent_pid: int) -> None:
    """Get SIGTERM (a graceful stop) when the supervisor dies, even by SIGKILL or a crash, so no
    worker keeps serving (and holding the port) without it; Linux's PR_SET_PDEATHSIG, else a
    thread watching the parent pid. The signal comes when the supervisor thread that started
    this worker ends: its main thread, which runs until the supervisor exits."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        watched = libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) == 0
    except (OSError, AttributeError):  # not Linux
        watched = False
    if not watched:

        def watch() -> None:
            while os.getppid() == parent_pid:
                time.sleep(1.0)
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=watch, name="recsvc-parent-watch", daemon=True).start()
    if os.getppid() != parent_pid:  # it died before the death signal was set: nobody sends it
        os.kill(os.getpid(), signal.SIGTERM)


def _worker_main(
    settings_json: str,
    worker: int,
    log_level: str,
    catalog_writer: bool = False,
    parent_pid: int | None = None,
    pin_file: str | None = None,
) -> None:
    from recsvc.cli.common import setup_logging

    if parent_pid is not None:
        _die_with_parent(parent_pid)
    setup_logging(log_level)
    settings = Settings.model_validate_json(settings_json)
    if catalog_writer:
        os.nice(settings.catalog.writer_nice)  # first, so every thread started from here on inherits it
        # Alone on its port, so no SO_REUSEPORT.
        serving = settings.serving.model_copy(update={"port": settings.catalog.writer_port, "workers": 1})
        settings = settings.model_copy(update={"serving": serving})
        log.info(
            "event=catalog_writer_started worker=%d port=%d nice=%d",
            worker,
            serving.port,
            settings.catalog.writer_nice,
        )
    elif settings.serving.pin_workers:
        cpu = pin_to_cpu(worker)  # first, so every thread started from here on inherits it
        log.info("event=worker_pinned worker=%d cpu=%s", worker, cpu)
    try:
        run_worker(
            settings,
            worker,
            serve_own_metrics=False,
            catalog_only=catalog_writer,
            pin_file=Path(pin_file) if pin_file else None,
        )
    except RecsvcError as exc:
        # A configuration only a worker can find wrong: one line, and the parent stops instead
        # of restarting a worker that would fail the same way.
        log.error("event=worker_cannot_start worker=%d reason=%s error=%s", worker, exc.reason, exc.message)
        sys.exit(_CANNOT_START)


def _free_port(host: str) -> int:
    with socket.socket(_family(host), socket.SOCK_STREAM) as s:
        s.bind((bare_host(host), 0))
        return int(s.getsockname()[1])


def check_cluster_answers(settings: Settings) -> None:
    """With Redis Cluster, the client reads the slot map when it is made: a cluster that does not
    answer at start is one clear error (StoreUnavailable, exit 3; a supervisor starts recsvc
    again), not a traceback per worker. A single Redis server may be down at start: the service
    serves from the bundle and connects when Redis answers."""
    from recsvc.errors import StoreUnavailable
    from recsvc.redis_client import STORE_ERRORS, connect, is_cluster_url

    url = settings.redis.url
    if not is_cluster_url(url):
        return
    try:
        connect(url, timeout_s=max(settings.redis.socket_timeout_ms / 1000, 1.0)).close()
    except STORE_ERRORS as exc:
        raise StoreUnavailable(
            f"the Redis Cluster at {url} did not answer ({type(exc).__name__}): the cluster client "
            "needs the slot map to start; start recsvc once the cluster answers"
        ) from exc


def check_ports_free(settings: Settings) -> None:
    """Every port this server will listen on is free, or a ConfigError (PORT_IN_USE) naming it.
    The workers bind the service port with SO_REUSEPORT, which would let a second server started
    on the same port (an old release still running) share its traffic silently: a bind without
    it fails while anyone listens there."""
    s = settings.serving
    ports = [("serving.port", s.host, s.port), ("serving.metrics_port", s.metrics_host, s.metrics_port)]
    if settings.catalog.enabled:
        ports.append(("catalog.writer_port", s.host, settings.catalog.writer_port))
    for name, host, port in ports:
        # 0 turns the metrics endpoint and the writer off; the service port 0 asks for any free
        # port, whose host is still checked (a bind to port 0 cannot find it in use)
        if not port and name != "serving.port":
            continue
        with socket.socket(_family(host), socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no listener
            try:
                probe.bind((bare_host(host), port))
            except OSError as exc:
                if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:
                    # the host, not the port: no address (999.1.1.1), or none of this machine's
                    setting = (
                        "serving.metrics_host" if name == "serving.metrics_port" else "serving.host (--host)"
                    )
                    raise ConfigError(
                        f"{setting} {host!r} is not an address this server can listen on "
                        f"({exc.strerror}): give one of this machine's addresses, 0.0.0.0 or ::",
                        reason="INVALID_HOST",
                    ) from None
                raise ConfigError(
                    f"{name} {port} on {host} is in use ({exc.strerror}): {_user_of(host, port)}",
                    reason="PORT_IN_USE",
                ) from None


def _user_of(host: str, port: int) -> str:
    """Who holds a port a bind was refused: a server listening there, or (no one answers) an
    outgoing connection of this machine that the kernel gave it as its own port, which happens
    to ports in the ephemeral range (Linux: /proc/sys/net/ipv4/ip_local_port_range)."""
    host = bare_host(host)
    target = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)  # a wildcard: here
    with socket.socket(_family(host), socket.SOCK_STREAM) as conn:
        conn.settimeout(1.0)
        listening = conn.connect_ex((target, port)) == 0
    if listening:
        return "another server, perhaps an older recsvc serve, listens there; stop it or choose another port"
    return (
        "no server listens there, but a connection of this machine uses it as its local port (ports "
        "in the system's ephemeral range are lent to outgoing connections); choose a port below it, "
        "e.g. 50051, or try again"
    )


def serve_processes(settings: Settings, log_level: str = "INFO") -> None:
    """Run ``settings.serving.workers`` workers on one port; stop them on SIGTERM/SIGINT/SIGHUP;
    block."""
    s = settings.serving
    check_model_uris(settings)  # before any worker starts: a missing bundle is an error, not a wait
    check_ports_free(settings)
    check_cluster_answers(settings)
    from recsvc.security.wiring import check_server_security

    check_server_security(settings)  # keys, TLS, and the audit log and erasure list writable
    writer = settings.catalog.enabled and settings.catalog.writer_port > 0
    if settings.catalog.writer_port and not writer:
        log.warning("event=catalog_writer_off catalog.writer_port is set but catalog.enabled is false")
    if s.workers == 1 and not writer:
        run_worker(settings)
        return
    if s.port == 0:
        # Every worker must bind the same port: choose it here.
        settings = settings.model_copy(update={"serving": s.model_copy(update={"port": _free_port(s.host)})})
        s = settings.serving
    registry = None
    if s.metrics_port:
        # Must be set before any worker imports prometheus_client.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="recsvc-metrics-")
        from recsvc.metrics import multiprocess_registry, serve_metrics

        registry = multiprocess_registry()
        serve_metrics(s.metrics_port, registry, bare_host(s.metrics_host))
    from recsvc.metrics import mark_worker_dead

    ctx = mp.get_context("spawn")
    payload = settings.model_dump_json()
    stopping = threading.Event()
    pins_dir = tempfile.mkdtemp(prefix="recsvc-pins-")
    pin_file = str(Path(pins_dir) / "pins.json")

    def _on_signal(signum: int, _frame: Any) -> None:
        log.info("event=signal supervisor=%d signal=%s", os.getpid(), signal.Signals(signum).name)
        stopping.set()

    # Before the first worker starts: a signal meanwhile would otherwise end the supervisor alone.
    for signum in _STOP_SIGNALS:
        signal.signal(signum, _on_signal)

    def start(i: int) -> BaseProcess:
        # The catalog writer is the process after the workers (its metrics' worker label).
        writes = i == s.workers
        name = "recsvc-catalog-writer" if writes else f"recsvc-worker-{i}"
        p = ctx.Process(
            target=_worker_main, args=(payload, i, log_level, writes, os.getpid(), pin_file), name=name
        )
        p.start()
        return p

    procs = {i: start(i) for i in range(s.workers + writer)}
    restarts = 0
    refused = gave_up = False
    log.info(
        "event=serving host=%s port=%d workers=%d catalog_writer_port=%s",
        s.host,
        s.port,
        s.workers,
        settings.catalog.writer_port if writer else "",
    )
    while not stopping.wait(0.5):
        for i, p in list(procs.items()):
            if p.is_alive():
                continue
            log.error("event=worker_died worker=%d exitcode=%s", i, p.exitcode)
            if p.pid is not None:
                mark_worker_dead(p.pid)
            if p.exitcode == _CANNOT_START:
                refused = True
                stopping.set()
                break
            if restarts >= _RESTART_LIMIT:
                log.error("event=too_many_restarts stopping")
                gave_up = True
                stopping.set()
                break
            restarts += 1
            procs[i] = start(i)
    for p in procs.values():
        if p.is_alive() and p.pid is not None:
            os.kill(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + s.grace_period_s + 10
    for p in procs.values():
        p.join(timeout=max(0.1, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
    if registry is not None:
        shutil.rmtree(os.environ.pop("PROMETHEUS_MULTIPROC_DIR"), ignore_errors=True)
    shutil.rmtree(pins_dir, ignore_errors=True)
    log.info("event=stopped")
    if refused:
        raise ConfigError(
            "a server process refused its configuration: see its worker_cannot_start line above"
        )
    if gave_up:
        raise WorkersDied(
            f"server processes died {_RESTART_LIMIT + 1} times: stopped (see the worker_died lines above)"
        )
