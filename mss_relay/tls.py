"""TLS contexts for the listeners and the upstream."""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path

from mss_relay.config import ConfigError, TlsConfig, UpstreamConfig


def ensure_self_signed(cert: Path, key: Path, hostname: str) -> None:
    """Demo only: create a self-signed certificate when none is there yet."""
    if cert.exists() and key.exists():
        return
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(hostname), x509.DNSName("localhost")]),
            critical=False,
        )
        .sign(private, hashes.SHA256())
    )
    cert.parent.mkdir(parents=True, exist_ok=True)
    key.parent.mkdir(parents=True, exist_ok=True)
    key.touch(mode=0o600)
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


def server_context(config: TlsConfig, hostname: str) -> ssl.SSLContext:
    if config.self_signed:
        ensure_self_signed(config.certificate, config.private_key, hostname)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(config.certificate, config.private_key)
    except (OSError, ssl.SSLError) as error:
        raise ConfigError(
            "tls.certificate", f"cannot load the certificate and its private key: {error}"
        ) from None
    return context


def upstream_context(config: UpstreamConfig) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(cafile=str(config.ca_file) if config.ca_file else None)
    except (OSError, ssl.SSLError) as error:
        raise ConfigError("upstream.ca_file", f"cannot load: {error}") from None
    if config.client_certificate and config.client_key:
        try:
            context.load_cert_chain(config.client_certificate, config.client_key)
        except (OSError, ssl.SSLError) as error:
            raise ConfigError("upstream.client_certificate", f"cannot load: {error}") from None
    return context
