"""What every sub-command shares: settings from the root options, logging, and turning typed
errors into a one-line message and a non-zero exit instead of a traceback."""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from recsvc.errors import RecsvcError
from recsvc.settings import Settings, load_settings

console = Console(stderr=True)
P = ParamSpec("P")
R = TypeVar("R")


@dataclass
class AppState:
    config_file: Path | None = None
    log_level: str = "INFO"
    _settings: Settings | None = None

    def settings(self, overrides: dict[str, Any] | None = None) -> Settings:
        if overrides:
            return load_settings(self.config_file, overrides)
        if self._settings is None:
            self._settings = load_settings(self.config_file)
        return self._settings


def state(ctx: typer.Context) -> AppState:
    obj = ctx.find_root().obj
    if not isinstance(obj, AppState):
        obj = AppState()
        ctx.find_root().obj = obj
    return obj


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
    )
    # faiss tries its AVX-512 and AVX2 builds first and logs, at INFO, a ModuleNotFoundError
    # ("No module named 'faiss.swigfaiss_avx2'") for each one the wheel does not ship, before it
    # loads the generic build. Nothing is wrong; only its warnings are worth showing.
    if logging.getLogger().level > logging.DEBUG:
        logging.getLogger("faiss.loader").setLevel(logging.WARNING)


# How a data folder is read, shared by `recsvc data validate` and `recsvc train`.
MAPPING_OPTION = typer.Option(
    None,
    "--mapping",
    "-m",
    help="TOML mapping file: column renames, value maps, money and time formats, member defaults, "
    "declared channels (docs/data.md, Mapping file).",
    dir_okay=False,
)
ENCODING_OPTION = typer.Option(
    None, "--encoding", help="Encoding of the CSV files (utf-8, gb18030, utf-16, ...). Default: detected."
)

# Packages an optional extra brings (pyproject.toml): a server install has none of them.
EXTRA_OF_MODULE = {
    "implicit": "train",
    "optuna": "train",
    "matplotlib": "train",
    "threadpoolctl": "train",
    "locust": "load",
}


# Codes a caller should retry later (the server is down, busy or slow), as Redis being unreachable
# is: exit 3. Every other code means the request itself was refused: exit 2.
_TRY_LATER = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"})
# Reasons (the details' first word, docs/api.md "Errors") under those codes that no retry mends: a
# model the call named that does not exist is a bad argument, as ModelUnavailable is below.
_NOT_LATER = frozenset({"MODEL_NOT_FOUND"})


@contextmanager
def rpc_errors() -> Iterator[None]:
    """A failed gRPC call (or stream) as one line naming its status, not a traceback: exit 3 when
    trying again later may work, 2 when the service refused the request (or named a model that
    does not exist: MODEL_NOT_FOUND, though UNAVAILABLE)."""
    import grpc

    try:
        yield
    except grpc.RpcError as exc:
        code = exc.code().name if exc.code() is not None else "UNKNOWN"
        details = str(exc.details())
        # escaped: the details can echo what the caller sent, "[red]" included
        console.print(f"[bold red]error[/] {code}: {escape(details)}", soft_wrap=True)
        later = code in _TRY_LATER and details.partition(":")[0] not in _NOT_LATER
        raise typer.Exit(code=3 if later else 2) from None


# a path that cannot be read or written as asked (FileExistsError: a part of it is a file)
_PATH_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)


def friendly_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Print a RecsvcError as one clear line and exit 2 (bad input) instead of a traceback; so is a
    file that cannot be read or written (missing, a folder, no permission); Redis that cannot
    answer is one line too, exit 3 (try again later); a command that needs an extra this install
    lacks says which one to install."""
    from recsvc.errors import StoreUnavailable
    from recsvc.redis_client import UNAVAILABLE

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except RecsvcError as exc:
            # one line: scripts grep it; escaped, so "[training]" in a message is not read as markup
            console.print(f"[bold red]error[/] {escape(str(exc))}", soft_wrap=True)
            # Redis that cannot answer now (StoreUnavailable): try again later, as below; a missing
            # model (ModelUnavailable, also UNAVAILABLE) is a setting to fix: 2
            raise typer.Exit(code=3 if isinstance(exc, StoreUnavailable) else 2) from None
        except UNAVAILABLE as exc:
            console.print(
                f"[bold red]error[/] REDIS_UNAVAILABLE: Redis cannot answer ({type(exc).__name__}: "
                f"{str(exc)[:200]}); check redis.url and that it runs, then try again",
                soft_wrap=True,
            )
            raise typer.Exit(code=3) from None
        except _PATH_ERRORS as exc:
            # a path given on the command line that cannot be read or written as asked
            console.print(
                f"[bold red]error[/] FILE: {exc.strerror or type(exc).__name__}: {exc.filename}",
                soft_wrap=True,
            )
            raise typer.Exit(code=2) from None
        except OSError as exc:
            # a disk that is full or read-only, or another failure writing or reading a file
            console.print(
                f"[bold red]error[/] FILE: {exc.strerror or type(exc).__name__}"
                + (f": {exc.filename}" if exc.filename else ""),
                soft_wrap=True,
            )
            raise typer.Exit(code=2) from None
        except ModuleNotFoundError as exc:
            extra = EXTRA_OF_MODULE.get((exc.name or "").split(".")[0])
            if extra is None:
                raise
            console.print(
                f"[bold red]error[/] this command needs the '{extra}' extra ({exc.name} is not "
                f"installed): pip install 'recsvc\\[{extra}]'",
                soft_wrap=True,
            )
            raise typer.Exit(code=2) from None

    return wrapper


# what grpc accepts in a metadata value: printable ASCII, space included
_METADATA_SAFE = re.compile(r"[\x20-\x7e]+")


def check_target(target: str, flag: str = "--target") -> None:
    """InvalidArgument (INVALID_TARGET) unless ``target`` is host:port with a port 1..65535 and an
    IPv6 address in brackets."""
    from recsvc.errors import InvalidArgument
    from recsvc.server.runner import is_ipv6

    host, sep, port = target.rpartition(":")
    if not (sep and host and port.isdigit() and 0 < int(port) < 65536):
        # grpc would wrap a port past 65535 onto another one and reach a server never named
        raise InvalidArgument(
            f"{flag} must be host:port with a port 1..65535, got {target!r}", reason="INVALID_TARGET"
        )
    if is_ipv6(host) and not host.startswith("["):
        # grpc reads ::1:50051 as a host name it cannot resolve
        raise InvalidArgument(
            f"{flag} {target!r}: an IPv6 address goes in brackets, e.g. [{host}]:{port}",
            reason="INVALID_TARGET",
        )


def client_channel(ctx: typer.Context, target: str | None, api_key: str | None = None) -> Any:
    """A channel to a recsvc server for the CLI's client commands (query, members, catalog,
    events simulate): ``target`` (default: serving.host:serving.port), secured as the server is:
    ``api_key`` (else ``RECSVC_API_KEY``) is sent as ``authorization: Bearer`` on every call;
    ``RECSVC_TLS_CA`` (the CA to trust) makes it TLS, with ``RECSVC_TLS_CERT`` / ``RECSVC_TLS_KEY``
    a client certificate for mutual TLS."""
    import os

    import grpc

    from recsvc.errors import ConfigError
    from recsvc.security.tls import channel_credentials
    from recsvc.server.runner import host_port
    from recsvc.settings import CLIENT_ENV

    if target is None:
        s = state(ctx).settings().serving
        target = host_port(s.host, s.port)  # [::1]:50051 for an IPv6 address
    check_target(target)
    api_env, ca_env, cert_env, key_env = CLIENT_ENV
    if api_key:
        source = "--api-key" if api_key != os.environ.get(api_env) else f"--api-key or {api_env}"
    else:
        api_key, source = os.environ.get(api_env), api_env
    if api_key and not _METADATA_SAFE.fullmatch(api_key):
        # grpc refuses such a header value deep in its C core ("Invalid metadata"), naming neither
        # the key nor where it came from; the key itself is a secret, so it is not echoed
        raise ConfigError(
            f"the API key from {source} is not printable ASCII (gRPC metadata values must be): "
            "check for a stray character, quote or line end",
            reason="INVALID_API_KEY",
        )
    ca, cert, key = (os.environ.get(name) for name in (ca_env, cert_env, key_env))
    if bool(cert) != bool(key):
        # one without the other would leave the channel without the client certificate asked for
        given, missing = (cert_env, key_env) if cert else (key_env, cert_env)
        raise ConfigError(
            f"{given} is set but {missing} is not: a client certificate for mutual TLS needs both "
            f"{cert_env} and {key_env}"
        )
    if ca or cert:
        creds = channel_credentials(
            Path(ca) if ca else None, Path(cert) if cert else None, Path(key) if key else None
        )
        channel = grpc.secure_channel(target, creds)
    else:
        channel = grpc.insecure_channel(target)
    return grpc.intercept_channel(channel, _api_key_interceptor(api_key)) if api_key else channel


def _api_key_interceptor(key: str) -> Any:
    """A client interceptor adding the API key to every call."""
    import collections

    import grpc

    class _Details(
        collections.namedtuple(
            "_Details", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")
        ),
        grpc.ClientCallDetails,
    ):
        pass

    header = ("authorization", f"Bearer {key}")

    def with_key(details: Any) -> Any:
        return _Details(
            details.method,
            details.timeout,
            [*(details.metadata or []), header],
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    class ApiKey(
        grpc.UnaryUnaryClientInterceptor,
        grpc.UnaryStreamClientInterceptor,
        grpc.StreamUnaryClientInterceptor,
        grpc.StreamStreamClientInterceptor,
    ):
        def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
            return continuation(with_key(details), request)

        def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
            return continuation(with_key(details), request)

        def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
            return continuation(with_key(details), requests)

        def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
            return continuation(with_key(details), requests)

    return ApiKey()
