"""TLS and mutual TLS handshakes against a real gRPC server, with certificates made at test time."""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from recsvc.errors import ConfigError
from recsvc.security.tls import add_port, channel_credentials, server_credentials
from recsvc.settings import load_settings

pytestmark = pytest.mark.integration


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    rogue_cert: Path
    rogue_key: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return path


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey | None,
    *,
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    b = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        b = b.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    elif not ca:
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return b.sign(issuer_key or key, hashes.SHA256())


def _pem(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca_key, other_key = _key(), _key()
    ca = _cert("recsvc test CA", ca_key, None, None, ca=True)
    other = _cert("someone else's CA", other_key, None, None, ca=True)
    s_key, c_key, r_key = _key(), _key(), _key()
    return Pki(
        ca=_pem(d / "ca.pem", ca),
        server_cert=_pem(d / "server.pem", _cert("recsvc", s_key, ca, ca_key, server=True)),
        server_key=_write_key(d / "server.key", s_key),
        client_cert=_pem(d / "client.pem", _cert("mall-backend", c_key, ca, ca_key)),
        client_key=_write_key(d / "client.key", c_key),
        other_ca=_pem(d / "other-ca.pem", other),
        rogue_cert=_pem(d / "rogue.pem", _cert("rogue", r_key, other, other_key)),
        rogue_key=_write_key(d / "rogue.key", r_key),
    )


@pytest.fixture
def tls_server(pki: Pki, request: pytest.FixtureRequest) -> Iterator[int]:
    security = {"tls_cert_file": str(pki.server_cert), "tls_key_file": str(pki.server_key)}
    if request.param == "mtls":
        security["tls_client_ca_file"] = str(pki.ca)
    creds = server_credentials(load_settings(overrides={"security": security}))
    assert creds is not None
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = add_port(server, "127.0.0.1:0", creds)
    server.start()
    yield port
    server.stop(grace=0)


def _check(port: int, creds: grpc.ChannelCredentials) -> int:
    with grpc.secure_channel(f"127.0.0.1:{port}", creds) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return int(stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status)


@pytest.mark.parametrize("tls_server", ["tls"], indirect=True)
def test_tls_handshake(tls_server: int, pki: Pki) -> None:
    assert _check(tls_server, channel_credentials(pki.ca)) == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("tls_server", ["tls"], indirect=True)
def test_tls_untrusted_server_refused_by_client(tls_server: int, pki: Pki) -> None:
    with pytest.raises(grpc.RpcError) as err:
        _check(tls_server, channel_credentials(pki.other_ca))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("tls_server", ["tls"], indirect=True)
def test_plaintext_client_cannot_talk_to_tls_server(tls_server: int) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{tls_server}") as channel, pytest.raises(grpc.RpcError):
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)


@pytest.mark.parametrize("tls_server", ["mtls"], indirect=True)
def test_mtls_handshake_with_client_cert(tls_server: int, pki: Pki) -> None:
    creds = channel_credentials(pki.ca, pki.client_cert, pki.client_key)
    assert _check(tls_server, creds) == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("tls_server", ["mtls"], indirect=True)
def test_mtls_client_without_cert_refused(tls_server: int, pki: Pki) -> None:
    with pytest.raises(grpc.RpcError) as err:
        _check(tls_server, channel_credentials(pki.ca))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("tls_server", ["mtls"], indirect=True)
def test_mtls_client_cert_from_other_ca_refused(tls_server: int, pki: Pki) -> None:
    with pytest.raises(grpc.RpcError) as err:
        _check(tls_server, channel_credentials(pki.ca, pki.rogue_cert, pki.rogue_key))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_half_configured_tls_named(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="must be set together"):
        server_credentials(load_settings(overrides={"security": {"tls_cert_file": str(pki.server_cert)}}))
    with pytest.raises(ConfigError, match="mutual TLS"):
        server_credentials(load_settings(overrides={"security": {"tls_client_ca_file": str(pki.ca)}}))
    missing = {"tls_cert_file": str(tmp_path / "no.pem"), "tls_key_file": str(pki.server_key)}
    with pytest.raises(ConfigError, match="TLS certificate not found"):
        server_credentials(load_settings(overrides={"security": missing}))
    (tmp_path / "junk.pem").write_text("junk")
    junk = {"tls_cert_file": str(tmp_path / "junk.pem"), "tls_key_file": str(pki.server_key)}
    with pytest.raises(ConfigError, match="not a PEM file"):
        server_credentials(load_settings(overrides={"security": junk}))


def _settings(cert: Path, key: Path) -> dict[str, dict[str, str]]:
    return {"security": {"tls_cert_file": str(cert), "tls_key_file": str(key)}}


def test_a_key_that_is_not_the_certificates_is_refused_naming_both(pki: Pki, tmp_path: Path) -> None:
    """grpc only logged "Invalid private key" and failed to bind, which blamed the port."""
    with pytest.raises(ConfigError) as err:
        server_credentials(load_settings(overrides=_settings(pki.server_cert, pki.client_key)))
    message = str(err.value)
    assert "does not match" in message
    assert f"security.tls_key_file {pki.client_key}" in message
    assert f"security.tls_cert_file {pki.server_cert}" in message
    # a key of another type than the certificate's (RSA certificate, EC key)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "recsvc")])
    rsa_cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(rsa_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(rsa_key, hashes.SHA256())
    )
    with pytest.raises(ConfigError, match="does not match"):
        server_credentials(
            load_settings(overrides=_settings(_pem(tmp_path / "rsa.pem", rsa_cert), pki.server_key))
        )


def test_a_client_key_that_is_not_its_certificates_is_refused_before_any_call(pki: Pki) -> None:
    """It used to fail only as UNAVAILABLE on the first call: exit 3, "try again later"."""
    with pytest.raises(ConfigError) as err:
        channel_credentials(pki.ca, pki.client_cert, pki.rogue_key)
    message = str(err.value)
    assert "does not match" in message and f"client key {pki.rogue_key}" in message
    assert channel_credentials(pki.ca, pki.client_cert, pki.client_key) is not None


def test_swapped_or_encrypted_tls_files_are_named(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"tls_cert_file .* holds a private key: the two look swapped"):
        server_credentials(load_settings(overrides=_settings(pki.server_key, pki.server_cert)))
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        _key().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(ConfigError, match="is encrypted"):
        server_credentials(load_settings(overrides=_settings(pki.server_cert, encrypted)))


def test_serve_with_a_mismatched_pair_says_so_in_one_line(pki: Pki, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from recsvc.cli import app
    from recsvc.localstack import free_port

    env = {
        "COLUMNS": "250",
        "RECSVC_SECURITY__ALLOW_INSECURE_DEV": "true",
        "RECSVC_SECURITY__TLS_CERT_FILE": str(pki.server_cert),
        "RECSVC_SECURITY__TLS_KEY_FILE": str(pki.rogue_key),
        "RECSVC_SECURITY__AUDIT_LOG": str(tmp_path / "audit.log"),
        "RECSVC_SECURITY__ERASURE_LIST": str(tmp_path / "erasures.txt"),
    }
    result = CliRunner().invoke(app, ["serve", "--port", str(free_port())], env=env)
    out = " ".join(result.output.split())
    assert result.exit_code == 2, out
    assert "INVALID_CONFIG: the TLS key is not the certificate's" in out
    assert "Traceback" not in out and "Failed to bind" not in out
