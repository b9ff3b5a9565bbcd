"""TLS credentials for the gRPC server and its clients, from PEM certificate files.

Reads: ``settings.security.tls_cert_file`` / ``tls_key_file`` (server certificate chain and key)
and ``tls_client_ca_file`` (when set: mutual TLS, clients must present a certificate signed by
that CA). Nothing is written.

The certificate and key are checked to be a pair at start-up (``_check_pair``, with the standard
library's ``ssl``): gRPC itself only logs "Invalid private key" and fails to bind, which reads as
a port problem.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc

from recsvc.errors import ConfigError
from recsvc.settings import Settings


def _read(path: Path, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(f"{what} not found: {path}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc}") from exc
    if b"-----BEGIN " not in data:
        raise ConfigError(f"{what} {path} is not a PEM file")
    return data


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """Server credentials, or None for plaintext (auth.check_transport decides if that is allowed)."""
    sec = settings.security
    if sec.tls_cert_file is None and sec.tls_key_file is None:
        if sec.tls_client_ca_file is not None:
            raise ConfigError("security.tls_client_ca_file (mutual TLS) needs tls_cert_file and tls_key_file")
        return None
    if sec.tls_cert_file is None or sec.tls_key_file is None:
        raise ConfigError("security.tls_cert_file and security.tls_key_file must be set together")
    cert = _read(sec.tls_cert_file, "TLS certificate")
    key = _read(sec.tls_key_file, "TLS private key")
    _check_pair(Path(sec.tls_cert_file), cert, Path(sec.tls_key_file), key)
    if sec.tls_client_ca_file is None:
        return grpc.ssl_server_credentials([(key, cert)])
    client_ca = _read(sec.tls_client_ca_file, "TLS client CA")
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=client_ca, require_client_auth=True)


class _EncryptedKey(Exception):
    """The key asks for a password (gRPC cannot use such a key)."""


def _no_password() -> bytes:
    raise _EncryptedKey


def _check_pair(
    cert_path: Path,
    cert: bytes,
    key_path: Path,
    key: bytes,
    cert_name: str = "security.tls_cert_file",
    key_name: str = "security.tls_key_file",
) -> None:
    """ConfigError naming both settings (``cert_name``, ``key_name``) unless ``key`` is an
    unencrypted private key of the first certificate in ``cert`` (the owner's; any after it are
    its chain)."""
    names = f"{cert_name} {cert_path} and {key_name} {key_path}"
    if b"-----BEGIN CERTIFICATE-----" not in cert:
        what = "a private key: the two look swapped" if b"PRIVATE KEY-----" in cert else "no certificate"
        raise ConfigError(f"{cert_name} {cert_path} holds {what} ({names})")
    if b"PRIVATE KEY-----" not in key:
        what = "a certificate: the two look swapped" if b"CERTIFICATE-----" in key else "no private key"
        raise ConfigError(f"{key_name} {key_path} holds {what} ({names})")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert_path, key_path, password=_no_password)
    except _EncryptedKey:
        raise ConfigError(
            f"{key_name} {key_path} is encrypted (it asks for a password), which gRPC "
            "cannot use: give the key unencrypted, readable only by the service's user"
        ) from None
    except ssl.SSLError as exc:
        # NO_CERTIFICATE_ASSIGNED: a key of another type than the certificate's (EC for RSA)
        if exc.reason in ("KEY_VALUES_MISMATCH", "NO_CERTIFICATE_ASSIGNED"):
            raise ConfigError(
                f"the TLS key is not the certificate's: {key_name} {key_path} does not "
                f"match the certificate in {cert_name} {cert_path}; give the key the "
                "certificate was issued for"
            ) from None
        raise ConfigError(
            f"{names} are not a usable certificate and private key ({exc.reason or exc})"
        ) from None
    except OSError as exc:  # read between the check above and here, by ssl itself
        raise ConfigError(f"cannot read {names}: {exc}") from None


def channel_credentials(
    ca_file: Path | None = None, cert_file: Path | None = None, key_file: Path | None = None
) -> grpc.ChannelCredentials:
    """Client credentials: trust ``ca_file`` (else the system roots); present a client cert for mTLS."""
    if (cert_file is None) != (key_file is None):
        raise ConfigError("a client certificate and its key must be given together")
    cert = key = None
    if cert_file is not None and key_file is not None:
        cert, key = _read(cert_file, "client certificate"), _read(key_file, "client private key")
        # a mismatched pair would only show as UNAVAILABLE on the first call: "try again later"
        _check_pair(Path(cert_file), cert, Path(key_file), key, "client certificate", "client key")
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca_file, "CA certificate") if ca_file else None,
        private_key=key,
        certificate_chain=cert,
    )


def add_port(server: grpc.Server, address: str, credentials: grpc.ServerCredentials | None) -> int:
    """Bind ``address`` with TLS when credentials are given; return the bound port."""
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    if port == 0:
        raise ConfigError(f"could not bind {address}")
    return port
